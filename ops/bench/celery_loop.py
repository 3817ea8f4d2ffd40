"""``python -m ops.bench.celery_loop``: the enqueue baseline, a plain ``apply_async`` loop.

What a user without vfleet writes: read the JSONL, send one Celery message per record with
the whole record as its argument, straight to Redis, no ledger. This module is a baseline,
not vfleet, and the only place in ``ops`` that imports Celery. It prints one JSON line:
``{"sent": N, "seconds": S}`` (the loop only, imports and connection excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery

QUEUE = "llm.sim-model"


def send_all(broker_url: str, path: Path, count: int) -> tuple[int, float]:
    """Send the first ``count`` records of ``path``; returns (sent, loop seconds)."""
    app = Celery("bench-baseline", broker=broker_url)

    @app.task(name="bench.judge")  # type: ignore[untyped-decorator]
    def judge(record: dict[str, Any]) -> None:  # never runs: no worker consumes it
        return None

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
    sent = 0
    started = time.perf_counter()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if sent >= count:
                break
            judge.apply_async(args=[json.loads(line)], queue=QUEUE)
            sent += 1
    return sent, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench.celery_loop")
    p.add_argument("--broker", required=True)
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args(argv)
    sent, seconds = send_all(args.broker, args.file, args.count)
    print(json.dumps({"sent": sent, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

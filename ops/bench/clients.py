"""``python -m ops.bench.clients``: run one client mode (seeds' pool, ideal or raw-http) in its
own process.

The benchmark starts this as a subprocess so that its CPU time and peak memory are the
client's alone. It reads the records, runs them, writes one outcome line per finished
record to ``--out``, and (``--kill-url``/``--kill-after``) kills an instance when that many
records have succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ops.bench.baseline import run_pool
from ops.bench.ideal import IdealClient
from ops.bench.outcome import KillSwitch, OutcomeWriter
from ops.bench.raw_http import RawHttpClient
from ops.bench.workload import JudgePrompt, read_records

POOL = "pool"
IDEAL = "ideal"
RAW = "raw-http"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ops.bench.clients")
    p.add_argument("--mode", choices=(POOL, IDEAL, RAW), required=True)
    p.add_argument("--urls", required=True, help="comma-separated OpenAI base URLs")
    p.add_argument("--model", required=True)
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=4, help="pool size (pool mode)")
    p.add_argument(
        "--concurrency", type=int, default=32, help="lanes per instance (ideal, raw-http)"
    )
    p.add_argument("--kill-url")
    p.add_argument("--kill-after", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--spec-file", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prompt = JudgePrompt.load(args.spec_file)
    records = read_records(args.records)
    urls = args.urls.split(",")
    kill = KillSwitch(args.kill_url, args.kill_after) if args.kill_url else None
    with args.out.open("w", encoding="utf-8") as fh:
        writer = OutcomeWriter(fh, kill)
        if args.mode == POOL:
            run_pool(
                base_urls=urls,
                threads=args.threads,
                prompt=prompt,
                model=args.model,
                records=records,
                writer=writer,
                time_limit=args.time_limit,
            )
        elif args.mode == RAW:
            raw = RawHttpClient(urls, prompt, args.model, writer)
            asyncio.run(raw.run(records, args.concurrency, args.time_limit))
        else:
            client = IdealClient(urls, prompt, args.model, writer)
            asyncio.run(client.run(records, args.concurrency, args.time_limit))
    meta: dict[str, object] = {}
    if kill is not None:
        kill.join()
        meta = {"kill_fired_at": kill.fired_at, "kill_error": kill.error}
        if kill.error:
            print(f"ops.bench.clients: kill switch: {kill.error}", file=sys.stderr)
    meta_path(args.out).write_text(json.dumps(meta), encoding="utf-8")
    return 0


def meta_path(out: Path) -> Path:
    """Where a run's side facts (when the kill switch fired) are written, beside ``out``."""
    return out.with_suffix(".meta.json")


if __name__ == "__main__":
    sys.exit(main())

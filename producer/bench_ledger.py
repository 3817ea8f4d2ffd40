"""The in-process half of ``python -m ops.bench.ledger_scale``: build a stored batch of N
records and time one reconcile round on it.

``ops/`` may import nothing of ours, so the benchmark runs this module as a child process
(``python -m producer.bench_ledger build|reconcile ...``), which prints one JSON object.

* ``build`` stores the records through the production intake
  (:func:`workers.store.intake.store_rows`, what ``vfleet enqueue`` writes with), then moves
  95% of them to ``succeeded`` with a result and 4% to ``failed``, leaving 1% ``queued``,
  with one UPDATE per slice of ids that sets what :meth:`Ledger.claim_many` and
  :meth:`Ledger.succeed` / :meth:`Ledger.fail` set. :data:`STALE_RECORDS` of the queued
  ones are stamped published an hour ago, so the reconcile round has that many records to
  publish again whatever the batch's size. On PostgreSQL the table is then vacuumed and
  analysed, as autovacuum would have done. Memory stays flat: rows are generated and
  stored chunk by chunk.
* ``measure`` times, in-process, what ``vfleet status B --json`` reads from the ledger
  (:func:`producer.progress.batch_progress` with details: no interpreter start-up, no
  imports) and one :meth:`workers.feeder.Feeder.reconcile` round against a Redis (a
  private one: the round publishes what it finds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import JSON, Engine, String, case, cast, func, literal, select, update

from workers.store.engine import make_engine
from workers.store.intake import IntakeRow, store_rows
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.models import Record, Status, utcnow

MODEL = "bench-model"
INSTANCES = 4
OUTCOME_SLICE = 20_000
STALE_RECORDS = 100
SUCCEEDED_PERCENT = 95
FAILED_PERCENT = 4  # the rest (1%) stays queued
SPEC: dict[str, Any] = {
    "system": "You are a strict grader.",
    "template": "Question: {{ question }}\nAnswer: {{ answer }}\nGrade the answer.",
    "params": {"temperature": 0.0, "max_tokens": 128},
    "json_schema": {
        "type": "object",
        "properties": {
            "score": {"type": "integer"},
            "reason": {"type": "string", "maxLength": 400},
        },
        "required": ["score", "reason"],
    },
}
_REASON = "The answer names the right mechanism and gives one correct example, but it " * 2
OUTPUT = {"score": 4, "reason": _REASON.strip()}
PROVENANCE = {
    "instance": "inst-0",
    "host": "gpu-host-0",
    "gpus": [0],
    "model": MODEL,
    "max_model_len": 8192,
}


def _input(i: int) -> dict[str, Any]:
    return {
        "question": f"Question {i}: explain why the sky looks blue at noon and red at dusk.",
        "answer": (
            f"Answer {i}: sunlight scatters off the molecules of the air; shorter wavelengths "
            "scatter more (Rayleigh scattering), so blue light reaches the eye from every "
            "direction at noon, while at dusk the light crosses more air and the blue is "
            "scattered away before it arrives, leaving the reds and oranges."
        ),
        "id": i,
    }


def _rows(n: int) -> Iterator[IntakeRow]:
    for i in range(n):
        data = _input(i)
        fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        yield f"rec-{i:08d}", i + 1, data, fingerprint


def _outcomes(engine: Engine, batch_id: int, lo: int, hi: int) -> None:
    """Records ``lo..hi`` (ids) of the batch: 95% succeeded with a result, 4% failed,
    the rest left queued; the values the claim and the result writes set."""
    now = utcnow()
    bucket = Record.id % 100
    succeeded = bucket < SUCCEEDED_PERCENT
    failed = bucket < SUCCEEDED_PERCENT + FAILED_PERCENT
    final = Record.id % 100 < SUCCEEDED_PERCENT + FAILED_PERCENT

    def when_succeeded(value: Any) -> Any:
        return case((succeeded, value), else_=None)

    stmt = (
        update(Record)
        .where(Record.batch_id == batch_id, Record.id.between(lo, hi), final)
        .values(
            status=case(
                (succeeded, literal(Status.SUCCEEDED.value)), else_=literal(Status.FAILED.value)
            ),
            attempts=case((succeeded, 1), else_=3),
            published_at=now - timedelta(seconds=60),
            started_at=now - timedelta(seconds=2),
            finished_at=now,
            instance=literal("inst-") + cast(Record.id % INSTANCES, String),
            worker=literal("celery@worker-") + cast(Record.id % INSTANCES, String),
            task_id=literal("3f1c2a9e-5b7d-4e21-9c8a-") + cast(Record.id, String),
            output_text=when_succeeded(json.dumps(OUTPUT)),
            output=when_succeeded(literal(OUTPUT, JSON)),
            provenance=when_succeeded(literal(PROVENANCE, JSON)),
            finish_reason=when_succeeded("stop"),
            prompt_tokens=180 + Record.id % 50,
            completion_tokens=when_succeeded(40 + Record.id % 30),
            latency_ms=250.0 + Record.id % 700,
            error_kind=case((failed & ~succeeded, "invalid_output"), else_=None),
            error=case(
                (failed & ~succeeded, "the answer is not valid JSON for the spec's schema"),
                else_=None,
            ),
        )
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def _stale(engine: Engine, batch_id: int) -> None:
    """Stamp :data:`STALE_RECORDS` queued records published an hour ago, with no message:
    what the reconciler looks for."""
    ids = select(Record.id).where(Record.batch_id == batch_id, Record.status == Status.QUEUED)
    ids = ids.order_by(Record.id).limit(STALE_RECORDS)
    when = utcnow() - timedelta(hours=1)
    with engine.begin() as conn:
        picked = list(conn.scalars(ids))
        conn.execute(update(Record).where(Record.id.in_(picked)).values(published_at=when))


def build(database_url: str, records: int, batch: str) -> dict[str, Any]:
    """Store batch ``batch`` of ``records`` records; returns the seconds each step took."""
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        ledger = Ledger(engine)
        info, _ = ledger.create_batch(
            name=batch, spec_name="bench-judge", spec=SPEC, model=MODEL, route="shared"
        )
        t0 = time.perf_counter()
        result = store_rows(ledger, info.id, _rows(records), reuse=False)
        t1 = time.perf_counter()
        with engine.connect() as conn:
            lo, hi = conn.execute(
                select(func.min(Record.id), func.max(Record.id)).where(Record.batch_id == info.id)
            ).one()
        for start in range(int(lo), int(hi) + 1, OUTCOME_SLICE):
            _outcomes(engine, info.id, start, start + OUTCOME_SLICE - 1)
        _stale(engine, info.id)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            # What autovacuum does to a ledger whose batch grew over hours: planner
            # statistics and the visibility map index-only scans need. A server with
            # autovacuum off (the test server here) would otherwise plan for an empty table.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE records")
        t2 = time.perf_counter()
        return {"records": result.added, "intake_s": t1 - t0, "outcomes_s": t2 - t1}
    finally:
        engine.dispose()


def measure(database_url: str, broker_url: str, batch: str) -> dict[str, Any]:
    """Seconds of the ledger reads of ``vfleet status B --json`` and of one reconcile
    round, and how many records the round re-published."""
    import redis

    from producer.progress import batch_progress
    from workers.celery_app import create_app
    from workers.dispatch import Dispatcher
    from workers.feeder import Feeder
    from workers.fleet import Fleet, InstanceConfig
    from workers.settings import Settings

    settings = Settings(broker_url=broker_url, database_url=database_url, reconcile_grace=60)
    fleet = Fleet.of(
        [
            InstanceConfig(
                name=f"inst-{n}", base_url=f"http://127.0.0.1:{9000 + n}/v1", model=MODEL
            )
            for n in range(INSTANCES)
        ]
    )
    engine = make_engine(database_url)
    client = redis.Redis.from_url(broker_url)
    try:
        feeder = Feeder(
            ledger=Ledger(engine),
            dispatcher=Dispatcher(create_app(settings, fleet=fleet)),
            redis_client=client,
            fleet=fleet,
            settings=settings,
        )
        t0 = time.perf_counter()
        batch_progress(feeder.ledger, feeder.ledger.batch(batch), details=True)
        status_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        republished = feeder.reconcile()
        return {
            "status_reads_s": status_s,
            "reconcile_s": time.perf_counter() - t0,
            "republished": republished,
        }
    finally:
        client.close()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer.bench_ledger")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="store a batch of N records with a realistic mix")
    b.add_argument("--database-url", required=True)
    b.add_argument("--records", type=int, required=True)
    b.add_argument("--batch", required=True)
    m = sub.add_parser("measure", help="time status's ledger reads and one reconcile round")
    m.add_argument("--database-url", required=True)
    m.add_argument("--broker-url", required=True)
    m.add_argument("--batch", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        out = build(args.database_url, args.records, args.batch)
    else:
        out = measure(args.database_url, args.broker_url, args.batch)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

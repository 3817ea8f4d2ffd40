"""Chaos: real processes are killed, stopped and restarted mid-batch, and every record still
ends succeeded exactly once.

Each test owns every server it breaks (its own redis-server, simulators, PostgreSQL) and
never touches the machine's services. Each prints a ``CHAOS`` line with records expected,
succeeded, duplicated and lost, and the time to recover (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from tests.pg_server import PostgresServer, pg_bindir
from tests.pipeline import Pipeline, RecoveryClock, judge_rows, write_jsonl
from tests.services import missing, start_redis
from workers.celery_app import create_app
from workers.dispatch import Dispatcher
from workers.store.engine import make_engine
from workers.store.migrate import upgrade

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(420)]

N = 2000
SLOW_SIM = ("--max-num-seqs", "16", "--ttft", "0.05", "--itl", "0.002", "--output-tokens", "5-20")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.cleanup()


def _report(name: str, p: Pipeline, batch: str, clock: RecoveryClock | None) -> None:
    """Assert exactly-once and print the figures the issue asks for."""
    recs = p.records(batch)
    keys = Counter(r.key for r in recs)
    statuses = Counter(r.status for r in recs)
    succeeded = statuses.get("succeeded", 0)
    duplicated = sum(n - 1 for n in keys.values())
    lost = N - len(keys)
    recovery = clock.recovery_seconds() if clock else None
    retried = sum(1 for r in recs if r.attempts > 1)
    line = (
        f"CHAOS {name}: expected {N} succeeded {succeeded} duplicated {duplicated} "
        f"lost {lost} retried {retried} recovery "
        f"{'n/a' if recovery is None else f'{recovery:.1f}s'}"
    )
    print(line)
    if path := os.environ.get("VFLEET_CHAOS_REPORT"):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    assert (succeeded, duplicated, lost) == (N, 0, 0), (line, dict(statuses))
    assert all(r.attempts >= 1 and r.output is not None for r in recs)


def _start(p: Pipeline, tmp: Path, batch: str) -> RecoveryClock:
    p.enqueue(write_jsonl(tmp / f"{batch}.jsonl", judge_rows(N, prefix=batch)), batch)
    clock = RecoveryClock(p, batch)
    clock.sample()
    p.wait_progress(batch, N * 3 // 10)
    return clock


def test_worker_killed_with_sigkill_mid_batch_loses_no_record(
    redis: RedisServer, tmp_path: Path
) -> None:
    with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
        clock = _start(p, tmp_path, "kill9")
        clock.fault()
        os.kill(p.worker_pid("sim-1"), signal.SIGKILL)
        clock.watch_until_done(N)
        _report("worker SIGKILL", p, "kill9", clock)


def test_instance_dies_and_comes_back_without_failing_records(
    redis: RedisServer, tmp_path: Path
) -> None:
    with Pipeline(
        tmp_path, redis.url, sim_args=SLOW_SIM, per_instance_args={0: ("--die-after", "200")}
    ) as p:
        clock = _start(p, tmp_path, "die")
        sim = p.sims[0]
        assert sim is not None
        sim.process.wait(60)  # --die-after: the engine is gone, its port refuses
        clock.fault()
        time.sleep(6)
        p.per_instance_args = {}
        p.start_sim(0)
        back_at = time.monotonic()
        clock.watch_until_done(N)
        after = [r for r in p.records("die") if r.instance == "sim-1" and r.finished_at is not None]
        _report("simulator dies, returns after 6 s", p, "die", clock)
        assert p.counts("die")["failed"] == 0
        # The gate reopened: sim-1's worker took work again after the restart.
        assert len(after) > 0 and back_at > 0


def test_round_robin_routes_around_an_instance_that_stays_dead(
    redis: RedisServer, tmp_path: Path
) -> None:
    with Pipeline(
        tmp_path, redis.url, sim_args=SLOW_SIM, per_instance_args={0: ("--die-after", "150")}
    ) as p:
        p.enqueue(write_jsonl(tmp_path / "rr.jsonl", judge_rows(N, prefix="rr")), "rr",
                  "--route", "round-robin")  # fmt: skip
        clock = RecoveryClock(p, "rr")
        clock.sample()
        sim = p.sims[0]
        assert sim is not None
        sim.process.wait(120)  # the engine is gone for good; its port refuses
        clock.fault()
        # Nothing revives sim-1: the records pushed to its queue must move to the others.
        clock.watch_until_done(N)
        assert sim.process.poll() is not None  # finished with sim-1 still dead
        _report("round-robin, one instance dead for good", p, "rr", clock)
        assert p.counts("rr")["failed"] == 0
        others = {r.instance for r in p.records("rr")} - {"sim-1"}
        assert others == {"sim-2", "sim-3", "sim-4"}


def test_redis_restarted_empty_mid_batch_loses_no_record(tmp_path: Path) -> None:
    redis = start_redis()
    try:
        with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
            clock = _start(p, tmp_path, "redis")
            clock.fault()
            redis.kill()
            time.sleep(2)
            redis.start()  # same port, no persistence: every queue is gone
            clock.watch_until_done(N, timeout=240)
            _report("redis restarted empty", p, "redis", clock)
    finally:
        redis.cleanup()


def test_postgresql_stopped_10s_mid_batch_loses_no_record(
    redis: RedisServer, tmp_path: Path
) -> None:
    if pg_bindir() is None:
        missing("PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    pg = PostgresServer().init()
    pg.start()
    try:
        engine = make_engine(pg.url)
        upgrade(engine)
        engine.dispose()
        with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM, database_url=pg.url) as p:
            clock = _start(p, tmp_path, "pg")
            clock.fault()
            pg.stop("fast")
            time.sleep(10)
            pg.start()
            clock.watch_until_done(N, timeout=240)
            _report("postgresql stopped 10 s", p, "pg", clock)
    finally:
        pg.cleanup()


def test_sigterm_stops_a_worker_in_bounded_time_and_loses_nothing(
    redis: RedisServer, tmp_path: Path
) -> None:
    with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
        clock = _start(p, tmp_path, "term")
        clock.fault()
        started = time.monotonic()
        code = p.signal_worker("sim-2", signal.SIGTERM)
        stop_seconds = time.monotonic() - started
        clock.watch_until_done(N)
        _report(f"worker SIGTERM (stopped in {stop_seconds:.1f}s)", p, "term", clock)
        assert code == 0
        assert stop_seconds < p.settings.shutdown_grace + 10


def test_thirty_percent_injected_errors_end_in_success(redis: RedisServer, tmp_path: Path) -> None:
    faulty = (
        *SLOW_SIM,
        "--fail-rate",
        "0.3",
        "--fail-kinds",
        "500,503,429",
        "--retry-after",
        "1",
        "--seed",
        "11",
    )
    with Pipeline(tmp_path, redis.url, sim_args=faulty, max_attempts=25) as p:
        p.enqueue(write_jsonl(tmp_path / "faulty.jsonl", judge_rows(N, prefix="x")), "faulty")
        p.wait_done("faulty", N, timeout=300)
        _report("30% injected 500/503/429", p, "faulty", None)
        kinds = Counter(r.error_kind for r in p.records("faulty") if r.attempts > 1)
        assert sum(kinds.values()) > N // 10  # the faults really happened and were retried


def test_duplicate_delivery_to_two_workers_has_one_effect(
    redis: RedisServer, tmp_path: Path
) -> None:
    with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
        p.enqueue(
            write_jsonl(tmp_path / "dup.jsonl", judge_rows(N, prefix="d")),
            "dup",
            "--route",
            "round-robin",
        )
        info = p.ledger.batch("dup")
        ids = [r.id for r in p.records("dup")]
        # Every record again, pushed round-robin starting one instance later: each id is
        # now in two different workers' queues at once.
        shifted = info.__class__(
            **{**info.__dict__, "targets": (*info.targets[1:], info.targets[0])}
        )
        Dispatcher(create_app(p.settings)).publish(shifted, ids)
        p.wait_done("dup", N)
        time.sleep(3)  # let the late duplicates run into their claims
        _report("duplicate delivery", p, "dup", None)
        assert all(r.attempts == 1 for r in p.records("dup"))
        assert p.sim_requests() == N

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
import redis as redis_lib

from ops.redis_server import RedisServer
from tests.pg_server import PostgresServer, pg_bindir
from tests.pipeline import MODEL, Pipeline, RecoveryClock, judge_rows, write_jsonl
from tests.services import missing, start_redis, wait_for
from workers.broker import live_messages
from workers.celery_app import create_app
from workers.dispatch import Dispatcher, chunk_size
from workers.fleet import Fleet
from workers.queues import instance_queue, shared_queue
from workers.store.engine import make_engine
from workers.store.migrate import upgrade
from workers.worker_main import task_threads

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]

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


def queues(p: Pipeline) -> list[str]:
    return [shared_queue(MODEL), *(instance_queue(i.name) for i in p.instances)]


def _assert_workers_survived(p: Pipeline) -> None:
    """Every worker process the pipeline started is still the one alive, and none logged
    Celery's "Unrecoverable error"."""
    dead = {
        name: proc.returncode for name, proc in p.group.procs.items() if proc.poll() is not None
    }
    assert not dead, f"workers died: {dead}"
    for log in p.tmp.glob("worker-*.log"):
        assert "Unrecoverable error" not in log.read_text(errors="replace"), log.name


def test_redis_restarted_empty_three_times_mid_batch_loses_no_record_and_no_worker(
    tmp_path: Path,
) -> None:
    redis = start_redis()
    try:
        with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
            clock = _start(p, tmp_path, "redis")
            clock.fault()
            for k in range(3):
                # Same port, no persistence: every queue, lock and unacked message is gone.
                redis.kill()
                time.sleep(2)
                redis.start()
                if k < 2:  # let the fleet get going again before the next fault
                    p.wait_progress("redis", min(N, p.done("redis") + N // 10), timeout=240)
            clock.watch_until_done(N, timeout=300)
            _report("redis restarted empty 3 times", p, "redis", clock)
            _assert_workers_survived(p)
    finally:
        redis.cleanup()


def test_redis_paused_mid_batch_resumes_feeding_and_loses_nothing(tmp_path: Path) -> None:
    redis = start_redis()
    try:
        with Pipeline(tmp_path, redis.url, sim_args=SLOW_SIM) as p:
            clock = _start(p, tmp_path, "pause")
            clock.fault()
            # SIGSTOP, not a kill: commands sent meanwhile (lock requests among them) run
            # when it resumes, after their senders gave up waiting.
            redis.process.send_signal(signal.SIGSTOP)
            time.sleep(15)
            redis.process.send_signal(signal.SIGCONT)
            clock.watch_until_done(N, timeout=300)
            _report("redis paused 15 s", p, "pause", clock)
            _assert_workers_survived(p)
    finally:
        redis.process.send_signal(signal.SIGCONT)
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
            clock.watch_until_done(N, timeout=300)
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


def test_retries_wait_in_the_ledger_so_redis_stays_within_its_window(
    redis: RedisServer, tmp_path: Path
) -> None:
    """30% of answers are 429 with Retry-After 20: the retried records wait in SQL, and Redis
    holds no more than the feeder's window plus what the workers are running."""
    limited = (*SLOW_SIM, "--fail-rate", "0.3", "--fail-kinds", "429", "--retry-after", "20",
               "--seed", "5")  # fmt: skip
    with Pipeline(tmp_path, redis.url, sim_args=limited, max_attempts=25) as p:
        client = redis_lib.Redis.from_url(redis.url)
        shared = shared_queue(MODEL)
        window = max(p.settings.window_min, int(p.settings.window_factor * 4 * p.concurrency))
        # Records the workers may hold: each runs ceil(concurrency / chunk) + 1 messages.
        chunk = chunk_size(Fleet.of(p.instances), MODEL, p.settings.chunk_max)
        running = 4 * task_threads(p.concurrency, chunk) * chunk
        peaks = {"queue": 0, "unacked": 0, "retry": 0}
        p.enqueue(write_jsonl(tmp_path / "429.jsonl", judge_rows(N, prefix="r")), "r429")
        deadline = time.monotonic() + 300
        while p.done("r429") < N:
            assert time.monotonic() < deadline, f"batch did not finish: {p.counts('r429')}"
            live = live_messages(client, [shared])  # record ids: waiting (None) or fetched
            waiting = sum(1 for fetched in live.values() if fetched is None)
            peaks["queue"] = max(peaks["queue"], waiting)
            peaks["unacked"] = max(peaks["unacked"], len(live) - waiting)
            peaks["retry"] = max(peaks["retry"], p.counts("r429")["retry"])
            time.sleep(0.1)
        client.close()
        print(f"CHAOS 429 window {window} running {running} peaks {peaks}")
        _report("30% 429 with Retry-After 20", p, "r429", None)
        assert peaks["retry"] > 50  # the 429s happened, and their records waited in SQL
        assert peaks["queue"] <= window
        # kombu counts an acked message as gone before Redis hears of the ack: a worker may
        # fetch one more message meanwhile.
        assert peaks["unacked"] <= running + 4 * chunk, peaks


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
        # Let every late duplicate run into its claim: wait until Redis holds none of them.
        wait_for(lambda: not live_messages(redis_lib.Redis.from_url(redis.url), queues(p)),
                 timeout=300, what="the duplicates to be consumed")  # fmt: skip
        _report("duplicate delivery", p, "dup", None)
        assert all(r.attempts == 1 for r in p.records("dup"))
        assert p.sim_requests() == N

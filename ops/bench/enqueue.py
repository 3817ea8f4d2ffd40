"""The enqueue benchmark: ``vfleet enqueue`` of a large JSONL against a plain Celery loop.

``vfleet enqueue`` stores every record in the SQL ledger, then publishes only a window
(``max(window_min, window_factor x the fleet's concurrency)``) to Redis; the workers feed the
rest as they drain. So its figure is *records stored per second*, with the window published.
The baseline sends one Celery message per record to Redis (no ledger); its figure is
*messages per second*. The two do different work; both are what a user waits for before
the file is "in".
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from ops.bench.config import SIM_MODEL, VFLEET_ENV, BenchOptions
from ops.bench.errors import BenchRunError, BenchSetupError
from ops.bench.fleet import write_fleet_file
from ops.bench.procs import Child
from ops.bench.stack import vfleet_argv
from ops.bench.workload import write_records
from ops.redis_server import RedisServer, RedisServerError

logger = logging.getLogger(__name__)

ENQUEUE_TIMEOUT = 1800.0
_MB = 1024 * 1024
# Instances named in the fleet file of the enqueue run; nothing is called at enqueue time.
_FAKE_INSTANCES = 4
_FAKE_CONCURRENCY = 32


@dataclass(frozen=True)
class ProcessFigures:
    """One enqueue process: how much it did, how long it took and what it used."""

    label: str
    items: int  # records stored, or messages sent
    wall: float  # process launch to exit
    busy: float  # the part that did the work (the whole wall for vfleet)
    cpu: float
    peak_rss_mb: float
    redis_mb: float  # Redis memory used once it finished
    published: int  # messages in Redis afterwards

    @property
    def rate(self) -> float:
        return self.items / self.busy if self.busy > 0 else 0.0


@dataclass(frozen=True)
class EnqueueBench:
    records: int
    vfleet: ProcessFigures
    celery: ProcessFigures | None


def _redis_used_mb(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("memory")
        return float(info["used_memory"]) / _MB
    finally:
        client.close()


@contextmanager
def _redis() -> Iterator[RedisServer]:
    """A private redis-server, stopped on the way out (started once: not ``with`` it again)."""
    try:
        server = RedisServer().start()
    except RedisServerError as e:
        raise BenchSetupError(str(e)) from e
    try:
        yield server
    finally:
        server.cleanup()


def _vfleet_enqueue(records_file: Path, n: int, workdir: Path) -> ProcessFigures:
    names = [f"inst-{i + 1}" for i in range(_FAKE_INSTANCES)]
    urls = [f"http://127.0.0.1:{9 + i}/v1" for i in range(_FAKE_INSTANCES)]
    fleet = write_fleet_file(
        workdir / "fleet-enqueue.toml", names, urls, model=SIM_MODEL, concurrency=_FAKE_CONCURRENCY
    )
    db = workdir / "enqueue.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with _redis() as server:
        env = {
            **os.environ,
            **VFLEET_ENV,
            "VFLEET_BROKER_URL": server.url,
            "VFLEET_DATABASE_URL": f"sqlite:///{db}",
            "VFLEET_FLEET_FILE": str(fleet),
        }
        argv = vfleet_argv(
            "enqueue", str(records_file), "--spec", "judge", "--batch", "big", "--key", "id",
            "--json",
        )  # fmt: skip
        out = workdir / "enqueue-report.json"
        child = Child("vfleet-enqueue", argv, env=env, log=workdir / "enqueue.log", stdout=out)
        usage = child.start().wait(ENQUEUE_TIMEOUT)
        wall = time.time() - child.started_at
        if usage.exit_code != 0:
            raise BenchRunError(f"vfleet enqueue exited with {usage.exit_code}; see enqueue.log")
        report = json.loads(out.read_text(encoding="utf-8").strip().splitlines()[-1])
        return ProcessFigures(
            label="vfleet enqueue",
            items=int(report["added"]),
            wall=wall,
            busy=wall,
            cpu=usage.cpu,
            peak_rss_mb=usage.peak_rss_mb,
            redis_mb=_redis_used_mb(server.url),
            published=int(report["published"]),
        )


def _celery_loop(records_file: Path, count: int, workdir: Path) -> ProcessFigures:
    with _redis() as server:
        argv = [
            sys.executable, "-m", "ops.bench.celery_loop",
            "--broker", server.url, "--file", str(records_file), "--count", str(count),
        ]  # fmt: skip
        out = workdir / "celery-loop.json"
        child = Child("celery-loop", argv, log=workdir / "celery-loop.log", stdout=out)
        usage = child.start().wait(ENQUEUE_TIMEOUT)
        wall = time.time() - child.started_at
        if usage.exit_code != 0:
            raise BenchRunError(f"celery loop exited with {usage.exit_code}; see celery-loop.log")
        report = json.loads(out.read_text(encoding="utf-8").strip().splitlines()[-1])
        return ProcessFigures(
            label="Celery apply_async loop",
            items=int(report["sent"]),
            wall=wall,
            busy=float(report["seconds"]),
            cpu=usage.cpu,
            peak_rss_mb=usage.peak_rss_mb,
            redis_mb=_redis_used_mb(server.url),
            published=int(report["sent"]),
        )


def run_enqueue_bench(options: BenchOptions, workdir: Path, say: object = print) -> EnqueueBench:
    """Write the big JSONL, enqueue it with vfleet, then run the Celery loop on its head."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = options.sizes.enqueue_records
    records_file = workdir / f"enqueue-{n}.jsonl"
    if not records_file.exists():
        write_records(records_file, n)
    _say(say, f"enqueue: vfleet enqueue of {n:,} records")
    vfleet = _vfleet_enqueue(records_file, n, workdir)
    celery = None
    if options.sizes.celery_messages > 0:
        _say(say, f"enqueue: Celery apply_async loop, {options.sizes.celery_messages:,} messages")
        celery = _celery_loop(records_file, options.sizes.celery_messages, workdir)
    return EnqueueBench(n, vfleet, celery)


def _say(say: object, message: str) -> None:
    if callable(say):
        say(message)

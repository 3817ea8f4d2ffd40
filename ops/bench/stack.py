"""vfleet itself, as a user runs it: a Redis, a SQLite ledger, one worker per instance.

Everything goes through the ``vfleet`` CLI in subprocesses (``python -m producer ...``) with
``VFLEET_*`` variables; nothing of ``workers`` or ``producer`` is imported here. The ledger
is read back read-only with the stdlib ``sqlite3`` module.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from ops.bench.config import VFLEET_ENV
from ops.bench.errors import BenchRunError, BenchSetupError
from ops.bench.fleet import SimBench, write_fleet_file
from ops.bench.procs import Child, Usage, stop_all
from ops.redis_server import RedisServer, RedisServerError

READY_TIMEOUT = 120.0
CLI_TIMEOUT = 600.0
_READY_MARK = b" ready."
_TERMINAL = ("succeeded", "failed", "cancelled")


def vfleet_argv(*args: str) -> list[str]:
    """argv of the vfleet CLI on this interpreter."""
    return [sys.executable, "-m", "producer", *args]


def run_cli(args: Sequence[str], env: dict[str, str], log: Path) -> str:
    """Run one vfleet command to completion; returns its stdout. Raises :class:`BenchRunError`."""
    done = subprocess.run(
        vfleet_argv(*args), env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ vfleet {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchRunError(f"vfleet {args[0]} exited with {done.returncode}: {last}")
    return done.stdout


class Ledger:
    """Read-only view of the SQLite ledger (the records table) for polling and timelines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)

    def status_counts(self, batch: str) -> dict[str, int]:
        """Records of ``batch`` per status; empty while the batch does not exist yet."""
        query = (
            "SELECT r.status, count(*) FROM records r JOIN batches b ON r.batch_id = b.id "
            "WHERE b.name = ? GROUP BY r.status"
        )
        try:
            with self._connect() as conn:
                return {str(s): int(n) for s, n in conn.execute(query, (batch,))}
        except sqlite3.OperationalError:  # not created yet, or busy: ask again later
            return {}

    def terminal(self, batch: str) -> tuple[int, int]:
        """(succeeded, finished in any terminal status) of ``batch``."""
        counts = self.status_counts(batch)
        return counts.get("succeeded", 0), sum(counts.get(s, 0) for s in _TERMINAL)


def parse_time(value: str | None) -> float | None:
    """Epoch seconds of an exported ISO timestamp."""
    return datetime.fromisoformat(value).timestamp() if value else None


class VfleetStack:
    """Redis, the fleet file, the ledger and one ``vfleet worker`` per instance (a context)."""

    def __init__(self, sims: SimBench, workdir: Path, *, concurrency: int) -> None:
        self.sims = sims
        self.workdir = workdir
        self.concurrency = concurrency
        self.db_path = workdir / "vfleet.db"
        self.ledger = Ledger(self.db_path)
        self.cli_log = workdir / "cli.log"
        self.redis: RedisServer | None = None
        self.workers: list[Child] = []
        self.worker_usage: dict[str, Usage] = {}
        self.env: dict[str, str] = {}

    @property
    def redis_pid(self) -> int | None:
        proc = self.redis.process if self.redis is not None else None
        return proc.pid if proc is not None else None

    def start(self) -> VfleetStack:
        """Start Redis and the workers, and wait until every worker says it is ready."""
        try:
            self.redis = RedisServer().start()
        except RedisServerError as e:
            raise BenchSetupError(str(e)) from e
        fleet_file = write_fleet_file(
            self.workdir / "fleet.toml",
            self.sims.names,
            self.sims.urls,
            model=self.sims.model,
            concurrency=self.concurrency,
        )
        self.env = {
            **os.environ,
            **VFLEET_ENV,
            "VFLEET_BROKER_URL": self.redis.url,
            "VFLEET_DATABASE_URL": f"sqlite:///{self.db_path}",
            "VFLEET_FLEET_FILE": str(fleet_file),
        }
        run_cli(["db", "upgrade"], self.env, self.cli_log)
        for name in self.sims.names:
            child = Child(
                f"worker-{name}",
                vfleet_argv("worker", "--instance", name, "--loglevel", "INFO"),
                env=self.env,
                log=self.workdir / f"worker-{name}.log",
            )
            self.workers.append(child.start())
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(self.workers)
        while pending:
            for child in pending:
                if not child.running():
                    raise BenchSetupError(f"{child.name} exited; see {child.log}")
            pending = [c for c in pending if c.log is None or _READY_MARK not in c.log.read_bytes()]
            if pending and time.monotonic() > deadline:
                raise BenchSetupError(f"{pending[0].name} not ready after {READY_TIMEOUT:g}s")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        return [c.pid for c in self.workers]

    def stop(self) -> None:
        """Stop the workers (keeping their usage) and Redis."""
        self.worker_usage = stop_all(self.workers)
        if self.redis is not None:
            self.redis.cleanup()

    def __enter__(self) -> VfleetStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def check_worker_logs(stack: VfleetStack) -> None:
    """Raise :class:`BenchRunError` if a worker died during a run."""
    for child in stack.workers:
        if not child.running():
            raise BenchRunError(f"{child.name} died during the run; see {child.log}")

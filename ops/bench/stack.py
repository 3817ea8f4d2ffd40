"""vfleet itself, as a user runs it: a Redis, a SQLite ledger, one worker per instance.

Everything goes through the ``vfleet`` CLI in subprocesses (``python -m producer ...``) with
``VFLEET_*`` variables; nothing of ``workers`` or ``producer`` is imported here. The ledger
is read back read-only with the stdlib ``sqlite3`` module.

A stack may run vfleet from another source tree (``source_tree``: a git worktree of an older
commit, for the ``vfleet-before`` mode): every vfleet process of it then runs in that tree
with it first on ``PYTHONPATH``, on this interpreter and its installed dependencies, and
the stack checks before starting that ``workers`` and ``producer`` import from there.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
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


def run_cli(args: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> str:
    """Run one vfleet command to completion; returns its stdout. Raises :class:`BenchRunError`."""
    done = subprocess.run(
        vfleet_argv(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT
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

    def __init__(
        self,
        sims: SimBench,
        workdir: Path,
        *,
        concurrency: int,
        env: Mapping[str, str] | None = None,
        source_tree: Path | None = None,
    ) -> None:
        self.sims = sims
        self.workdir = workdir
        self.concurrency = concurrency
        self.extra_env = dict(env or {})
        self.source_tree = source_tree.resolve() if source_tree is not None else None
        self.source_commit: str | None = None
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

    @property
    def cwd(self) -> Path | None:
        """Where vfleet processes run: the other source tree (``python -m`` puts the working
        directory first on ``sys.path``), or the caller's directory."""
        return self.source_tree

    def cli(self, args: Sequence[str]) -> str:
        """Run one vfleet command of this stack; returns its stdout."""
        return run_cli(args, self.env, self.cli_log, self.cwd)

    def child(self, name: str, args: Sequence[str], log: Path) -> Child:
        """A vfleet process of this stack (not started)."""
        return Child(name, vfleet_argv(*args), env=self.env, log=log, cwd=self.cwd)

    def _source_env(self) -> dict[str, str]:
        if self.source_tree is None:
            return {}
        path = os.environ.get("PYTHONPATH")
        tree = str(self.source_tree)
        return {"PYTHONPATH": f"{tree}{os.pathsep}{path}" if path else tree}

    def _check_source(self) -> None:
        """Make sure the stack's processes import vfleet from its source tree."""
        if self.source_tree is None:
            return
        probe = "import producer, workers; print(workers.__file__); print(producer.__file__)"
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        files = [Path(line).resolve() for line in done.stdout.split()]
        if done.returncode != 0 or not files:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchSetupError(f"vfleet does not import from {self.source_tree}: {last}")
        for file in files:
            if not file.is_relative_to(self.source_tree):
                raise BenchSetupError(f"{self.source_tree}: vfleet imports from {file} instead")
        rev = subprocess.run(
            ["git", "-C", str(self.source_tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.source_commit = rev.stdout.strip() or None

    def start(self) -> VfleetStack:
        """Start Redis and the workers, and wait until every worker says it is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
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
            **self.extra_env,
            **self._source_env(),
            "VFLEET_BROKER_URL": self.redis.url,
            "VFLEET_DATABASE_URL": f"sqlite:///{self.db_path}",
            "VFLEET_FLEET_FILE": str(fleet_file),
        }
        self._check_source()
        self.cli(["db", "upgrade"])
        for name in self.sims.names:
            child = self.child(
                f"worker-{name}",
                ["worker", "--instance", name, "--loglevel", "INFO"],
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

"""Start child processes (workers, simulators) and stop them all together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING

from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 40.0


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process the same settings as ours."""
    env = dict(os.environ)
    env.update(
        {
            "VFLEET_BROKER_URL": settings.broker_url,
            "VFLEET_DATABASE_URL": settings.database_url,
            "VFLEET_FLEET_FILE": str(Path(settings.fleet_file).resolve()),
            "VFLEET_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
            "VFLEET_REQUEST_TIMEOUT": str(settings.request_timeout),
            "VFLEET_MAX_ATTEMPTS": str(settings.max_attempts),
            "VFLEET_RETRY_BACKOFF_BASE": str(settings.retry_backoff_base),
            "VFLEET_RETRY_BACKOFF_MAX": str(settings.retry_backoff_max),
        }
    )
    return env


def wait_for_workers(app: Celery, count: int, *, timeout: float = 60.0) -> int:
    """Wait until ``count`` Celery workers answer a ping; returns how many did."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = len(app.control.ping(timeout=0.5) or [])
        if seen >= count:
            break
    return seen


def vfleet_argv(*args: str) -> list[str]:
    """argv running this very vfleet (same interpreter), whatever PATH says."""
    return [sys.executable, "-m", "producer", *args]


class ProcessGroup:
    """Children started together; :meth:`stop` sends SIGTERM, then SIGKILL after a grace."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        out: IO[bytes] | None = None
        if log is not None:
            out = log.open("ab")
            self._logs.append(out)
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env else None,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.procs[name] = proc
        logger.info("started %s (pid %s)", name, proc.pid)
        return proc

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> dict[str, int]:
        """Stop every child; returns their exit codes."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, p in self.procs.items():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs: killing it", name, timeout)
                p.kill()
                p.wait()
        for fh in self._logs:
            fh.close()
        return {n: int(p.returncode) for n, p in self.procs.items()}

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TerminateOnSignal:
    """Turn SIGTERM into KeyboardInterrupt for the duration of a ``with`` block."""

    def __enter__(self) -> TerminateOnSignal:
        self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.signal(signal.SIGTERM, self._old)

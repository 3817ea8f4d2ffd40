"""Start child processes (workers, simulators) and stop them all together."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING

from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 40.0


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process the same settings as ours: every field of
    ``settings`` as its ``VFLEET_`` variable (the fleet file as an absolute path)."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json").items():
        key = f"VFLEET_{name.upper()}"
        if value is None:
            env.pop(key, None)
        elif name == "fleet_file":
            env[key] = str(Path(settings.fleet_file).resolve())
        elif isinstance(value, bool | list | dict):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
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


DEFAULT_RESTART_BACKOFF = 1.0
DEFAULT_RESTART_BACKOFF_MAX = 60.0
DEFAULT_STABLE_AFTER = 60.0
"""A child that ran this long before it died is restarted after the shortest backoff."""


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``, as a log line says it."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Child:
    argv: list[str]
    env: Mapping[str, str] | None
    log: Path | None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    due: float | None = None
    """When a dead child is started again (None: running)."""


class Supervisor:
    """Keeps a :class:`ProcessGroup`'s children running: one that exits on its own is
    started again after a backoff (doubling from ``backoff`` to ``backoff_max``; back to
    ``backoff`` once it had run ``stable_after`` seconds), with a log line saying why.

    Call :meth:`poll` periodically; :meth:`ProcessGroup.stop` ends them all for good.
    """

    def __init__(
        self,
        group: ProcessGroup,
        *,
        backoff: float = DEFAULT_RESTART_BACKOFF,
        backoff_max: float = DEFAULT_RESTART_BACKOFF_MAX,
        stable_after: float = DEFAULT_STABLE_AFTER,
    ) -> None:
        self.group = group
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.children: dict[str, _Child] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        child = self.children[name] = _Child(list(argv), env, log)
        self._launch(name, child)

    def _launch(self, name: str, child: _Child) -> None:
        self.group.start(name, child.argv, env=child.env, log=child.log)
        child.started_at = time.monotonic()
        child.due = None

    def poll(self) -> None:
        """Notice children that died and start those whose backoff is over."""
        now = time.monotonic()
        for name, child in self.children.items():
            proc = self.group.procs[name]
            if child.due is None:
                code = proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                child.backoff = (
                    self.backoff
                    if ran >= self.stable_after or child.backoff == 0
                    else min(self.backoff_max, child.backoff * 2)
                )
                child.due = now + child.backoff
                child.restarts += 1
                logger.warning(
                    "%s (pid %s) died with %s after %.0fs; restarting in %.1fs (restart %s)",
                    name,
                    proc.pid,
                    describe_exit(code),
                    ran,
                    child.backoff,
                    child.restarts,
                )
            elif now >= child.due:
                self._launch(name, child)


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

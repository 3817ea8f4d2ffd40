"""Child processes the benchmark measures: CPU time and peak memory.

A child is reaped with ``os.wait4``, whose ``rusage`` gives its exact CPU time (its reaped
children's included). Peak memory is sampled while it runs, from the kernel's high-water mark
``VmHWM`` in ``/proc/PID/status`` (psutil's RSS elsewhere): ``ru_maxrss`` is no use here,
as Linux carries the forking parent's high-water mark over ``exec``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from ops.bench.errors import BenchRunError

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
_POLL = 0.1
_MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    """What a finished process used: CPU seconds (user + system) and peak RSS in MB."""

    cpu: float
    peak_rss_mb: float  # as last sampled
    exit_code: int


def cpu_seconds(pid: int) -> float:
    """CPU seconds ``pid`` used so far, its reaped children's included; 0 when it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` so far in MB (current RSS where the kernel does not
    say); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        return float(psutil.Process(pid).memory_info().rss) / _MB
    except psutil.Error:
        return 0.0


class Child:
    """One subprocess in its own session, its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        stdout: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.log = log
        self.stdout = stdout
        self.started_at = 0.0
        self.usage: Usage | None = None
        self.peak_rss_mb = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchRunError(f"{self.name} is not started")
        return self._proc.pid

    def start(self) -> Child:
        """Start the process; returns self."""
        err = self._open(self.log)
        out = self._open(self.stdout) if self.stdout is not None else err
        self.started_at = time.time()
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=err if err is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        logger.debug("started %s (pid %s): %s", self.name, self._proc.pid, " ".join(self.argv))
        return self

    def _open(self, path: Path | None) -> IO[bytes] | None:
        if path is None:
            return None
        fh = path.open("ab")
        self._files.append(fh)
        return fh

    def running(self) -> bool:
        return self._proc is not None and self.usage is None and self._reap(block=False) is None

    def sample(self) -> None:
        """Note the process's peak RSS so far (call it while it runs)."""
        if self._proc is not None and self.usage is None:
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.pid))

    def _reap(self, *, block: bool) -> Usage | None:
        if self.usage is not None:
            return self.usage
        try:
            pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status, ru = self.pid, 0, None
        if pid == 0:
            return None
        code = os.waitstatus_to_exitcode(status)
        if self._proc is not None:
            self._proc.returncode = code
        cpu = (ru.ru_utime + ru.ru_stime) if ru is not None else 0.0
        self.usage = Usage(cpu=cpu, peak_rss_mb=self.peak_rss_mb, exit_code=code)
        for fh in self._files:
            fh.close()
        return self.usage

    def wait(self, timeout: float) -> Usage:
        """Wait for the process to exit. Raises :class:`BenchRunError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (usage := self._reap(block=False)) is None:
            self.sample()
            if time.monotonic() > deadline:
                self.stop()
                raise BenchRunError(f"{self.name} did not finish in {timeout:g}s")
            time.sleep(_POLL)
        return usage

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> Usage:
        """SIGTERM, then SIGKILL after ``timeout``; returns what the process used."""
        if self._proc is None:
            return Usage(0.0, 0.0, 0)
        if self.usage is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._reap(block=False) is None and time.monotonic() < deadline:
                time.sleep(_POLL)
            if self.usage is None:
                logger.warning("%s did not stop in %.0fs: killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._reap(block=True)
        assert self.usage is not None
        return self.usage


def stop_all(children: Iterable[Child], timeout: float = DEFAULT_STOP_TIMEOUT) -> dict[str, Usage]:
    """SIGTERM every child at once, then reap each; returns their usage by name."""
    children = list(children)
    for child in children:
        if child.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    return {child.name: child.stop(timeout) for child in children}


class RssSampler:
    """A thread that records the peak RSS of some pids, every ``interval`` seconds."""

    def __init__(self, pids: Iterable[int], *, interval: float = 0.5) -> None:
        self.peaks: dict[int, float] = dict.fromkeys(pids, 0.0)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while True:
            for pid in self.peaks:
                self.peaks[pid] = max(self.peaks[pid], rss_mb(pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

"""Find processes a test run started and left running.

The run puts a marker in its environment (:data:`MARKER`) before any test starts; every
process it starts inherits it: servers, workers, simulators, and (through the test sshd's
``SetEnv``) the commands run "remotely". Processes started with a fresh environment escape
the check; everything vfleet itself starts passes the environment on.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass

import psutil

MARKER = "PYTEST_VFLEET_RUN"
"""Not VFLEET_-prefixed: tests that clear every VFLEET_ variable must keep it."""


@dataclass(frozen=True)
class Leftover:
    pid: int
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.cmdline[:200]}"


_reported: list[Leftover] = []


def report(proc: psutil.Process, *, where: str) -> None:
    """Record a leak that a fixture found and ended itself (the final check fails on it)."""
    _reported.append(Leftover(proc.pid, f"{' '.join(proc.cmdline())} ({where})"))


def reported() -> list[Leftover]:
    return list(_reported)


def mark_this_run() -> str:
    """Put a fresh marker in this process's environment; returns it."""
    value = uuid.uuid4().hex
    os.environ[MARKER] = value
    return value


def _carries(proc: psutil.Process, needle: bytes) -> bool:
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:
        return False


def leftovers(marker: str) -> list[Leftover]:
    """Live processes (not zombies) other than this one and its ancestors that carry
    ``marker``."""
    needle = f"{MARKER}={marker}".encode()
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        if proc.pid in mine or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if _carries(proc, needle):
            found.append(Leftover(proc.pid, " ".join(proc.info["cmdline"] or [])))
    return found


def wait_for_leftovers(marker: str, *, grace: float = 15.0) -> list[Leftover]:
    """The marked processes still alive after ``grace`` seconds (processes that are being
    stopped get that long to finish exiting)."""
    deadline = time.monotonic() + grace
    while True:
        found = leftovers(marker)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.5)


def kill(found: list[Leftover]) -> None:
    """SIGKILL what the run left behind, so that a failed check leaves nothing running."""
    for item in found:
        with contextlib.suppress(psutil.Error):
            psutil.Process(item.pid).kill()

"""The forwards running on this machine, in a small JSON file several processes share.

Each ``vfleet forward`` process writes its own entries (keyed by its pid) whenever a state
changes and removes them when it stops. A reader drops the entries of processes that are
gone (killed without cleaning up) and writes the file back. Writes hold an ``flock`` on a
lock file beside it and replace the file atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ops.tunnels.errors import TunnelStateError

DEFAULT_STATE_FILE = Path("~/.local/state/vfleet/forwards.json")
_VERSION = 1


@dataclass(frozen=True)
class ForwardEntry:
    """One running forward as the state file records it."""

    pid: int
    name: str
    host: str
    remote_host: str
    remote_port: int
    local_port: int
    model: str | None = None
    state: str = "starting"
    detail: str | None = None
    since: float = 0.0
    updated: float = 0.0

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/v1"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "local_url": self.local_url}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForwardEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` running (or at least present) on this machine?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class ForwardsState:
    """Read and update the state file at ``path`` (``~`` expanded; parents created)."""

    def __init__(self, path: Path = DEFAULT_STATE_FILE) -> None:
        self.path = path.expanduser()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise TunnelStateError(f"cannot use state file {self.path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> list[ForwardEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise TunnelStateError(f"cannot read {self.path}: {e.strerror}") from e
        try:
            data = json.loads(text) if text.strip() else {}
            return [ForwardEntry.from_dict(d) for d in data.get("forwards", [])]
        except (ValueError, TypeError, AttributeError):
            return []  # a torn or foreign file: start afresh rather than fail every command

    def _save(self, entries: Sequence[ForwardEntry]) -> None:
        body = json.dumps({"version": _VERSION, "forwards": [asdict(e) for e in entries]}, indent=2)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".forwards-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            raise TunnelStateError(f"cannot write {self.path}: {e.strerror}") from e

    def update(self, pid: int, entries: Sequence[ForwardEntry]) -> None:
        """Make ``entries`` the whole of ``pid``'s forwards (stale entries dropped too)."""
        now = time.time()
        mine = [e if e.pid == pid else ForwardEntry(**{**asdict(e), "pid": pid}) for e in entries]
        mine = [ForwardEntry(**{**asdict(e), "updated": now}) for e in mine]
        with self._locked():
            others = [e for e in self._load() if e.pid != pid and pid_alive(e.pid)]
            self._save([*others, *mine])

    def remove(self, pid: int) -> None:
        """Forget ``pid``'s forwards."""
        self.update(pid, [])

    def read(self) -> list[ForwardEntry]:
        """The live forwards; entries of dead processes are removed from the file."""
        if not self.path.exists():
            return []
        with self._locked():
            entries = self._load()
            alive = [e for e in entries if pid_alive(e.pid)]
            if len(alive) != len(entries):
                self._save(alive)
        return alive

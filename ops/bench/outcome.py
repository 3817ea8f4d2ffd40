"""What a client-mode run writes per record, and the switch that kills an instance mid-run.

Each finished record is one JSONL line (like the seeds' result file): ``key``, ``ok``,
``instance`` (index), ``t_done`` (epoch seconds), ``call_s`` (the last HTTP call's
duration), ``tokens`` (completion tokens), ``attempts`` and ``error``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO

from ops.bench.errors import BenchRunError
from ops.bench.fleet import http_post


@dataclass(frozen=True)
class Outcome:
    """How one record ended in a client mode."""

    key: str
    ok: bool
    instance: int
    t_done: float
    call_s: float
    tokens: int | None = None
    attempts: int = 1
    error: str | None = None


class OutcomeWriter:
    """Appends outcomes to a JSONL file; thread-safe; counts successes for the kill switch."""

    def __init__(self, fh: IO[str], kill: KillSwitch | None = None) -> None:
        self._fh = fh
        self._kill = kill
        self._lock = threading.Lock()

    def write(self, outcome: Outcome) -> None:
        with self._lock:
            self._fh.write(json.dumps(asdict(outcome)) + "\n")
        if outcome.ok and self._kill is not None:
            self._kill.note_success()


class KillSwitch:
    """POSTs ``url`` (the simulator's ``/sim/kill``) once ``after`` records have succeeded.

    The POST runs in its own thread so that no client thread or event loop waits for it.
    """

    def __init__(self, url: str, after: int) -> None:
        self.url = url
        self.after = after
        self.fired_at: float | None = None
        self.error: str | None = None
        self._done = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def note_success(self) -> None:
        with self._lock:
            self._done += 1
            fire = self._done == self.after
        if fire:
            self.fired_at = time.time()
            self._thread = threading.Thread(target=self._fire, name="kill-switch", daemon=True)
            self._thread.start()

    def _fire(self) -> None:
        try:
            status = http_post(self.url)
        except BenchRunError as e:
            self.error = str(e)
            return
        if status != 200:
            self.error = f"POST {self.url} answered {status}"

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(10)

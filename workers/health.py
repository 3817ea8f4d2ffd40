"""Is this worker's instance up? ``/health`` probes plus what the calls themselves saw.

vLLM answers ``/health`` with 200 when ready and 503 when its engine is dead; a refused
connection or a timeout means the server is gone. Endpoints without ``/health`` (404, as
on hosted APIs) are taken as up: only calls failing can close their gate then.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx2

logger = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_FAILURES_TO_CLOSE = 2
DEFAULT_SUCCESSES_TO_OPEN = 2


def health_url(base_url: str) -> str:
    """``http://h:p/v1`` → ``http://h:p/health`` (vLLM serves it at the root)."""
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    return f"{root}/health"


@dataclass(frozen=True)
class Probe:
    healthy: bool
    detail: str


class HealthGate:
    """A small state machine: ``failures_to_close`` bad probes close the gate,
    ``successes_to_open`` good ones open it again. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        http_client: httpx2.Client | None = None,
        timeout: float = DEFAULT_PROBE_TIMEOUT,
        failures_to_close: int = DEFAULT_FAILURES_TO_CLOSE,
        successes_to_open: int = DEFAULT_SUCCESSES_TO_OPEN,
    ) -> None:
        self.url = health_url(base_url)
        self._http = http_client or httpx2.Client(timeout=timeout)
        self.failures_to_close = failures_to_close
        self.successes_to_open = successes_to_open
        self._lock = threading.Lock()
        self._open = True
        self._bad = 0
        self._good = 0
        self.last = Probe(True, "not probed yet")
        self.changed_at = time.monotonic()

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._open

    def probe(self) -> Probe:
        """One GET of ``/health``."""
        try:
            resp = self._http.get(self.url)
        except httpx2.HTTPError as e:
            return Probe(False, f"{e.__class__.__name__}: {e}".splitlines()[0][:200])
        if resp.status_code == 404:
            return Probe(True, "no /health endpoint")
        if resp.status_code >= 500:
            return Probe(False, f"/health answered {resp.status_code}")
        return Probe(True, f"/health answered {resp.status_code}")

    def observe(self, probe: Probe) -> bool | None:
        """Feed one observation; returns the new state when the gate flips, else None."""
        with self._lock:
            self.last = probe
            if probe.healthy:
                self._good, self._bad = self._good + 1, 0
                if not self._open and self._good >= self.successes_to_open:
                    self._open = True
                    self.changed_at = time.monotonic()
                    return True
            else:
                self._bad, self._good = self._bad + 1, 0
                if self._open and self._bad >= self.failures_to_close:
                    self._open = False
                    self.changed_at = time.monotonic()
                    return False
            return None

    def step(self) -> bool | None:
        """Probe and observe; returns the new state if it changed."""
        return self.observe(self.probe())

    def report_failure(self, detail: str) -> bool | None:
        """A call to the instance failed as if it were down (refused, reset, 503)."""
        return self.observe(Probe(False, detail))

    def close(self) -> None:
        self._http.close()

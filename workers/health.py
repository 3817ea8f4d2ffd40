"""Is this worker's instance up? One rule, one gate, one record format.

* The rule is :func:`ops.endpoint.check_health`'s (``/health``, or ``/v1/models`` for
  endpoints without one; refused connections and timeouts count as down), shared with the
  vLLM scan.
* :class:`HealthGate` turns observations into an open or closed gate: its own probes and
  failed calls (:meth:`HealthGate.report_failure`) alike. Answered calls
  (:meth:`HealthGate.report_answer`) stand in for a probe while the gate is open: an
  instance that just answered a completion is up, whatever ``/health`` would add. Every
  flip, whichever path caused it, goes to the gate's listeners: the worker logs
  ``instance X is DOWN`` and stops consuming its queues there (:mod:`workers.worker_main`).
* The Redis health key (:func:`workers.keys.health_key`) is written by
  :func:`health_record` and read by :func:`read_health` / :func:`is_down`, whoever writes
  (the worker, the scan) and whoever reads (the feeder, the views).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ops.endpoint import HttpClient, HttpResponse, ProbeError, auth_headers, check_health
from ops.urls import mask_url

if TYPE_CHECKING:  # loaded by the first gate that probes: a producer feeding its first
    # window imports this module but never probes
    import httpx2

logger = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT = 2.0
DEFAULT_FAILURES_TO_CLOSE = 2
DEFAULT_SUCCESSES_TO_OPEN = 2
SOURCE_WORKER = "worker"
SOURCE_SCAN = "scan"
_DETAIL_LEN = 300


# -- the record in Redis -------------------------------------------------------------------


@dataclass(frozen=True)
class HealthReport:
    """One instance's latest health as someone reported it."""

    healthy: bool
    checked_at: float
    error: str | None = None
    source: str | None = None


def health_record(
    healthy: bool, error: str | None, *, source: str, checked_at: float | None = None
) -> str:
    """The JSON stored under the health key: ``{"healthy", "checked_at", "error", "source"}``
    (``error`` None when healthy, ``checked_at`` in epoch seconds)."""
    return json.dumps(
        {
            "healthy": bool(healthy),
            "checked_at": time.time() if checked_at is None else checked_at,
            "error": None if healthy else mask_url(error or "unhealthy")[:_DETAIL_LEN],
            "source": source,
        }
    )


def read_health(raw: bytes | str | None) -> HealthReport | None:
    """The report in a health key's value; None when there is none or it is unreadable."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("healthy"), bool):
        return None
    checked = data.get("checked_at")
    error, source = data.get("error"), data.get("source")
    return HealthReport(
        data["healthy"],
        float(checked) if isinstance(checked, int | float) else 0.0,
        error if isinstance(error, str) else None,
        source if isinstance(source, str) else None,
    )


def is_down(raw: bytes | str | None) -> bool:
    """True when a health key's value says down; no report (or an unreadable one) is not
    taken as down."""
    report = read_health(raw)
    return report is not None and not report.healthy


# -- the gate ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    healthy: bool
    detail: str


GateListener = Callable[[bool, Probe], None]
"""Called with (up, the observation that flipped the gate), in the observing thread."""


class HttpxHttp:
    """:class:`ops.endpoint.HttpClient` on a pooled ``httpx2.Client``: probing every second
    reuses one connection instead of opening (and for HTTPS, handshaking) a new one."""

    def __init__(self, client: httpx2.Client) -> None:
        import httpx2

        self.client = client
        self._errors = httpx2.HTTPError

    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> HttpResponse:
        try:
            resp = self.client.get(url, headers=dict(headers or {}))
        except self._errors as e:
            first = f"{e.__class__.__name__}: {e}".splitlines()[0][:200]
            raise ProbeError(f"{mask_url(url)}: {first}") from e
        return HttpResponse(resp.status_code, resp.text)

    def close(self) -> None:
        self.client.close()


def _pooled_http(timeout: float) -> HttpxHttp:
    import httpx2

    return HttpxHttp(httpx2.Client(timeout=timeout))


class HealthGate:
    """A small state machine: ``failures_to_close`` bad observations in a row close the
    gate, ``successes_to_open`` good ones open it again. Thread-safe.

    Observations come from :meth:`step` (a probe by the rule) and from
    :meth:`report_failure` (a call that failed as if the server were gone); listeners hear
    of every flip either way.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        http_client: HttpClient | None = None,
        timeout: float = DEFAULT_PROBE_TIMEOUT,
        failures_to_close: int = DEFAULT_FAILURES_TO_CLOSE,
        successes_to_open: int = DEFAULT_SUCCESSES_TO_OPEN,
    ) -> None:
        self.base_url = base_url
        self._headers = auth_headers(api_key)
        self._own_http = http_client is None
        self._http = http_client or _pooled_http(timeout)
        self.failures_to_close = failures_to_close
        self.successes_to_open = successes_to_open
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._flips = 0
        self._notified = 0
        self._open = True
        self._bad = 0
        self._good = 0
        self._listeners: list[GateListener] = []
        self._down_detail = ""
        self.last = Probe(True, "not probed yet")
        self.changed_at = time.monotonic()
        self._answered_at = -math.inf
        self._suspect_at = -math.inf
        self._suspicion_listeners: list[Callable[[], None]] = []

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._open

    def add_listener(self, listener: GateListener) -> None:
        """Call ``listener(up, probe)`` on every flip from now on."""
        with self._lock:
            self._listeners.append(listener)

    def probe(self) -> Probe:
        """One look by the health rule."""
        verdict = check_health(self._http, self.base_url, headers=self._headers)
        return Probe(verdict.healthy, verdict.detail)

    def observe(self, probe: Probe) -> bool | None:
        """Feed one observation; returns the new state when the gate flips, else None."""
        with self._lock:
            self.last = probe
            flipped = self._count(probe)
            if flipped is None:
                return None
            self._flips += 1
            flip = self._flips
        self._notify(flip, flipped, probe)
        return flipped

    def _notify(self, flip: int, up: bool, probe: Probe) -> None:
        # Observers run in many threads (tasks, the housekeeper): listeners hear flips one
        # at a time and never an older one after a newer, so the last word is the state.
        with self._notify_lock:
            if flip <= self._notified:
                return
            self._notified = flip
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(up, probe)
                except Exception:  # a listener's failure must not fail the call that observed
                    logger.exception("health gate listener failed")

    def _count(self, probe: Probe) -> bool | None:
        if probe.healthy:
            self._good, self._bad = self._good + 1, 0
            if not self._open and self._good >= self.successes_to_open:
                self._open = True
                self.changed_at = time.monotonic()
                return True
        else:
            self._bad, self._good = self._bad + 1, 0
            self._down_detail = probe.detail
            if self._open and self._bad >= self.failures_to_close:
                self._open = False
                self.changed_at = time.monotonic()
                return False
        return None

    def step(self) -> bool | None:
        """Probe and observe; returns the new state if it changed."""
        return self.observe(self.probe())

    def report_answer(self) -> None:
        """A call to the instance was answered (a record's result came back)."""
        self._answered_at = time.monotonic()

    def report_server_error(self) -> None:
        """A call got a 5xx. Not by itself a bad observation (one request can break a
        healthy server), but a reason to ask ``/health`` now rather than at the next tick:
        a dead vLLM engine answers every call with a 500 in milliseconds, and a worker that
        keeps its gate open meanwhile fails a whole queue's worth of records."""
        self._suspect_at = time.monotonic()
        with self._lock:
            listeners = list(self._suspicion_listeners)
        for listener in listeners:
            listener()

    def add_suspicion_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on every :meth:`report_server_error` (it should only
        schedule a probe: it runs in the thread that saw the error)."""
        with self._lock:
            self._suspicion_listeners.append(listener)

    def step_unless_answered(self, within: float) -> bool | None:
        """:meth:`step`, unless the gate is open and a call was answered in the last
        ``within`` seconds with no 5xx since: that answer is observed instead, and no probe
        is sent. A busy worker's calls are fresher evidence than a probe, and cost nothing
        more."""
        answered = self._answered_at
        if self.healthy and answered > self._suspect_at and time.monotonic() - answered < within:
            return self.observe(Probe(True, "calls answered"))
        return self.step()

    def report_failure(self, detail: str) -> bool | None:
        """A call to the instance failed as if it were down (refused, reset)."""
        return self.observe(Probe(False, detail))

    def record(self) -> str:
        """The gate's state as a health-key value (:func:`health_record`)."""
        with self._lock:
            up, why = self._open, self._down_detail
        return health_record(up, None if up else why, source=SOURCE_WORKER)

    def close(self) -> None:
        if self._own_http and isinstance(self._http, HttpxHttp):
            self._http.close()

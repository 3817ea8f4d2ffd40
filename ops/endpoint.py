"""What vfleet knows about an OpenAI-compatible endpoint's HTTP side, in one place.

- where things live: :func:`root_url` (``http://h:8000/v1`` → ``http://h:8000``),
  :func:`health_url`, :func:`models_url`, :func:`metrics_url`;
- **the health rule** (:func:`check_health`), the one verdict the worker's gate, the vLLM
  scan and everything reading the Redis health key go by:

  ========================================  =========================================
  what the endpoint did                     verdict
  ========================================  =========================================
  ``/health`` answered 2xx                  up
  ``/health`` answered 404 or 405 (hosted   ``GET /v1/models`` decides: 2xx with a
  APIs, Ollama, proxies have none)          model list is up, anything else is down
  ``/health`` answered anything else        down (vLLM answers 503 when its engine
                                            is dead)
  connection refused, reset, timed out      down
  ========================================  =========================================

- reading ``/v1/models`` (:func:`model_cards`, :func:`read_models`);
- plain HTTP GETs behind a small :class:`HttpClient` protocol: :class:`DirectHttp`, or
  :class:`ChannelHttp` over an SSH channel for servers on a remote host's loopback.

Every message that names a URL masks its credentials (:func:`ops.urls.mask_url`).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ops.errors import OpsError
from ops.urls import mask_url

DEFAULT_HTTP_TIMEOUT = 5.0
MAX_BODY = 8 * 1024 * 1024
# /health answers that mean "no such endpoint here", not "the server is unwell".
NO_HEALTH_ENDPOINT = frozenset({404, 405})


class ProbeError(OpsError):
    """An HTTP request to a server failed (connect, timeout, SSH channel, bad answer)."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError as e:
            raise ProbeError(f"answer is not JSON: {self.text[:80]!r}") from e


class HttpClient(Protocol):
    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """``GET url``. Raises :class:`ProbeError` when no HTTP answer came back."""
        ...


# -- where things live ---------------------------------------------------------------------


def root_url(base_url: str) -> str:
    """``http://h:8000/v1`` → ``http://h:8000`` (where ``/health`` and ``/metrics`` live)."""
    return base_url.rstrip("/").removesuffix("/v1")


def health_url(base_url: str) -> str:
    return f"{root_url(base_url)}/health"


def metrics_url(base_url: str) -> str:
    return f"{root_url(base_url)}/metrics"


def models_url(base_url: str) -> str:
    """``/models`` under the OpenAI base URL (``http://h:8000/v1/models``)."""
    return f"{base_url.rstrip('/')}/models"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


# -- /v1/models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    id: str
    max_model_len: int | None = None


def model_cards(resp: HttpResponse) -> list[ModelCard]:
    """The models a ``/v1/models`` answer lists. Raises :class:`ProbeError` when it is not
    a 2xx answer shaped like OpenAI's (``{"data": [{"id": ...}, ...]}``)."""
    if not resp.ok:
        raise ProbeError(f"/v1/models answered {resp.status}")
    data = resp.json()
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProbeError("/v1/models is not an OpenAI model list")
    cards = []
    for item in items:
        if isinstance(item, dict) and item.get("id"):
            length = item.get("max_model_len")
            if not isinstance(length, int | float) or isinstance(length, bool):
                length = None
            cards.append(ModelCard(str(item["id"]), None if length is None else int(length)))
    return cards


def read_models(resp: HttpResponse) -> tuple[str | None, int | None]:
    """(first model id, its max_model_len) from a ``/v1/models`` answer.

    Raises :class:`ProbeError` when it is not an OpenAI model list or lists no model.
    """
    cards = model_cards(resp)
    if not cards:
        raise ProbeError("/v1/models lists no model")
    return cards[0].id, cards[0].max_model_len


# -- the health rule -----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Up or down, with why. ``answered``: the server gave an HTTP answer at all (a down
    server that answers, like vLLM's 503, still has metrics to read); ``models`` is the
    ``/v1/models`` answer when the rule asked for it."""

    healthy: bool
    detail: str
    answered: bool = True
    models: HttpResponse | None = None


def check_health(
    http: HttpClient, base_url: str, *, headers: Mapping[str, str] | None = None
) -> Verdict:
    """Apply the health rule (see the module docstring) to the endpoint at ``base_url``.

    Never raises for a server problem: no answer is a down verdict.
    """
    try:
        health = http.get(health_url(base_url), headers=headers)
    except ProbeError as e:
        return Verdict(False, str(e), answered=False)
    if health.status not in NO_HEALTH_ENDPOINT:
        return Verdict(health.ok, f"/health answered {health.status}")
    try:
        models = http.get(models_url(base_url), headers=headers)
    except ProbeError as e:
        return Verdict(False, f"no /health; {e}", answered=False)
    try:
        model_cards(models)
    except ProbeError as e:
        return Verdict(False, f"no /health; {e}", models=models)
    return Verdict(True, f"no /health; /v1/models answered {models.status}", models=models)


# -- HTTP clients --------------------------------------------------------------------------


class DirectHttp:
    """Plain HTTP(S) GETs with one timeout for connect and each read."""

    def __init__(self, *, timeout: float = DEFAULT_HTTP_TIMEOUT) -> None:
        self.timeout = timeout

    def connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """``GET url``. Raises :class:`ProbeError` when no HTTP answer came back."""
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ProbeError(f"{mask_url(url)}: bad port") from e
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn = self.connection(parts.scheme, parts.hostname or "localhost", port)
            try:
                conn.request("GET", path, headers=dict(headers or {}))
                resp = conn.getresponse()
                body = resp.read(MAX_BODY)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, OpsError) as e:
            # An SSH channel's error names its host already: keep only why.
            reason = (e.strerror if isinstance(e, OSError) else None) or str(
                getattr(e, "reason", None) or e
            )
            raise ProbeError(f"{mask_url(url)}: {reason or e.__class__.__name__}") from e
        return HttpResponse(resp.status, body.decode("utf-8", errors="replace"))


class _ChannelConnection(http.client.HTTPConnection):
    def __init__(
        self, host: str, port: int, opener: Callable[[str, int], Any], timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._opener = opener

    def connect(self) -> None:
        sock = self._opener(self.host, self.port)
        sock.settimeout(self.timeout)
        self.sock = sock


class ChannelHttp(DirectHttp):
    """HTTP over a socket-like channel ``opener(host, port)`` returns (an SSH direct-tcpip
    channel, so ``host`` is as seen from the SSH server). Plain HTTP only."""

    def __init__(
        self, opener: Callable[[str, int], Any], *, timeout: float = DEFAULT_HTTP_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        self.opener = opener

    def connection(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        if scheme != "http":
            raise ProbeError(f"{scheme}:// cannot go through an SSH channel here")
        return _ChannelConnection(host, port, self.opener, self.timeout)

"""Probe a vLLM (or any OpenAI-compatible) server: ``/health``, ``/v1/models``, ``/metrics``.

Metric names differ between vLLM's engines and both are read:

=====================  ===================================  ==============================
reading                V1 (vLLM >= 0.8, label ``engine``)   V0
=====================  ===================================  ==============================
KV cache in use (0-1)  ``vllm:kv_cache_usage_perc``         ``vllm:gpu_cache_usage_perc``
running / waiting      ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` (both)
swapped                —                                    ``vllm:num_requests_swapped``
prefix cache           ``vllm:prefix_cache_queries/hits``   ``vllm:gpu_prefix_cache_hit_rate``
tokens (counters)      ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` (both)
=====================  ===================================  ==============================

Several engines (data parallel) are summed; their KV cache usage is averaged. HTTP goes
through an injected :class:`HttpClient`: :class:`DirectHttp`, or :class:`ChannelHttp` over
an SSH channel for servers that listen only on a remote host's loopback.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from ops.errors import OpsError

DEFAULT_HTTP_TIMEOUT = 5.0
MAX_BODY = 8 * 1024 * 1024

_SUMS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_swapped": "swapped",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits_total",
}
_KV = {"vllm:kv_cache_usage_perc": "v1", "vllm:gpu_cache_usage_perc": "v0"}
_V0_PREFIX_RATE = "vllm:gpu_prefix_cache_hit_rate"


class ProbeError(OpsError):
    """An HTTP request to a server failed (connect, timeout, SSH channel, bad answer)."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError as e:
            raise ProbeError(f"answer is not JSON: {self.text[:80]!r}") from e


class HttpClient(Protocol):
    def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> HttpResponse: ...


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
        port = parts.port or (443 if parts.scheme == "https" else 80)
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
            raise ProbeError(f"GET {url}: {e or e.__class__.__name__}") from e
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


@dataclass(frozen=True)
class VllmMetrics:
    """What ``/metrics`` said; None where the server does not export a reading."""

    version: str | None = None
    running: float | None = None
    waiting: float | None = None
    swapped: float | None = None
    kv_cache_usage: float | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    prefix_cache_queries_total: float | None = None
    prefix_cache_hits_total: float | None = None
    prefix_cache_hit_rate: float | None = None
    engines: int = 0


def parse_metrics(text: str) -> VllmMetrics:
    """Read vLLM's Prometheus text. Raises :class:`ProbeError` when it is not Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    kv: list[float] = []
    engines: set[str] = set()
    version: str | None = None
    rate: float | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, value, labels = sample.name, float(sample.value), sample.labels
                if "engine" in labels:
                    engines.add(labels["engine"])
                if name in _SUMS:
                    sums[_SUMS[name]] = sums.get(_SUMS[name], 0.0) + value
                elif name in _KV:
                    kv.append(value)
                    version = _KV[name]
                elif name == _V0_PREFIX_RATE:
                    rate = value
    except (ValueError, TypeError, IndexError) as e:
        raise ProbeError(f"metrics are not Prometheus text: {e}") from e
    queries, hits = sums.get("prefix_cache_queries_total"), sums.get("prefix_cache_hits_total")
    if queries and hits is not None:
        rate = hits / queries
    return VllmMetrics(
        version=version,
        kv_cache_usage=sum(kv) / len(kv) if kv else None,
        prefix_cache_hit_rate=rate,
        engines=len(engines) or (1 if sums or kv else 0),
        **sums,
    )


@dataclass(frozen=True)
class VllmProbe:
    """One look at one server."""

    healthy: bool
    error: str | None = None
    model: str | None = None
    max_model_len: int | None = None
    metrics: VllmMetrics | None = None


def root_url(base_url: str) -> str:
    """``http://h:8000/v1`` → ``http://h:8000`` (where ``/health`` and ``/metrics`` live)."""
    return base_url.rstrip("/").removesuffix("/v1")


def read_models(resp: HttpResponse) -> tuple[str | None, int | None]:
    """(first model id, its max_model_len) from a ``/v1/models`` answer."""
    if resp.status != 200:
        raise ProbeError(f"/v1/models answered {resp.status}")
    data = resp.json()
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise ProbeError("/v1/models lists no model")
    first = models[0]
    max_len = first.get("max_model_len")
    return (str(first.get("id")) if first.get("id") else None), (
        int(max_len) if isinstance(max_len, int | float) else None
    )


def probe(base_url: str, *, http_client: HttpClient, api_key: str | None = None) -> VllmProbe:
    """Health, model and metrics of the server at ``base_url`` (an OpenAI base URL).

    Never raises for a server problem: an unreachable or unhealthy server comes back with
    ``healthy=False`` and ``error`` set.
    """
    root = root_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        health = http_client.get(f"{root}/health", headers=headers)
    except ProbeError as e:
        return VllmProbe(healthy=False, error=str(e))
    healthy = health.status == 200
    errors = [] if healthy else [f"/health answered {health.status}"]
    model = max_len = metrics = None
    try:
        model, max_len = read_models(
            http_client.get(f"{base_url.rstrip('/')}/models", headers=headers)
        )
    except ProbeError as e:
        errors.append(f"models: {e}")
    try:
        resp = http_client.get(f"{root}/metrics", headers=headers)
        if resp.status == 200:
            metrics = parse_metrics(resp.text)
    except ProbeError as e:
        errors.append(f"metrics: {e}")
    return VllmProbe(healthy, "; ".join(errors) or None, model, max_len, metrics)


def rate(current: float | None, previous: float | None, seconds: float) -> float | None:
    """Per-second rate of a counter between two readings; None if unknown or reset."""
    if current is None or previous is None or seconds <= 0 or current < previous:
        return None
    return (current - previous) / seconds

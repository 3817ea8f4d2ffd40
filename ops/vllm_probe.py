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
through an injected :class:`ops.endpoint.HttpClient` (direct, or over an SSH channel for
servers that listen only on a remote host's loopback); what is healthy is
:func:`ops.endpoint.check_health`'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.endpoint import (
    HttpClient,
    ProbeError,
    auth_headers,
    check_health,
    metrics_url,
    models_url,
    read_models,
)

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


def probe(base_url: str, *, http_client: HttpClient, api_key: str | None = None) -> VllmProbe:
    """Health (by :func:`ops.endpoint.check_health`), model and metrics of the server at
    ``base_url`` (an OpenAI base URL).

    Never raises for a server problem: an unreachable or unhealthy server comes back with
    ``healthy=False`` and ``error`` set.
    """
    headers = auth_headers(api_key)
    verdict = check_health(http_client, base_url, headers=headers)
    if not verdict.answered:
        return VllmProbe(healthy=False, error=verdict.detail)
    errors = [] if verdict.healthy else [verdict.detail]
    model = max_len = metrics = None
    try:
        models = verdict.models or http_client.get(models_url(base_url), headers=headers)
        model, max_len = read_models(models)
    except ProbeError as e:
        if verdict.models is None:  # else the verdict's detail says it already
            errors.append(f"models: {e}")
    try:
        resp = http_client.get(metrics_url(base_url), headers=headers)
        if resp.ok:
            metrics = parse_metrics(resp.text)
    except ProbeError as e:
        errors.append(f"metrics: {e}")
    return VllmProbe(verdict.healthy, "; ".join(errors) or None, model, max_len, metrics)


def rate(current: float | None, previous: float | None, seconds: float) -> float | None:
    """Per-second rate of a counter between two readings; None if unknown or reset."""
    if current is None or previous is None or seconds <= 0 or current < previous:
        return None
    return (current - previous) / seconds

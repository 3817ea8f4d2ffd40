"""Prometheus metrics under vLLM's names, V1 (default) or V0 (``--metrics-version v0``).

V1 (vLLM >= 0.8): labels ``model_name`` and ``engine="0"``; ``vllm:kv_cache_usage_perc``,
prefix-cache query/hit counters. V0: label ``model_name`` only; ``vllm:gpu_cache_usage_perc``,
``vllm:cpu_cache_usage_perc``, ``vllm:num_requests_swapped``. Both: running and waiting gauges,
prompt and generation token counters, ``vllm:request_success_total{finished_reason}``,
``vllm:num_preemptions_total`` (always 0: the simulator never preempts) and the time to first
token, end-to-end latency and queue time histograms. Each instance owns its registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ops.sim.config import MetricsVersion

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISH_REASONS = ("stop", "length", "abort")
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass(frozen=True)
class RequestRecord:
    """What one finished (or aborted) request adds to the metrics."""

    prompt_tokens: int
    generation_tokens: int
    finish_reason: str
    queue_time: float
    ttft: float | None
    e2e: float
    prefix_queries: int = 0
    prefix_hits: int = 0


@dataclass(frozen=True)
class EngineGauges:
    """Live readings the gauges call at scrape time."""

    running: Callable[[], float]
    waiting: Callable[[], float]
    kv_cache_usage: Callable[[], float]


_KV_DOC = "KV-cache usage. 1 means 100 percent usage."


class SimMetrics:
    """One instance's Prometheus registry."""

    def __init__(self, *, model: str, version: MetricsVersion, gauges: EngineGauges) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._labels = {"model_name": model}
        if version == "v1":
            self._labels["engine"] = "0"
        self._add_gauges(version, gauges)
        self._prefix_queries: Counter | None = None
        self._prefix_hits: Counter | None = None
        if version == "v1":
            self._prefix_queries = self._counter(
                "vllm:prefix_cache_queries", "Prefix cache queries, in terms of queried tokens."
            )
            self._prefix_hits = self._counter(
                "vllm:prefix_cache_hits", "Prefix cache hits, in terms of cached tokens."
            )
        self._preemptions = self._counter(
            "vllm:num_preemptions", "Cumulative number of preemptions."
        )
        self._prompt_tokens = self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        )
        self._generation_tokens = self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*self._labels, "finished_reason"),
            registry=self.registry,
        )
        self._success = {
            reason: success.labels(**self._labels, finished_reason=reason)
            for reason in FINISH_REASONS
        }
        self._ttft = self._histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self._e2e = self._histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            LATENCY_BUCKETS,
        )
        self._queue = self._histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            LATENCY_BUCKETS,
        )

    def _add_gauges(self, version: MetricsVersion, gauges: EngineGauges) -> None:
        def zero() -> float:
            return 0.0

        table: list[tuple[str, str, Callable[[], float]]] = [
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             gauges.running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             gauges.waiting),
        ]  # fmt: skip
        if version == "v0":
            table += [
                ("vllm:num_requests_swapped", "Number of requests swapped to CPU.", zero),
                ("vllm:gpu_cache_usage_perc", "GPU " + _KV_DOC, gauges.kv_cache_usage),
                ("vllm:cpu_cache_usage_perc", "CPU " + _KV_DOC, zero),
            ]
        else:
            table.append(("vllm:kv_cache_usage_perc", _KV_DOC, gauges.kv_cache_usage))
        for name, doc, read in table:
            family = Gauge(name, doc, tuple(self._labels), registry=self.registry)
            family.labels(**self._labels).set_function(read)

    def _counter(self, name: str, doc: str) -> Counter:
        family = Counter(name, doc, tuple(self._labels), registry=self.registry)
        return family.labels(**self._labels)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        family = Histogram(name, doc, tuple(self._labels), registry=self.registry, buckets=buckets)
        return family.labels(**self._labels)

    def record(self, record: RequestRecord) -> None:
        """Count one request that left the engine."""
        self._prompt_tokens.inc(record.prompt_tokens)
        self._generation_tokens.inc(record.generation_tokens)
        self._success[record.finish_reason].inc()
        self._queue.observe(record.queue_time)
        self._e2e.observe(record.e2e)
        if record.ttft is not None:
            self._ttft.observe(record.ttft)
        if self._prefix_queries is not None and self._prefix_hits is not None:
            self._prefix_queries.inc(record.prefix_queries)
            self._prefix_hits.inc(record.prefix_hits)

    def render(self) -> bytes:
        """The Prometheus text exposition of this instance's registry."""
        return generate_latest(self.registry)

"""Prometheus metrics read from the SQL ledger at scrape time.

:class:`LedgerCollector` runs a handful of aggregate queries per scrape (no state kept
between scrapes, so any number of exporters agree):

* batch progress: records per batch and status, batch totals;
* per instance: records per status, records finished in the last minute, latency
  (a histogram and the mean of the records it finished in the last ``latency_window``);
* per GPU: the latest ``gpu_snapshots`` row (utilisation, memory, temperature, power, idle);
* per vLLM instance: the latest ``vllm_snapshots`` row (health, running, waiting, KV cache,
  token rates).

Snapshots older than ``snapshot_max_age`` are left out: a host that stopped being scanned
disappears instead of showing its last values forever. When the database cannot be read,
``vfleet_exporter_up`` is 0 and the scrape still answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from workers.store.models import (
    FINAL_STATUSES,
    Batch,
    GpuSnapshot,
    Record,
    Status,
    VllmSnapshot,
    utcnow,
)

logger = logging.getLogger(__name__)

DEFAULT_LATENCY_WINDOW = timedelta(minutes=15)
DEFAULT_SNAPSHOT_MAX_AGE = timedelta(minutes=30)
THROUGHPUT_WINDOW = timedelta(minutes=1)
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MIB = 1024 * 1024
PREFIX = "vfleet"


class LedgerCollector(Collector):
    """A custom collector: every ``collect()`` reads the ledger afresh."""

    def __init__(
        self,
        engine: Engine,
        *,
        latency_window: timedelta = DEFAULT_LATENCY_WINDOW,
        snapshot_max_age: timedelta = DEFAULT_SNAPSHOT_MAX_AGE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.latency_window = latency_window
        self.snapshot_max_age = snapshot_max_age
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        up = GaugeMetricFamily(f"{PREFIX}_exporter_up", "1 when the ledger could be read.")
        try:
            metrics = [
                *self._batches(),
                *self._instances(now),
                *self._latency(now),
                *self._gpus(now),
                *self._vllm(now),
            ]
        except SQLAlchemyError as e:
            logger.warning("cannot read the ledger: %s", str(e).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    # -- records -----------------------------------------------------------------------

    def _batches(self) -> list[Metric]:
        records = GaugeMetricFamily(
            f"{PREFIX}_batch_records", "Records of a batch per status.", labels=["batch", "status"]
        )
        total = GaugeMetricFamily(
            f"{PREFIX}_batch_records_total_count", "Records in a batch.", labels=["batch"]
        )
        q = (
            select(Batch.name, Record.status, func.count())
            .join(Record, Record.batch_id == Batch.id)
            .group_by(Batch.name, Record.status)
        )
        per_batch: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for name in conn.scalars(select(Batch.name)):
                per_batch[name] = {s.value: 0 for s in Status}
            for name, status, n in conn.execute(q):
                per_batch.setdefault(name, {})[status] = int(n)
        for name, counts in per_batch.items():
            for status, n in counts.items():
                records.add_metric([name, status], n)
            total.add_metric([name], sum(counts.values()))
        return [records, total]

    def _instances(self, now: datetime) -> list[Metric]:
        records = GaugeMetricFamily(
            f"{PREFIX}_instance_records",
            "Records last handled by an instance, per status.",
            labels=["instance", "status"],
        )
        finished = CounterMetricFamily(
            f"{PREFIX}_instance_records_finished",
            "Records an instance brought to a final status (succeeded, failed).",
            labels=["instance", "status"],
        )
        last_minute = GaugeMetricFamily(
            f"{PREFIX}_instance_records_finished_last_minute",
            "Records an instance finished in the last minute.",
            labels=["instance"],
        )
        by_status = (
            select(Record.instance, Record.status, func.count())
            .where(Record.instance.is_not(None))
            .group_by(Record.instance, Record.status)
        )
        recent = (
            select(Record.instance, func.count())
            .where(Record.instance.is_not(None), Record.finished_at >= now - THROUGHPUT_WINDOW)
            .group_by(Record.instance)
        )
        final = {s.value for s in FINAL_STATUSES if s is not Status.CANCELLED}
        with self.engine.connect() as conn:
            instances: set[str] = set()
            for inst, status, n in conn.execute(by_status):
                instances.add(str(inst))
                records.add_metric([str(inst), status], int(n))
                if status in final:
                    finished.add_metric([str(inst), status], int(n))
            recent_counts = {str(inst): int(n) for inst, n in conn.execute(recent)}
        for inst in sorted(instances | set(recent_counts)):
            last_minute.add_metric([inst], recent_counts.get(inst, 0))
        return [records, finished, last_minute]

    def _latency(self, now: datetime) -> list[Metric]:
        hist = HistogramMetricFamily(
            f"{PREFIX}_instance_latency_seconds",
            "Latency of the records an instance answered in the latency window.",
            labels=["instance"],
        )
        mean = GaugeMetricFamily(
            f"{PREFIX}_instance_latency_avg_seconds",
            "Mean latency of the records an instance answered in the latency window.",
            labels=["instance"],
        )
        buckets = [
            func.sum(case((Record.latency_ms <= b * 1000, 1), else_=0)) for b in LATENCY_BUCKETS_S
        ]
        q = (
            select(Record.instance, func.count(), func.sum(Record.latency_ms), *buckets)
            .where(
                Record.instance.is_not(None),
                Record.latency_ms.is_not(None),
                Record.finished_at >= now - self.latency_window,
            )
            .group_by(Record.instance)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        for inst, n, total_ms, *cumulative in rows:
            le = [
                (_le(b), float(c or 0)) for b, c in zip(LATENCY_BUCKETS_S, cumulative, strict=True)
            ]
            le.append(("+Inf", float(n)))
            hist.add_metric([str(inst)], le, float(total_ms or 0) / 1000)
            mean.add_metric([str(inst)], float(total_ms or 0) / 1000 / max(int(n), 1))
        return [hist, mean]

    # -- snapshots ---------------------------------------------------------------------

    def _gpus(self, now: datetime) -> list[Metric]:
        labels = ["host", "gpu", "name"]
        families = {
            "utilization_gpu": _gauge(
                "gpu_utilization_percent", "GPU utilisation (0-100).", labels
            ),
            "utilization_memory": _gauge(
                "gpu_memory_utilization_percent", "Memory controller utilisation (0-100).", labels
            ),
            "memory_used_mib": _gauge("gpu_memory_used_bytes", "GPU memory in use.", labels),
            "memory_total_mib": _gauge("gpu_memory_total_bytes", "GPU memory in all.", labels),
            "temperature_c": _gauge("gpu_temperature_celsius", "GPU temperature.", labels),
            "power_draw_w": _gauge("gpu_power_draw_watts", "GPU power draw.", labels),
            "idle": _gauge("gpu_idle", "1 when the scan judged the GPU idle.", labels),
            "age": _gauge("gpu_snapshot_age_seconds", "Age of the latest GPU snapshot.", labels),
        }
        for snap in self._latest(GpuSnapshot, (GpuSnapshot.host, GpuSnapshot.gpu_index), now):
            key = [
                snap.host,
                "" if snap.gpu_index is None else str(snap.gpu_index),
                snap.name or "",
            ]
            values = {
                "utilization_gpu": snap.utilization_gpu,
                "utilization_memory": snap.utilization_memory,
                "memory_used_mib": _bytes(snap.memory_used_mib),
                "memory_total_mib": _bytes(snap.memory_total_mib),
                "temperature_c": snap.temperature_c,
                "power_draw_w": snap.power_draw_w,
                "idle": None if snap.idle is None else float(snap.idle),
                "age": (now - snap.taken_at).total_seconds(),
            }
            _add(families, key, values)
        return list(families.values())

    def _vllm(self, now: datetime) -> list[Metric]:
        labels = ["instance", "model"]
        families = {
            "healthy": _gauge("vllm_healthy", "1 when the instance is up (health rule).", labels),
            "running": _gauge("vllm_requests_running", "Requests the engine runs.", labels),
            "waiting": _gauge("vllm_requests_waiting", "Requests waiting for a slot.", labels),
            "kv_cache_usage": _gauge("vllm_kv_cache_usage_ratio", "KV cache in use (0-1).", labels),
            "prompt_tokens_per_s": _gauge(
                "vllm_prompt_tokens_per_second", "Prompt tokens per second.", labels
            ),
            "generation_tokens_per_s": _gauge(
                "vllm_generation_tokens_per_second", "Generated tokens per second.", labels
            ),
            "age": _gauge("vllm_snapshot_age_seconds", "Age of the latest snapshot.", labels),
        }
        for snap in self._latest(VllmSnapshot, (VllmSnapshot.instance,), now):
            values = {
                "healthy": float(snap.healthy),
                "running": snap.running,
                "waiting": snap.waiting,
                "kv_cache_usage": snap.kv_cache_usage,
                "prompt_tokens_per_s": snap.prompt_tokens_per_s,
                "generation_tokens_per_s": snap.generation_tokens_per_s,
                "age": (now - snap.taken_at).total_seconds(),
            }
            _add(families, [snap.instance, snap.model or ""], values)
        return list(families.values())

    def _latest(self, model: Any, keys: tuple[Any, ...], now: datetime) -> list[Any]:
        """The newest row per ``keys`` among rows younger than ``snapshot_max_age``."""
        since = now - self.snapshot_max_age
        newest = (
            select(*keys, func.max(model.taken_at).label("taken_at"))
            .where(model.taken_at >= since)
            .group_by(*keys)
            .subquery()
        )
        on = [model.taken_at == newest.c.taken_at]
        on += [k == newest.c[k.key] for k in keys]
        q = select(model).join(newest, and_(*on)).order_by(*keys, model.id.desc())
        with Session(self.engine) as s:
            rows = list(s.scalars(q))
        seen: set[tuple[Any, ...]] = set()
        latest = []
        for row in rows:  # two rows with the same taken_at: keep the later id
            ident = tuple(getattr(row, k.key) for k in keys)
            if ident not in seen:
                seen.add(ident)
                latest.append(row)
        return latest


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _add(families: dict[str, GaugeMetricFamily], key: list[str], values: dict[str, Any]) -> None:
    for field, value in values.items():
        if value is not None:
            families[field].add_metric(key, float(value))


def _bytes(mib: float | None) -> float | None:
    return None if mib is None else mib * MIB


def _le(bound: float) -> str:
    # The client library's spelling of bucket bounds: "0.25", "1.0", "300.0".
    return repr(float(bound))


def registry_for(collector: Collector) -> CollectorRegistry:
    """A registry holding only ``collector`` (no process metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve(
    collector: Collector, *, port: int, address: str, stop: threading.Event | None = None
) -> None:
    """Serve ``/metrics`` on ``address:port`` until ``stop`` is set (or forever).

    Raises :class:`OSError` when the port cannot be bound.
    """
    server, thread = start_http_server(port, addr=address, registry=registry_for(collector))
    logger.info("serving metrics on http://%s:%s/metrics", address, port)
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

"""``vfleet exporter``: /metrics read from the ledger at scrape time, scraped over HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx2
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from ops.redis_server import RedisServer, free_port
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from tests.records import add_records
from tests.services import ROOT, wait_for
from workers.exporter import LedgerCollector, registry_for
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.models import GpuSnapshot, VllmSnapshot, utcnow
from workers.store.values import Outcome

pytestmark = pytest.mark.timeout(240)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as ``{(name, labels): value}``."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def fill(ledger: Ledger) -> None:
    """Batch ``b1`` of 6 records: 3 succeeded on gpu1-8001, 1 failed on gpu1-8002, 2 queued;
    GPU and vLLM snapshots, each with an older row the exporter must not show."""
    info, _ = ledger.create_batch(
        name="b1", spec_name="judge", spec={"t": 1}, model="m", route="shared"
    )
    add_records(ledger, info.id, [(f"k{i}", i, {"i": i}) for i in range(6)])
    ledger.set_total(info.id)
    ids = ledger.unpublished(info.id, limit=10)
    for rid, latency in zip(ids[:3], (200.0, 800.0, 3000.0), strict=True):
        claim = ledger.claim(rid, worker="w", instance="gpu1-8001", task_id="t", lease_seconds=60)
        assert claim is not None
        ledger.succeed(claim, Outcome("ok", None, 10, 5, latency))
    claim = ledger.claim(ids[3], worker="w", instance="gpu1-8002", task_id="t", lease_seconds=60)
    assert claim is not None
    ledger.fail(claim, kind="bad_request", message="nope")
    now = utcnow()
    with Session(ledger.engine) as s, s.begin():
        for age, util in ((120, 10.0), (5, 87.5)):
            s.add(
                GpuSnapshot(
                    taken_at=now - timedelta(seconds=age),
                    host="gpu1",
                    gpu_index=0,
                    name="A100",
                    utilization_gpu=util,
                    memory_total_mib=81920,
                    memory_used_mib=40960,
                    temperature_c=61,
                    power_draw_w=250,
                    idle=False,
                )
            )
        # Hours old: that host is no longer scanned and must not show up.
        s.add(GpuSnapshot(taken_at=now - timedelta(hours=5), host="gone", gpu_index=0))
        for age, running in ((60, 1.0), (2, 12.0)):
            s.add(
                VllmSnapshot(
                    taken_at=now - timedelta(seconds=age),
                    instance="gpu1-8001",
                    base_url="http://gpu1:8001/v1",
                    healthy=True,
                    model="m",
                    running=running,
                    waiting=3,
                    kv_cache_usage=0.42,
                    generation_tokens_per_s=950.0,
                )
            )
        s.add(
            VllmSnapshot(
                taken_at=now, instance="gpu1-8002", base_url="http://gpu1:8002/v1", healthy=False
            )
        )


def collect(ledger: Ledger) -> Samples:
    return parse(generate_latest(registry_for(LedgerCollector(ledger.engine))).decode())


def test_batch_progress_per_status(ledger: Ledger) -> None:
    fill(ledger)
    samples = collect(ledger)
    assert value(samples, "vfleet_exporter_up") == 1
    assert value(samples, "vfleet_batch_records", batch="b1", status="succeeded") == 3
    assert value(samples, "vfleet_batch_records", batch="b1", status="failed") == 1
    assert value(samples, "vfleet_batch_records", batch="b1", status="queued") == 2
    assert value(samples, "vfleet_batch_records", batch="b1", status="running") == 0
    assert value(samples, "vfleet_batch_records_total_count", batch="b1") == 6


def test_per_instance_throughput_and_latency(ledger: Ledger) -> None:
    fill(ledger)
    samples = collect(ledger)
    finished = "vfleet_instance_records_finished_total"
    assert value(samples, finished, instance="gpu1-8001", status="succeeded") == 3
    assert value(samples, finished, instance="gpu1-8002", status="failed") == 1
    last_minute = "vfleet_instance_records_finished_last_minute"
    assert value(samples, last_minute, instance="gpu1-8001") == 3
    assert value(samples, last_minute, instance="gpu1-8002") == 1
    bucket = "vfleet_instance_latency_seconds_bucket"
    assert value(samples, bucket, instance="gpu1-8001", le="0.25") == 1
    assert value(samples, bucket, instance="gpu1-8001", le="1.0") == 2
    assert value(samples, bucket, instance="gpu1-8001", le="5.0") == 3
    assert value(samples, bucket, instance="gpu1-8001", le="+Inf") == 3
    assert value(samples, "vfleet_instance_latency_seconds_count", instance="gpu1-8001") == 3
    assert value(samples, "vfleet_instance_latency_seconds_sum", instance="gpu1-8001") == 4.0
    avg = value(samples, "vfleet_instance_latency_avg_seconds", instance="gpu1-8001")
    assert avg == pytest.approx(4.0 / 3)


def test_latest_gpu_and_vllm_snapshots_only(ledger: Ledger) -> None:
    fill(ledger)
    samples = collect(ledger)
    gpu = {"host": "gpu1", "gpu": "0", "name": "A100"}
    assert value(samples, "vfleet_gpu_utilization_percent", **gpu) == 87.5
    assert value(samples, "vfleet_gpu_memory_used_bytes", **gpu) == 40960 * 1024 * 1024
    assert value(samples, "vfleet_gpu_memory_total_bytes", **gpu) == 81920 * 1024 * 1024
    assert value(samples, "vfleet_gpu_idle", **gpu) == 0
    assert 0 <= value(samples, "vfleet_gpu_snapshot_age_seconds", **gpu) < 60
    assert not any(dict(labels).get("host") == "gone" for _, labels in samples)
    vllm = {"instance": "gpu1-8001", "model": "m"}
    assert value(samples, "vfleet_vllm_requests_running", **vllm) == 12
    assert value(samples, "vfleet_vllm_requests_waiting", **vllm) == 3
    assert value(samples, "vfleet_vllm_kv_cache_usage_ratio", **vllm) == 0.42
    assert value(samples, "vfleet_vllm_generation_tokens_per_second", **vllm) == 950
    assert value(samples, "vfleet_vllm_healthy", **vllm) == 1
    assert value(samples, "vfleet_vllm_healthy", instance="gpu1-8002", model="") == 0


def test_empty_ledger_exports_only_up(ledger: Ledger) -> None:
    samples = collect(ledger)
    assert names(samples) == {"vfleet_exporter_up"}
    assert value(samples, "vfleet_exporter_up") == 1


def test_unreadable_ledger_reports_down_and_still_answers(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")
    samples = parse(generate_latest(registry_for(LedgerCollector(engine))).decode())
    engine.dispose()
    assert samples == {("vfleet_exporter_up", frozenset()): 0}


# -- over HTTP, after a real batch -----------------------------------------------------


def start_exporter(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "exporter", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx2.get(url, timeout=5).status_code == 200
        except httpx2.HTTPError:
            return False

    wait_for(answers, timeout=60, what="the exporter")
    return proc, url


@pytest.mark.slow
def test_scrape_after_a_real_batch(redis_server: RedisServer, tmp_path: Path) -> None:
    broker = redis_server.url.rsplit("/", 1)[0] + "/4"
    with Pipeline(tmp_path, broker, instances=2) as p:
        src = write_jsonl(tmp_path / "in.jsonl", judge_rows(40))
        res = p.cli("enqueue", str(src), "--batch", "scraped", "--key", "id")
        assert res.returncode == 0, res.stderr
        p.wait_done("scraped", 40)
        proc, url = start_exporter(p.env, tmp_path / "exporter.log")
        try:
            samples = parse(httpx2.get(url, timeout=10).text)
        finally:
            proc.terminate()
            proc.wait(15)
    assert value(samples, "vfleet_batch_records", batch="scraped", status="succeeded") == 40
    finished = "vfleet_instance_records_finished_total"
    per_instance = {
        name: value(samples, finished, instance=name, status="succeeded")
        for name in ("sim-1", "sim-2")
    }
    assert sum(per_instance.values()) == 40 and all(n > 0 for n in per_instance.values())
    recent = sum(
        value(samples, "vfleet_instance_records_finished_last_minute", instance=n)
        for n in ("sim-1", "sim-2")
    )
    assert recent == 40
    count = sum(
        value(samples, "vfleet_instance_latency_seconds_count", instance=n)
        for n in ("sim-1", "sim-2")
    )
    assert count == 40
    assert value(samples, "vfleet_instance_latency_avg_seconds", instance="sim-1") > 0
    assert proc.returncode is not None

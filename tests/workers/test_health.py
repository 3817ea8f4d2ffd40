"""One health verdict per instance: the worker's gate and the vLLM scan apply one rule and
write one record; every flip of a gate, whichever path caused it, stops or restarts the
worker's consumers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from ops.endpoint import DirectHttp
from ops.redis_server import RedisServer
from tests.hosted import HostedApi
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from tests.services import wait_for
from workers.celery_app import create_app
from workers.health import (
    SOURCE_SCAN,
    SOURCE_WORKER,
    HealthGate,
    Probe,
    health_record,
    is_down,
    read_health,
)
from workers.keys import health_key
from workers.scan.vllm import ProbeTarget, scan_vllm
from workers.store.engine import make_engine
from workers.store.migrate import ensure_schema

KEY = "k-hosted-1"
# A database of its own: other module-scoped pipelines of the session use others.
REDIS_DB = 9


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    eng = make_engine(sqlite_url)
    ensure_schema(eng)
    yield eng
    eng.dispose()


def test_record_format_round_trips_and_masks_credentials() -> None:
    down = health_record(False, "GET http://u:pw@h/health: refused", source=SOURCE_SCAN)
    report = read_health(down)
    assert report is not None and not report.healthy and report.source == SOURCE_SCAN
    assert report.error == "GET http://u:***@h/health: refused"
    assert is_down(down) and not is_down(health_record(True, "ignored", source=SOURCE_WORKER))
    assert read_health(health_record(True, "x", source=SOURCE_WORKER)).error is None  # type: ignore[union-attr]
    # No report, or one nobody can read, is not "down".
    for raw in (None, b"", b"not json", b'{"healthy": "yes"}', b"[1]"):
        assert read_health(raw) is None and not is_down(raw)


def test_gate_and_scan_agree_on_an_endpoint_without_health(engine: Engine, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    api = HostedApi(api_key=KEY).start()
    gate = HealthGate(api.base_url, api_key=KEY, http_client=DirectHttp(timeout=2))
    target = ProbeTarget("hosted", api.base_url, api_key=KEY)

    def scan() -> None:
        scan_vllm(
            [target],
            engine=engine,
            http_client_for=lambda _t: DirectHttp(timeout=2),
            redis_client=client,
        )

    def reports() -> tuple[bool | None, bool | None]:
        scanned = read_health(client.get(health_key("hosted")))
        client.set(health_key("hosted"), gate.record())
        gated = read_health(client.get(health_key("hosted")))
        return (
            scanned.healthy if scanned else None,
            gated.healthy if gated else None,
        )

    try:
        for _ in range(3):  # the 404 on /health never makes it flip
            assert gate.step() is None
            scan()
            assert reports() == (True, True)
        assert gate.last.healthy and "no /health" in gate.last.detail
        api.stop()  # refused from now on
        gate.step()
        gate.step()
        scan()
        assert reports() == (False, False)
        report = read_health(client.get(health_key("hosted")))
        assert report is not None and report.source == SOURCE_WORKER
        assert "refused" in (report.error or "")
    finally:
        api.stop()
        client.close()


def test_every_flip_reaches_the_listeners_whichever_path_caused_it() -> None:
    flips: list[tuple[bool, str]] = []
    with HostedApi() as api:
        gate = HealthGate(api.base_url, http_client=DirectHttp(timeout=2))
        gate.add_listener(lambda up, probe: flips.append((up, probe.detail)))
        assert gate.report_failure("connection failed: refused") is None
        assert gate.report_failure("connection failed: refused") is False  # calls closed it
        assert not gate.healthy and flips == [(False, "connection failed: refused")]
        assert gate.step() is None
        assert gate.step() is True  # its probes opened it again
        assert flips[-1][0] is True and "no /health" in flips[-1][1]
        assert read_health(gate.record()).healthy  # type: ignore[union-attr]

        def broken(up: bool, probe: Probe) -> None:
            raise RuntimeError("a listener that fails")

        gate.add_listener(broken)
        gate.observe(Probe(False, "x"))
        assert gate.observe(Probe(False, "x")) is False  # the failing listener is contained
        assert flips[-1] == (False, "x")


def test_answered_calls_stand_in_for_probes_only_while_the_gate_is_open() -> None:
    """A busy worker sends no probes: its answered calls say the instance is up. Once the
    answers stop, or the gate is closed, probing resumes. A port nobody listens on makes
    any probe that is sent fail."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gate = HealthGate(f"http://127.0.0.1:{dead_port}/v1", http_client=DirectHttp(timeout=2))
    gate.report_answer()
    for _ in range(3):
        assert gate.step_unless_answered(within=30) is None
    assert gate.healthy and gate.last.detail == "calls answered"  # no probe went out
    gate.step()
    assert gate.step() is False  # probes do go out: the port is dead, the gate closes
    gate.report_answer()  # a late answer of a call sent before...
    gate.step_unless_answered(within=30)
    assert not gate.healthy and gate.last.detail != "calls answered"  # ...opens nothing
    healthy = HealthGate(f"http://127.0.0.1:{dead_port}/v1", http_client=DirectHttp(timeout=2))
    healthy.report_answer()
    time.sleep(0.05)
    healthy.step_unless_answered(within=0.01)  # the answer is older than that: a probe
    assert healthy.last.detail != "calls answered"


def test_a_server_error_asks_for_a_probe_at_once_and_outweighs_earlier_answers() -> None:
    """A dead vLLM engine answers every call with a 500 in milliseconds: the worker must
    look at /health now, and the answers it had just before must not stand in for it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gate = HealthGate(f"http://127.0.0.1:{dead_port}/v1", http_client=DirectHttp(timeout=2))
    asked: list[float] = []
    gate.add_suspicion_listener(lambda: asked.append(time.monotonic()))
    gate.report_answer()
    gate.report_server_error()
    gate.report_server_error()
    assert len(asked) == 2  # the housekeeper spaces the probes it runs, not the gate
    gate.step_unless_answered(within=30)
    assert gate.last.detail != "calls answered"  # the probe went out (and failed)
    assert gate.step_unless_answered(within=30) is False  # a second bad probe closes it


@pytest.fixture
def broker_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def _queues(app: object, worker: str) -> set[str] | None:
    answer = app.control.inspect(destination=[worker], timeout=2).active_queues()  # type: ignore[attr-defined]
    if not answer or worker not in answer:
        return None
    return {q["name"] for q in answer[worker]}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_failed_calls_close_the_gate_and_the_worker_stops_consuming(
    tmp_path: Path, broker_url: str
) -> None:
    """With the gate's own probe out of the picture (once an hour), only failed calls can
    close it: they must log the DOWN line and cancel both consumers."""
    p = Pipeline(
        tmp_path,
        broker_url,
        instances=1,
        concurrency=4,
        sim_args=("--ttft", "0.3", "--itl", "0.01", "--output-tokens", "20-40"),
    )
    p.env["VFLEET_HEALTH_INTERVAL"] = "3600"
    worker = f"sim-1@{socket.gethostname()}"
    with p:
        app = create_app(p.settings)
        assert _queues(app, worker) == {"llm.sim-model", "inst.sim-1"}
        p.enqueue(write_jsonl(tmp_path / "in.jsonl", judge_rows(200)), "gate")
        p.wait_progress("gate", 5)
        sim = p.sims[0]
        assert sim is not None
        sim.process.kill()
        sim.process.wait(10)
        killed = time.monotonic()
        log = tmp_path / "worker-sim-1.log"
        wait_for(
            lambda: "instance sim-1 is DOWN" in log.read_text(errors="replace"),
            timeout=60,
            what="the worker to log its instance DOWN",
        )
        wait_for(
            lambda: _queues(app, worker) == set(),
            timeout=60,
            what="the worker to stop consuming both queues",
        )
        elapsed = time.monotonic() - killed
        client = redis.Redis.from_url(broker_url)
        report = read_health(client.get(health_key("sim-1")))
        client.close()
        app.close()
    assert report is not None and not report.healthy and report.source == SOURCE_WORKER
    line = next(ln for ln in log.read_text().splitlines() if "is DOWN" in ln)
    assert "connection failed" in line, line
    assert elapsed < 60


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_worker_consumes_again_when_its_instance_comes_back(
    tmp_path: Path, broker_url: str
) -> None:
    p = Pipeline(tmp_path, broker_url, instances=1, concurrency=4)
    worker = f"sim-1@{socket.gethostname()}"
    log = tmp_path / "worker-sim-1.log"
    with p:
        app = create_app(p.settings)
        sim = p.sims[0]
        assert sim is not None
        sim.process.kill()
        sim.process.wait(10)
        wait_for(lambda: _queues(app, worker) == set(), timeout=60, what="consumers cancelled")
        assert "instance sim-1 is DOWN" in log.read_text(errors="replace")
        p.start_sim(0)
        wait_for(
            lambda: _queues(app, worker) == {"llm.sim-model", "inst.sim-1"},
            timeout=60,
            what="consumers added back",
        )
        assert "instance sim-1 is up" in log.read_text(errors="replace")
        p.enqueue(write_jsonl(tmp_path / "in.jsonl", judge_rows(20)), "back")
        counts = p.wait_done("back", 20)
        app.close()
    assert counts["succeeded"] == 20

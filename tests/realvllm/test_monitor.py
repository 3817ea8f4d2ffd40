"""``vfleet vllm --live`` and ``vfleet discover`` against real vLLM servers."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator

import httpx2
import pytest

from tests.realvllm.harness import RealFleet, scrape
from tests.services import wait_for
from tests.vllm_server import MAX_MODEL_LEN, MAX_NUM_SEQS, MODEL_NAME, VLLMServer

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(2400)]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV = "vllm:kv_cache_usage_perc"
LOAD_EXTRA = 2
"""The busy load keeps this many requests beyond max-num-seqs in flight (they wait)."""


def live(fleet: RealFleet) -> dict[str, dict[str, object]]:
    done = fleet.cli("vllm", "--live", "--json")
    assert done.returncode == 0, done.stderr
    return {row["instance"]: row for row in json.loads(done.stdout)}


@pytest.fixture
def load(vllm_servers: list[VLLMServer]) -> Iterator[VLLMServer]:
    """Free-text requests on the first server, a few more than max-num-seqs at once, sent
    again as each ends until the test is over: the server's /metrics answers slowly under
    load, and a load of fixed size could be over before a scrape saw it."""
    server = vllm_servers[0]
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Write."}]}
    # One client made here, shared by the threads: no client (and TLS context) per thread.
    limits = httpx2.Limits(max_connections=4 * MAX_NUM_SEQS)
    client = httpx2.Client(base_url=server.base_url, timeout=300, limits=limits)
    errors: list[BaseException] = []
    ended = threading.Event()

    def ask(max_tokens: int) -> None:
        while not ended.is_set():
            try:
                client.post(
                    "/chat/completions", json={**body, "max_tokens": max_tokens}
                ).raise_for_status()
            except httpx2.RemoteProtocolError:
                continue  # a kept-alive connection the server had just closed: send again
            except Exception as e:  # reported by the test, not lost in a thread
                if not ended.is_set():
                    errors.append(e)
                return

    # Short answers, so the threads stop soon after the test ends; each of its own length,
    # so requests admitted together do not all end at the same step.
    threads = [
        threading.Thread(target=ask, args=(150 + 17 * i,), daemon=True)
        for i in range(MAX_NUM_SEQS + LOAD_EXTRA)
    ]
    for t in threads:
        t.start()
    yield server
    ended.set()
    # Each thread ends after its request: short answers, so soon. Closing the client under
    # threads mid-request would leave their sockets to the garbage collector.
    for t in threads:
        t.join(300)
    client.close()
    assert not errors, errors


def test_vllm_live_agrees_with_idle_servers_raw_metrics(
    real_fleet: RealFleet, vllm_servers: list[VLLMServer]
) -> None:
    rows = live(real_fleet)
    for inst, server in zip(real_fleet.instances, vllm_servers, strict=True):
        row, raw = rows[inst.name], scrape(server)
        assert row["healthy"] is True and row["error"] is None
        assert (row["model"], row["max_model_len"]) == (MODEL_NAME, MAX_MODEL_LEN)
        assert (row["running"], row["waiting"]) == (raw[RUNNING], raw[WAITING]) == (0, 0)
        assert row["kv_cache_usage"] == pytest.approx(raw[KV])
        assert row["swapped"] is None  # vLLM 0.32 has no num_requests_swapped


def test_vllm_live_agrees_with_a_busy_servers_raw_metrics(
    real_fleet: RealFleet, load: VLLMServer
) -> None:
    wait_for(lambda: scrape(load)[RUNNING] >= 2, timeout=120, what="requests running")
    # The gauges move while the scan runs: sample the raw metrics all along and check that
    # what vfleet stored lies within what the server showed meanwhile, give or take the
    # largest step seen between two samples (vfleet's read falls between two of them).
    samples: list[dict[str, float]] = [scrape(load)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(scrape(load))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        row = live(real_fleet)[real_fleet.instances[0].name]
    finally:
        stop.set()
        sampler.join(30)
    samples.append(scrape(load))
    assert max(s[RUNNING] for s in samples) >= 2  # the server was busy throughout
    running, waiting, kv = row["running"], row["waiting"], row["kv_cache_usage"]
    assert isinstance(running, float | int) and isinstance(waiting, float | int)
    assert isinstance(kv, float | int)

    def spread(name: str) -> tuple[float, float, float]:
        seen = [s[name] for s in samples]
        step = max(abs(b - a) for a, b in itertools.pairwise(seen)) + 1e-9
        return min(seen), max(seen), step

    # A read can also fall on the step boundary where requests that just ended are gone and
    # the waiting ones are not scheduled yet, which a sampler may never see (seen in CI:
    # every sample running 8, vfleet's read 7). Several requests can end at one step,
    # so the counts and the KV usage may dip below every sample, by up to half the slots for
    # the running count; never above what the server showed, and never to idle.
    low, high, step = spread(RUNNING)
    assert max(1, low - step - MAX_NUM_SEQS // 2) <= running <= high + step, (low, high, row)
    assert 0 <= waiting <= LOAD_EXTRA, row  # the load's extra requests, at most
    low, high, step = spread(KV)
    assert 0 < kv <= min(1.0, high + step), (low, high, row)  # running requests hold blocks


def test_discover_finds_both_servers(real_fleet: RealFleet, vllm_servers: list[VLLMServer]) -> None:
    ports = ",".join(str(s.port) for s in vllm_servers)
    done = real_fleet.cli("discover", "--ports", ports, "--json")
    assert done.returncode == 0, done.stderr
    found = {s["port"]: s for s in json.loads(done.stdout)["servers"]}
    assert sorted(found) == sorted(s.port for s in vllm_servers)
    for server in vllm_servers:
        s = found[server.port]
        assert s["base_url"].endswith(f":{server.port}/v1")
        assert s["models"] == [MODEL_NAME] and s["max_model_len"] == MAX_MODEL_LEN

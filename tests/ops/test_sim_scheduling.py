"""Continuous batching, the waiting queue, latency and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import time

import openai

from ops.sim.launcher import SimFleet, free_ports
from tests.ops.conftest import FleetFactory
from tests.ops.simtools import names, scrape, value

MODEL = "sim-model"


async def _poll_until_batch_full(root: str, max_num_seqs: int) -> tuple[float, float]:
    deadline = time.monotonic() + 5
    running = waiting = 0.0
    while time.monotonic() < deadline:
        samples = await asyncio.to_thread(scrape, root)
        running = value(samples, "vllm:num_requests_running")
        waiting = value(samples, "vllm:num_requests_waiting")
        if running == waiting == max_num_seqs:
            break
        await asyncio.sleep(0.02)
    return running, waiting


async def test_requests_beyond_max_num_seqs_wait_and_counters_add_up(
    start_sim: FleetFactory,
) -> None:
    fleet = start_sim("--max-num-seqs", "4", "--ttft", "0.4", "--itl", "0.002")
    root = fleet.root_urls[0]
    system = {"role": "system", "content": "You are a careful judge. " * 8}
    async with openai.AsyncOpenAI(base_url=fleet.urls[0], api_key="sim", max_retries=0) as api:
        calls = [
            api.chat.completions.create(
                model=MODEL,
                messages=[system, {"role": "user", "content": f"Record {i}"}],
                max_tokens=10 + i,
            )
            for i in range(8)
        ]
        tasks = [asyncio.ensure_future(call) for call in calls]
        running, waiting = await _poll_until_batch_full(root, 4)
        replies = await asyncio.gather(*tasks)
    assert (running, waiting) == (4, 4)
    samples = scrape(root)
    completion_tokens = sum(r.usage.completion_tokens for r in replies)
    prompt_tokens = sum(r.usage.prompt_tokens for r in replies)
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:num_requests_waiting") == 0
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 8
    assert value(samples, "vllm:generation_tokens_total") == completion_tokens == sum(range(10, 18))
    assert value(samples, "vllm:prompt_tokens_total") == prompt_tokens
    assert value(samples, "vllm:e2e_request_latency_seconds_count") == 8
    assert value(samples, "vllm:request_queue_time_seconds_sum") > 4 * 0.4  # 4 waited a batch
    assert value(samples, "vllm:prefix_cache_hits_total") > 0  # the shared system prompt
    assert value(samples, "vllm:num_preemptions_total", engine="0", model_name=MODEL) == 0


def test_v1_and_v0_metric_names(fast_sim: SimFleet, start_sim: FleetFactory) -> None:
    v1 = scrape(fast_sim.root_urls[0])
    v0 = scrape(start_sim("--metrics-version", "v0").root_urls[0])
    assert {"vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries_total"} <= names(v1)
    assert "vllm:gpu_cache_usage_perc" not in names(v1)
    assert {
        "vllm:gpu_cache_usage_perc",
        "vllm:cpu_cache_usage_perc",
        "vllm:num_requests_swapped",
        "vllm:num_requests_running",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
    } <= names(v0)
    assert "vllm:kv_cache_usage_perc" not in names(v0)
    assert all(("engine", "0") in labels for _, labels in v1)
    assert not any(dict(labels).get("engine") for _, labels in v0)
    assert all(dict(labels)["model_name"] == MODEL for _, labels in v0)


def test_configured_latency_is_honoured(start_sim: FleetFactory) -> None:
    fleet = start_sim("--ttft", "0.2", "--itl", "0.01", "--output-tokens", "11")
    with openai.OpenAI(base_url=fleet.urls[0], api_key="sim", max_retries=0) as api:
        started = time.monotonic()
        reply = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        elapsed = time.monotonic() - started
    assert reply.usage is not None and reply.usage.completion_tokens == 11
    assert elapsed >= 0.2 + 10 * 0.01
    ttft_sum = value(scrape(fleet.root_urls[0]), "vllm:time_to_first_token_seconds_sum")
    assert 0.2 <= ttft_sum < 1.0


def test_slow_instance_is_slower(start_sim: FleetFactory) -> None:
    ports = free_ports(2)
    fleet = start_sim(
        "--ttft", "0.05", "--itl", "0", "--slow", f"{ports[1]}:4", instances=2, base_port=ports[0]
    )  # fmt: skip
    assert "4x slower" in fleet.output()
    timings = []
    for url in fleet.urls:
        with openai.OpenAI(base_url=url, api_key="sim", max_retries=0) as api:
            started = time.monotonic()
            api.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            timings.append(time.monotonic() - started)
    assert timings[1] >= 0.2
    assert timings[0] < timings[1]

"""vLLM metrics parsing (V0 and V1 names) and probes of real simulator processes."""

from __future__ import annotations

import openai
import pytest

from ops.endpoint import DirectHttp, HttpResponse, ProbeError, read_models, root_url
from ops.redis_server import free_port
from ops.sim.launcher import SimFleet
from ops.vllm_probe import parse_metrics, probe, rate

V1_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 250.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 12000.0
vllm:prompt_tokens_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 3400.0
"""

V0_TEXT = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="m"} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.875
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{model_name="m"} 0.1
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.4
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="m"} 500.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m"} 900.0
"""


def test_v1_metrics_sum_engines_and_average_kv_cache() -> None:
    m = parse_metrics(V1_TEXT)
    assert m.version == "v1" and m.engines == 2
    assert (m.running, m.waiting, m.swapped) == (5.0, 8.0, None)
    assert m.kv_cache_usage == pytest.approx(0.375)
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (12000.0, 3400.0)
    assert m.prefix_cache_hit_rate == pytest.approx(0.25)


def test_v0_metrics_use_gpu_cache_and_swapped() -> None:
    m = parse_metrics(V0_TEXT)
    assert m.version == "v0" and m.engines == 1
    assert (m.running, m.waiting, m.swapped) == (4.0, 0.0, 2.0)
    assert m.kv_cache_usage == 0.875  # the GPU cache, never the CPU one
    assert m.prefix_cache_hit_rate == 0.4
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (500.0, 900.0)


def test_metrics_of_a_non_vllm_server_are_empty() -> None:
    m = parse_metrics("# TYPE up gauge\nup 1\n")
    assert m.version is None and m.running is None and m.engines == 0


def test_metrics_that_are_not_prometheus_text_raise() -> None:
    with pytest.raises(ProbeError, match="not Prometheus"):
        parse_metrics("vllm:num_requests_running{engine=0 oops\n")


def test_rates_come_from_counter_deltas_and_ignore_resets() -> None:
    assert rate(1500.0, 1000.0, 10.0) == 50.0
    assert rate(10.0, 1000.0, 10.0) is None  # the server restarted
    assert rate(1500.0, None, 10.0) is None
    assert rate(1500.0, 1000.0, 0.0) is None


def test_models_answer_gives_id_and_max_model_len() -> None:
    body = '{"object":"list","data":[{"id":"Qwen/Qwen2.5-7B","max_model_len":32768}]}'
    assert read_models(HttpResponse(200, body)) == ("Qwen/Qwen2.5-7B", 32768)
    with pytest.raises(ProbeError, match="401"):
        read_models(HttpResponse(401, '{"error": "unauthorized"}'))
    with pytest.raises(ProbeError, match="no model"):
        read_models(HttpResponse(200, '{"data": []}'))


def test_root_url_strips_v1() -> None:
    assert root_url("http://h:8000/v1/") == "http://h:8000"
    assert root_url("https://api.example.com/v1") == "https://api.example.com"


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_probe_reads_a_simulator_in_both_metric_modes(version: str) -> None:
    with SimFleet(extra_args=["--metrics-version", version, "--ttft", "0", "--itl", "0"]) as sim:
        client = openai.OpenAI(base_url=sim.urls[0], api_key="sim", max_retries=0)
        client.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
        client.close()
        found = probe(sim.urls[0], http_client=DirectHttp(timeout=5))
    assert found.healthy and found.error is None
    assert found.model == "sim-model" and found.max_model_len
    assert found.metrics is not None and found.metrics.version == version
    assert found.metrics.prompt_tokens_total and found.metrics.prompt_tokens_total > 0
    assert found.metrics.generation_tokens_total and found.metrics.generation_tokens_total > 0
    assert (found.metrics.swapped is not None) is (version == "v0")


def test_probe_of_a_closed_port_is_unhealthy_with_a_reason() -> None:
    found = probe(f"http://127.0.0.1:{free_port()}/v1", http_client=DirectHttp(timeout=2))
    assert not found.healthy
    assert found.error is not None and "Connection refused" in found.error

"""The health rule and /v1/models reading, against real servers: the simulator (which has
``/health``) and a hosted-style endpoint (which has none)."""

from __future__ import annotations

import httpx2
import pytest

from ops.endpoint import (
    DirectHttp,
    HttpResponse,
    ProbeError,
    check_health,
    health_url,
    metrics_url,
    model_cards,
    models_url,
    read_models,
    root_url,
)
from ops.redis_server import free_port
from tests.hosted import MODEL, HostedApi
from tests.ops.conftest import FleetFactory

HTTP = DirectHttp(timeout=3)


def test_urls_of_an_openai_base_url() -> None:
    for base in ("http://h:8000/v1", "http://h:8000/v1/"):
        assert root_url(base) == "http://h:8000"
        assert health_url(base) == "http://h:8000/health"
        assert metrics_url(base) == "http://h:8000/metrics"
        assert models_url(base) == "http://h:8000/v1/models"


def test_models_answer_gives_ids_and_max_model_len() -> None:
    body = '{"object":"list","data":[{"id":"a","max_model_len":32768},{"id":"b"},{"x":1}]}'
    cards = model_cards(HttpResponse(200, body))
    assert [(c.id, c.max_model_len) for c in cards] == [("a", 32768), ("b", None)]
    assert read_models(HttpResponse(200, body)) == ("a", 32768)
    for bad, match in (
        (HttpResponse(401, "{}"), "401"),
        (HttpResponse(200, '{"data": []}'), "no model"),
        (HttpResponse(200, "<html>"), "not JSON"),
        (HttpResponse(200, '{"models": []}'), "not an OpenAI model list"),
    ):
        with pytest.raises(ProbeError, match=match):
            read_models(bad)


def test_a_vllm_server_is_judged_by_its_health_endpoint(start_sim: FleetFactory) -> None:
    sim = start_sim("--ttft", "0", "--itl", "0")
    up = check_health(HTTP, sim.urls[0])
    assert up.healthy and up.detail == "/health answered 200" and up.models is None
    assert httpx2.post(f"{sim.root_urls[0]}/sim/kill", timeout=5).status_code == 200
    dead = check_health(HTTP, sim.urls[0])
    assert not dead.healthy and dead.answered and dead.detail == "/health answered 503"


def test_an_endpoint_without_health_is_judged_by_its_model_list() -> None:
    with HostedApi(api_key="k-123") as api:
        up = check_health(HTTP, api.base_url, headers={"Authorization": "Bearer k-123"})
        assert up.healthy and "no /health" in up.detail
        assert up.models is not None and read_models(up.models)[0] == MODEL
        assert api.requests == ["/health", "/v1/models"]

        no_key = check_health(HTTP, api.base_url)
        assert not no_key.healthy and "401" in no_key.detail

        api.models_status = 503
        unwell = check_health(HTTP, api.base_url, headers={"Authorization": "Bearer k-123"})
        assert not unwell.healthy and "503" in unwell.detail
    gone = check_health(HTTP, api.base_url)
    assert not gone.healthy and not gone.answered and "refused" in gone.detail


def test_a_closed_port_is_down_and_its_message_masks_credentials() -> None:
    verdict = check_health(HTTP, f"http://user:s3cr3t@127.0.0.1:{free_port()}/v1")
    assert not verdict.healthy and not verdict.answered
    assert "s3cr3t" not in verdict.detail and "user:***@127.0.0.1" in verdict.detail

"""Injected failures reach the real ``openai`` client as the matching exceptions."""

from __future__ import annotations

import socket
import time

import openai
import pytest

from ops.sim.server import DIE_EXIT_CODE
from tests.ops.conftest import FleetFactory
from tests.ops.simtools import http
from tests.services import wait_for

MODEL = "sim-model"
HELLO = [{"role": "user", "content": "hello"}]


def ask(url: str, timeout: float = 10.0) -> str | None:
    with openai.OpenAI(base_url=url, api_key="sim", max_retries=0, timeout=timeout) as api:
        reply = api.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    return reply.choices[0].message.content


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_injected_http_errors(start_sim: FleetFactory) -> None:
    fleet = start_sim("--fail-rate", "1", "--fail-kinds", "429,500,503", "--retry-after", "3")
    seen: dict[int, openai.APIStatusError] = {}
    with openai.OpenAI(base_url=fleet.urls[0], api_key="sim", max_retries=0) as api:
        for _ in range(60):
            with pytest.raises(openai.APIStatusError) as caught:
                api.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            seen[caught.value.status_code] = caught.value
            if len(seen) == 3:
                break
    assert isinstance(seen[429], openai.RateLimitError)
    assert seen[429].response.headers["Retry-After"] == "3"
    assert isinstance(seen[500], openai.InternalServerError)
    assert isinstance(seen[503], openai.InternalServerError)
    for status, error in seen.items():
        assert error.response.json()["error"]["code"] == status


def test_injected_hang_times_out_and_reset_drops_the_connection(start_sim: FleetFactory) -> None:
    hang = start_sim("--fail-rate", "1", "--fail-kinds", "hang")
    reset = start_sim("--fail-rate", "1", "--fail-kinds", "reset")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(hang.urls[0], timeout=0.5)
    assert time.monotonic() - started >= 0.5
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(reset.urls[0])
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert http("GET", f"{hang.root_urls[0]}/health")[0] == 200  # hangs do not block the server


def test_fail_rate_mixes_failures_and_answers(start_sim: FleetFactory) -> None:
    fleet = start_sim("--ttft", "0", "--itl", "0", "--fail-rate", "0.5", "--fail-kinds", "500")
    outcomes = []
    with openai.OpenAI(base_url=fleet.urls[0], api_key="sim", max_retries=0) as api:
        for _ in range(40):
            try:
                api.completions.create(model=MODEL, prompt="hi", max_tokens=2)
                outcomes.append(True)
            except openai.InternalServerError:
                outcomes.append(False)
    assert 5 < sum(outcomes) < 35


def test_die_after_ends_the_process_and_the_port_refuses(start_sim: FleetFactory) -> None:
    fleet = start_sim("--ttft", "0", "--die-after", "2")
    assert ask(fleet.urls[0])
    assert ask(fleet.urls[0])  # the second answer still arrives, then the engine crashes
    assert fleet.process.wait(timeout=5) == DIE_EXIT_CODE
    assert refuses_connections(fleet.ports[0])
    with pytest.raises(openai.APIConnectionError):
        ask(fleet.urls[0])


def test_die_after_for_one_instance_leaves_the_others_serving(start_sim: FleetFactory) -> None:
    fleet = start_sim("--ttft", "0", "--die-after", "1", instances=3)
    assert ask(fleet.urls[1])
    wait_for(lambda: refuses_connections(fleet.ports[1]), timeout=30, what="instance 1 to die")
    assert fleet.process.poll() is None
    assert ask(fleet.urls[0])  # instance 0 dies now too (its first request), 2 lives on
    time.sleep(0.2)
    assert fleet.process.poll() is None
    assert http("GET", f"{fleet.root_urls[2]}/health")[0] == 200
    assert ask(fleet.urls[2])  # the last one: the whole process exits
    assert fleet.process.wait(timeout=5) == DIE_EXIT_CODE


def test_engine_death_by_dead_after_and_admin_kill_then_revive(start_sim: FleetFactory) -> None:
    fleet = start_sim("--ttft", "0", "--dead-after", "1")
    root = fleet.root_urls[0]
    assert ask(fleet.urls[0])
    assert http("GET", f"{root}/health")[0] == 503  # --dead-after 1: dead after one request
    with pytest.raises(openai.InternalServerError):
        ask(fleet.urls[0])
    assert fleet.process.poll() is None
    assert http("POST", f"{root}/sim/revive")[0] == 200
    assert http("GET", f"{root}/health")[0] == 200
    assert ask(fleet.urls[0])
    assert http("POST", f"{root}/sim/kill")[0] == 200
    assert http("GET", f"{root}/health")[0] == 503
    with pytest.raises(openai.InternalServerError) as caught:
        ask(fleet.urls[0])
    assert caught.value.status_code == 500
    assert http("POST", f"{root}/sim/revive")[0] == 200
    assert http("GET", f"{root}/health")[0] == 200
    assert ask(fleet.urls[0])

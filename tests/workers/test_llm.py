"""``LLMClient`` against the real simulator over HTTP: answers, and errors mapped onto
vfleet's tree (transient ones retried by Celery, permanent ones failing the record)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ops.redis_server import free_port
from ops.sim.launcher import SimFleet
from workers import errors
from workers.fleet import InstanceConfig
from workers.llm import LLMClient

MODEL = "sim-model"
SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}
HELLO = [{"role": "user", "content": "hello"}]


def client_for(url: str, *, timeout: float = 10.0) -> LLMClient:
    return LLMClient(InstanceConfig(name="a", base_url=url, model=MODEL), timeout=timeout)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimFleet]:
    fast = ["--ttft", "0.01", "--itl", "0.001", "--seed", "3", "--max-model-len", "256"]
    with SimFleet(extra_args=fast) as fleet:
        yield fleet


def test_chat_returns_text_tokens_and_finish_reason(sim: SimFleet) -> None:
    client = client_for(sim.urls[0])
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    # top_k is vLLM's own sampling parameter: it travels in the body beside temperature.
    done = client.chat(HELLO, params={"temperature": 0, "top_k": 5}, response_format=fmt)
    answer = json.loads(done.text)
    assert isinstance(answer["score"], int) and isinstance(answer["reason"], str)
    assert done.prompt_tokens and done.prompt_tokens > 0
    assert done.completion_tokens and done.completion_tokens > 0
    assert done.finish_reason in ("stop", "length")
    client.close()


def test_a_prompt_over_the_context_length_fails_at_once(sim: SimFleet) -> None:
    client = client_for(sim.urls[0])
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(errors.ContextLengthError) as caught:
        client.chat(long, params={"max_tokens": 16})
    assert isinstance(caught.value, errors.PermanentError)
    assert "context length" in str(caught.value)


def test_rate_limit_keeps_retry_after_and_server_errors_are_transient() -> None:
    args = ["--fail-rate", "1", "--fail-kinds", "429,503", "--retry-after", "3", "--seed", "1"]
    with SimFleet(extra_args=args) as fleet:
        client = client_for(fleet.urls[0])
        seen: dict[type[errors.RecordError], errors.RecordError] = {}
        for _ in range(40):
            with pytest.raises(errors.TransientError) as caught:
                client.chat(HELLO, params={"max_tokens": 4})
            seen[type(caught.value)] = caught.value
            if len(seen) == 2:
                break
    assert seen[errors.RateLimitedError].retry_after == 3.0
    assert str(seen[errors.ServerError]).startswith("503")


def test_a_closed_port_is_a_connect_error() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}/v1", timeout=2.0)
    with pytest.raises(errors.ConnectError):
        client.chat(HELLO, params={})

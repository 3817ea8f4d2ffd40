"""Both clients of an instance against the real simulator over HTTP: the ``openai``-based
``LLMClient`` and the worker's ``aiohttp`` ``AsyncLLMClient`` send the same bodies, read the
same answers and map every failure onto the same error of vfleet's tree."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ops.redis_server import free_port
from ops.sim.launcher import SimFleet
from workers import errors
from workers.async_client import AsyncLLMClient
from workers.codec import Completion, RawResponse
from workers.engine import AsyncEngine
from workers.fleet import InstanceConfig
from workers.llm import LLMClient

MODEL = "sim-model"
SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}
HELLO = [{"role": "user", "content": "hello"}]


class Lean:
    """The async client driven from a test thread, on an engine of its own."""

    def __init__(self, inst: InstanceConfig, timeout: float) -> None:
        self.engine = AsyncEngine().start()
        self.client = AsyncLLMClient(inst, concurrency=8, timeout=timeout, connect_timeout=2)

    def chat(self, messages: list[dict[str, str]], **kw: Any) -> Completion:
        return self.engine.run(self.client.chat(messages, **kw))

    def send(self, path: str, body: dict[str, Any]) -> RawResponse:
        return self.engine.run(self.client.send(path, body))

    def close(self) -> None:
        self.engine.run(self.client.aclose())
        self.engine.stop()


Client = LLMClient | Lean
ClientFactory = Callable[..., Client]


@pytest.fixture(params=["openai", "aiohttp"])
def client_for(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    made: list[Client] = []

    def make(url: str, *, timeout: float = 10.0) -> Client:
        inst = InstanceConfig(name="a", base_url=url, model=MODEL)
        client: Client = (
            LLMClient(inst, timeout=timeout, connect_timeout=2)
            if request.param == "openai"
            else Lean(inst, timeout)
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimFleet]:
    fast = ["--ttft", "0.01", "--itl", "0.001", "--seed", "3", "--max-model-len", "256"]
    with SimFleet(extra_args=fast) as fleet:
        yield fleet


def test_chat_returns_text_tokens_and_finish_reason(
    sim: SimFleet, client_for: ClientFactory
) -> None:
    client = client_for(sim.urls[0])
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    # top_k is vLLM's own sampling parameter: it travels in the body beside temperature.
    done = client.chat(HELLO, params={"temperature": 0, "top_k": 5}, response_format=fmt)
    answer = json.loads(done.text)
    assert isinstance(answer["score"], int) and isinstance(answer["reason"], str)
    assert done.prompt_tokens and done.prompt_tokens > 0
    assert done.completion_tokens and done.completion_tokens > 0
    assert done.finish_reason in ("stop", "length")


def test_both_clients_get_the_same_answer_to_the_same_body(sim: SimFleet) -> None:
    inst = InstanceConfig(name="a", base_url=sim.urls[0], model=MODEL)
    ref, lean = LLMClient(inst), Lean(inst, 10)
    try:
        params = {"temperature": 0, "seed": 7, "max_tokens": 32}
        assert ref.chat(HELLO, params=params) == lean.chat(HELLO, params=params)
        body = {"model": "ignored", "prompt": "Say 3", "max_tokens": 8, "seed": 1}
        a, b = ref.send("/completions", body), lean.send("/completions", body)
        assert (a.status_code, a.body["choices"]) == (b.status_code, b.body["choices"])
        assert a.request_id and b.request_id and b.body["model"] == MODEL
    finally:
        ref.close()
        lean.close()


def test_a_prompt_over_the_context_length_fails_at_once(
    sim: SimFleet, client_for: ClientFactory
) -> None:
    client = client_for(sim.urls[0])
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(errors.ContextLengthError) as caught:
        client.chat(long, params={"max_tokens": 16})
    assert isinstance(caught.value, errors.PermanentError)
    assert "context length" in str(caught.value)


def test_max_tokens_over_the_context_is_a_clear_permanent_error(
    sim: SimFleet, client_for: ClientFactory
) -> None:
    client = client_for(sim.urls[0])
    with pytest.raises(errors.ContextLengthError, match="lower the spec's max_tokens"):
        client.chat(HELLO, params={"max_tokens": 5000})


def test_rate_limit_keeps_retry_after_and_server_errors_are_transient(
    client_for: ClientFactory,
) -> None:
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


def test_a_closed_port_is_a_connect_error(client_for: ClientFactory) -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}/v1", timeout=2.0)
    with pytest.raises(errors.ConnectError):
        client.chat(HELLO, params={})


def test_a_server_that_never_answers_is_a_timeout(client_for: ClientFactory) -> None:
    # A local socket that accepts and stays silent.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(listener.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        try:
            client = client_for(f"http://127.0.0.1:{port}/v1", timeout=1.0)
            with pytest.raises(errors.RequestTimeoutError):
                client.chat(HELLO, params={})
        finally:
            stop.set()
            thread.join(5)
            for conn in held:
                conn.close()

"""The simulator's OpenAI-compatible API, called by the real ``openai`` client."""

from __future__ import annotations

import json

import openai
import pytest

from ops.sim.launcher import SimFleet
from tests.ops.conftest import FleetFactory
from tests.ops.simtools import http

MODEL = "sim-model"
HELLO = [{"role": "user", "content": "Say hello."}]


def client(fleet: SimFleet, index: int = 0, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.urls[index], api_key="sim", max_retries=0, **kwargs)


def test_chat_completion_answers_text_with_usage(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        reply = api.chat.completions.create(model=MODEL, messages=HELLO)
    text = reply.choices[0].message.content
    assert reply.object == "chat.completion"
    assert reply.model == MODEL
    assert text and len(text.split()) == reply.usage.completion_tokens
    assert 20 <= reply.usage.completion_tokens <= 80
    assert reply.usage.prompt_tokens > 0
    assert reply.choices[0].finish_reason == "stop"


def test_max_tokens_caps_the_answer_with_finish_reason_length(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        reply = api.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        newer = api.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_completion_tokens=3,
        )
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    assert newer.usage.completion_tokens == 3


def test_text_completion_defaults_to_16_tokens(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        reply = api.completions.create(model=MODEL, prompt="Once upon a time")
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens == 16
    assert len(reply.choices[0].text.split()) == 16


def test_streamed_chat_matches_the_non_streamed_answer(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        whole = api.chat.completions.create(model=MODEL, messages=HELLO)
        stream = api.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


async def test_streamed_completion_with_async_client_ends_with_done(fast_sim: SimFleet) -> None:
    async with openai.AsyncOpenAI(base_url=fast_sim.urls[0], api_key="sim", max_retries=0) as api:
        stream = await api.completions.create(
            model=MODEL, prompt="Tell me a story", max_tokens=12, stream=True
        )
        texts = [chunk.choices[0].text async for chunk in stream]
    assert len([t for t in texts if t]) == 12
    status, raw = http(
        "POST",
        f"{fast_sim.root_urls[0]}/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True},
    )
    events = [line for line in raw.decode().split("\n\n") if line]
    assert status == 200
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)


def test_models_lists_the_served_model(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        models = api.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].owned_by == "vllm"
    assert models[0].max_model_len == 8192


def test_unknown_model_is_not_found(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api, pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="gpt-nope", messages=HELLO)
    assert caught.value.status_code == 404
    assert "The model `gpt-nope` does not exist." in str(caught.value)


def _bad_request(fleet: SimFleet, **request: object) -> dict[str, object]:
    with client(fleet) as api, pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(model=MODEL, **request)  # type: ignore[call-overload]
    assert caught.value.response.json()["error"]["type"] == "BadRequestError"
    body = caught.value.body
    assert isinstance(body, dict)
    return body


def test_a_prompt_over_the_context_is_a_bad_request_in_vllm_0_32_words(
    fast_sim: SimFleet,
) -> None:
    long_prompt = [{"role": "user", "content": "x" * 32800}]  # 8200 tokens + 3 template tokens
    body = _bad_request(fast_sim, messages=long_prompt, max_tokens=10)
    assert body["message"] == (
        "This model's maximum context length is 8192 tokens. However, your prompt contains at "
        "least 8193 input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt. (parameter=input_tokens, value=8193)"
    )
    assert body["param"] == "input_tokens"


def test_max_tokens_over_the_context_is_a_bad_request_without_context_words(
    fast_sim: SimFleet,
) -> None:
    body = _bad_request(fast_sim, messages=HELLO, max_tokens=9000)
    assert body["message"] == (
        "max_tokens=9000 cannot be greater than max_model_len=8192. Please request fewer "
        "output tokens. (parameter=max_tokens, value=9000)"
    )
    assert body["param"] == "max_tokens"


def test_a_completion_past_the_end_of_the_context_is_cut_short(fast_sim: SimFleet) -> None:
    # 8183 tokens: 9 left, fewer than the 20..80 this simulator's text answers take.
    prompt = [{"role": "user", "content": "x" * 32720}]
    with client(fast_sim) as api:
        reply = api.chat.completions.create(model=MODEL, messages=prompt, max_tokens=1000)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 8192
    assert reply.choices[0].finish_reason == "length"


def test_older_vllm_refuses_prompt_plus_max_tokens_over_the_context(
    start_sim: FleetFactory,
) -> None:
    fleet = start_sim("--ttft", "0", "--itl", "0", "--context-check", "reject")
    long_prompt = [{"role": "user", "content": "x" * 32000}]  # 8000 tokens + 3 template tokens
    body = _bad_request(fleet, messages=long_prompt, max_tokens=1000)
    assert body["message"] == (
        "This model's maximum context length is 8192 tokens. However, you requested 9003 "
        "tokens (8003 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion."
    )


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", json.dumps({"model": MODEL}).encode()],
    ids=["bad-json", "not-an-object", "no-messages"],
)
def test_malformed_body_is_400_in_vllm_shape(fast_sim: SimFleet, body: bytes) -> None:
    status, raw = http("POST", f"{fast_sim.root_urls[0]}/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 400
    assert error["type"] == "BadRequestError"

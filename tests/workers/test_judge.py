"""``judge_record`` with the real ``openai`` client against the simulator behaving like a
small model on real vLLM: answers cut by max_tokens, control characters, re-asks that must
fit the context, max_tokens over the context."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.sim.launcher import SimFleet
from tests.ops.simtools import http
from workers import budget, errors
from workers.async_client import AsyncLLMClient
from workers.engine import AsyncEngine
from workers.fleet import InstanceConfig
from workers.judge import _reask, _Window, judge_record, judge_record_async
from workers.llm import Completion, LLMClient
from workers.spec import CUT_MARK, Spec, load_spec

MODEL = "sim-model"
FAST = ("--ttft", "0", "--itl", "0", "--seed", "11")
CONTEXT = 1024
UNBOUNDED = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reasoning": {"type": "string"}},
    "required": ["score", "reasoning"],
}
RECORDS: dict[str, dict[str, Any]] = {
    "judge": {"question": "What is 2 + 2?", "answer": "4", "reference": "4"},
    "pairwise": {"question": "What is 2 + 2?", "answer_a": "4", "answer_b": "5"},
    "classify": {"text": "I loved every minute of it."},
    "analyze": {"text": "def double(x):\n    return x * 2\n"},
    "analyze-json": {"text": "def double(x):\n    return x * 2\n"},
}


def record(name: str, n: int) -> dict[str, Any]:
    """Record ``n`` for spec ``name``: each renders a different prompt, so gets its own answer."""
    return {k: f"{v} ({n})" for k, v in RECORDS[name].items()}


def client_for(fleet: SimFleet) -> LLMClient:
    return LLMClient(InstanceConfig(name="a", base_url=fleet.urls[0], model=MODEL), timeout=10)


def requests_served(fleet: SimFleet) -> int:
    status, body = http("GET", f"{fleet.root_urls[0]}/sim/state")
    assert status == 200
    return int(json.loads(body)["completion_requests"])


def builtin(name: str) -> Spec:
    labels = ["positive", "negative", "neutral"] if name == "classify" else None
    return load_spec(name, labels=labels)


@pytest.fixture(scope="module")
def small_model() -> Iterator[SimFleet]:
    """A simulated 1,024-token model that never closes an unbounded string and puts raw
    control characters in a third of its JSON strings, as a random model on vLLM does."""
    args = (*FAST, "--max-model-len", str(CONTEXT), "--run-on-strings")
    with SimFleet(extra_args=(*args, "--control-char-rate", "0.3")) as fleet:
        yield fleet


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_builtin_spec_ends_on_a_model_that_never_closes_a_string(
    small_model: SimFleet, name: str
) -> None:
    client = client_for(small_model)
    spec = builtin(name)
    for n in range(8):
        outcome = judge_record(spec, record(name, n), client)
        assert outcome.prompt_tokens and outcome.completion_tokens
        if spec.json_schema is None:
            assert outcome.output is None and outcome.output_text
        else:
            assert outcome.output is not None and outcome.finish_reason == "stop"
    client.close()


def test_an_answer_cut_by_max_tokens_fails_as_truncated_at_once_keeping_it(
    small_model: SimFleet,
) -> None:
    spec = Spec(name="loose", template="{{ q }}", json_schema=UNBOUNDED, params={"max_tokens": 40})
    client = client_for(small_model)
    before = requests_served(small_model)
    with pytest.raises(errors.TruncatedError) as caught:
        judge_record(spec, {"q": "grade this"}, client)
    e = caught.value
    assert requests_served(small_model) == before + 1  # no re-ask: it would be cut again
    assert e.kind == "truncated" and isinstance(e, errors.PermanentError)
    assert e.finish_reason == "length" and e.completion_tokens == 40
    assert e.prompt_tokens and e.prompt_tokens > 0
    assert e.raw and e.raw.startswith('{"score": ')
    assert "max_tokens" in str(e) and "maxLength" in str(e)


def test_free_text_cut_short_fails_unless_the_spec_keeps_it(small_model: SimFleet) -> None:
    client = client_for(small_model)
    strict = Spec(name="t", template="{{ q }}", params={"max_tokens": 3})
    with pytest.raises(errors.TruncatedError) as caught:
        judge_record(strict, {"q": "talk"}, client)
    assert caught.value.raw and caught.value.completion_tokens == 3
    kept = judge_record(strict.model_copy(update={"keep_truncated": True}), {"q": "talk"}, client)
    assert kept.finish_reason == "length" and kept.completion_tokens == 3
    assert kept.output_text == caught.value.raw


def test_control_characters_in_strings_parse_and_are_validated(small_model: SimFleet) -> None:
    client = client_for(small_model)
    spec = builtin("judge")
    raw_control = 0
    for n in range(30):
        outcome = judge_record(spec, record("judge", n), client)
        assert outcome.output is not None and 1 <= outcome.output["score"] <= 10
        assert len(outcome.output["reasoning"]) <= 600
        raw_control += any(ord(c) < 0x20 for c in outcome.output_text or "")
    assert raw_control >= 3  # the lenient parse took them; a strict one would have failed


def test_max_tokens_over_the_context_fails_before_any_call(small_model: SimFleet) -> None:
    client = client_for(small_model)
    spec = builtin("judge").model_copy(update={"params": {"temperature": 0, "max_tokens": 5000}})
    before = requests_served(small_model)
    with pytest.raises(errors.ContextLengthError, match="max_tokens 5000 is over the model's"):
        judge_record(spec, RECORDS["judge"], client)
    assert requests_served(small_model) == before


def test_the_servers_max_tokens_refusal_is_a_clear_permanent_error(
    small_model: SimFleet,
) -> None:
    client = client_for(small_model)
    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(errors.ContextLengthError) as caught:
        client.chat(hello, params={"max_tokens": 5000})
    assert str(caught.value).startswith("max_tokens is over the model's context")
    assert "max_tokens=5000 cannot be greater than max_model_len=1024" in str(caught.value)
    assert client.max_model_len() == CONTEXT


def test_reasks_on_an_older_vllm_never_overflow_its_context(tmp_path: Path) -> None:
    # Older vLLM refuses prompt + max_tokens over the context with a 400: the re-ask of an
    # invalid answer that made that 400 once failed whole batches as context_length.
    args = (*FAST, "--max-model-len", "400", "--context-check", "reject")
    with SimFleet(extra_args=(*args, "--invalid-json-rate", "1")) as fleet:
        client = client_for(fleet)
        spec = Spec(
            name="j",
            template="{{ q }}",
            json_schema=builtin("judge").json_schema,
            params={"max_tokens": 200},
            max_reasks=3,
        )
        for q in ("short", "a longer question " * 12):
            with pytest.raises(errors.OutputInvalidError) as caught:
                judge_record(spec, {"q": q}, client)
            assert "refused" not in str(caught.value)
            assert caught.value.raw and caught.value.completion_tokens


def _completion(text: str, prompt_tokens: int) -> Completion:
    return Completion(text, prompt_tokens, len(text) // 4, "stop")


def _upper_bound(messages: list[dict[str, str]], prompt_tokens: int, base: int) -> int:
    added = messages[base:]
    return prompt_tokens + sum(
        budget.text_tokens(m["content"]) + budget.MESSAGE_OVERHEAD for m in added
    )


@pytest.mark.parametrize(
    ("prompt_tokens", "expect", "max_tokens"),
    [
        (100, "whole", 256),
        (500, "cut", 256),
        (600, "dropped", 256),
        # max_tokens lowered to what is left (1024 - 700 - 16 - 114), above the last answer's
        # 100 tokens plus the margin:
        (700, "dropped", 194),
        (800, "none", None),
    ],
)
def test_a_reask_fits_the_context_whole_cut_without_the_answer_or_not_at_all(
    prompt_tokens: int, expect: str, max_tokens: int | None
) -> None:
    messages = [{"role": "user", "content": "q"}]
    bad = "{" + "x" * 399  # 100 tokens by the server's count, 401 by our upper bound
    window = _Window(max_model_len=1024, max_tokens=256)
    params = {"temperature": 0, "max_tokens": 256}
    fitted = _reask(messages, _completion(bad, prompt_tokens), "invalid JSON: oops", window, params)
    if expect == "none":
        assert fitted is None
        return
    assert fitted is not None
    reask, sent = fitted
    assert reask[0] == messages[0] and sent["max_tokens"] == max_tokens
    assert sent["temperature"] == 0 and params["max_tokens"] == 256
    assert _upper_bound(reask, prompt_tokens, 1) + sent["max_tokens"] <= 1024
    roles = [m["role"] for m in reask]
    if expect == "dropped":
        assert roles == ["user", "user"]
    else:
        assert roles == ["user", "assistant", "user"]
        answer = reask[1]["content"]
        assert (
            answer == bad if expect == "whole" else answer.endswith(CUT_MARK) and len(answer) < 400
        )


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_worker_path_judges_exactly_as_the_reference_client(
    small_model: SimFleet, name: str
) -> None:
    """One judge, two transports: the worker's async aiohttp path and the ``openai`` client
    reach the same outcome, re-asks and failures included."""
    spec = builtin(name)
    ref = client_for(small_model)
    inst = InstanceConfig(name="a", base_url=small_model.urls[0], model=MODEL)
    engine = AsyncEngine().start()
    lean = AsyncLLMClient(inst, concurrency=4, timeout=10)
    try:
        for n in range(6):
            rec = record(name, n)
            got = [
                _ending(lambda: judge_record(spec, rec, ref, max_model_len=CONTEXT)),  # noqa: B023
                _ending(
                    lambda: engine.run(
                        judge_record_async(spec, rec, lean, max_model_len=CONTEXT)  # noqa: B023
                    )
                ),
            ]
            assert got[0] == got[1], (name, n)
    finally:
        engine.run(lean.aclose())
        engine.stop()
        ref.close()


def _ending(run: Any) -> tuple[Any, ...]:
    """How a judge run ended: its output, text and finish reason, or its error and raw."""
    try:
        outcome = run()
    except errors.RecordError as e:
        return (type(e), e.raw)
    return (outcome.output, outcome.output_text, outcome.finish_reason)

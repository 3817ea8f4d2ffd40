"""What a small model does under real vLLM's guided decoding, reproduced by the simulator:
raw control characters inside JSON strings, whitespace padding until max_tokens, strings
that never close unless the schema bounds them."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from ops.sim.answers import CONTROL_CHARS
from tests.ops.conftest import FleetFactory

MODEL = "sim-model"
FAST = ("--ttft", "0", "--itl", "0")
BOUNDED = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "reasoning": {"type": "string", "maxLength": 120},
        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 20}},
    },
    "required": ["score", "reasoning", "tags"],
    "additionalProperties": False,
}
UNBOUNDED = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reasoning": {"type": "string"}},
    "required": ["score", "reasoning"],
}


def ask(
    fleet_url: str, schema: dict[str, Any], n: int, *, max_tokens: int = 200
) -> list[tuple[str, str | None]]:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    with openai.OpenAI(base_url=fleet_url, api_key="sim", max_retries=0) as api:
        out = []
        for i in range(n):
            reply = api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"record {i}"}],
                max_tokens=max_tokens,
                response_format=fmt,  # type: ignore[arg-type]
            )
            out.append((reply.choices[0].message.content or "", reply.choices[0].finish_reason))
    return out


def test_control_characters_inside_strings_break_strict_json_only(
    start_sim: FleetFactory,
) -> None:
    fleet = start_sim(*FAST, "--control-char-rate", "0.5", "--seed", "5")
    answers = ask(fleet.urls[0], BOUNDED, 40)
    with_control = [t for t, _ in answers if any(c in t for c in CONTROL_CHARS)]
    assert 8 <= len(with_control) <= 32
    for text in with_control:
        with pytest.raises(json.JSONDecodeError, match="Invalid control character"):
            json.loads(text)
    for text, finish in answers:
        assert finish == "stop"
        # Lenient parsing takes every answer, and each is still valid against the schema:
        # the control character replaced a character, so maxLength holds.
        jsonschema.validate(json.loads(text, strict=False), BOUNDED)


def test_whitespace_padding_runs_json_to_max_tokens(start_sim: FleetFactory) -> None:
    fleet = start_sim(*FAST, "--whitespace-padding")
    for text, finish in ask(fleet.urls[0], BOUNDED, 3, max_tokens=50):
        assert finish == "length"
        assert text.startswith("{") and text[1:].strip() == ""


def test_unbounded_strings_never_close_but_bounded_ones_do(start_sim: FleetFactory) -> None:
    fleet = start_sim(*FAST, "--run-on-strings")
    for text, finish in ask(fleet.urls[0], UNBOUNDED, 5, max_tokens=60):
        assert finish == "length"
        assert text.startswith('{"score": ') and '"reasoning": "' in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text, strict=False)
    for text, finish in ask(fleet.urls[0], BOUNDED, 5, max_tokens=200):
        assert finish == "stop"
        jsonschema.validate(json.loads(text), BOUNDED)

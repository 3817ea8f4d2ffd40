"""Structured answers: schema-valid JSON, determinism, and invalid answers on purpose."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import openai
import pytest

from ops.sim.launcher import SimFleet
from ops.sim.schema_fill import fill_schema
from tests.ops.conftest import FleetFactory

MODEL = "sim-model"
JUDGE = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "reasoning": {"type": "string"},
    },
    "required": ["score", "reasoning"],
}
LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "clusters": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 3, "maxLength": 12},
                    "members": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
                    "kind": {"const": "cluster"},
                },
                "required": ["name", "members", "kind"],
            },
        }
    },
    "required": ["clusters"],
}
BOUNDS = {
    "type": "object",
    "properties": {
        "p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "t": {"type": "number", "minimum": -2.5, "maximum": -2.5},
        "n": {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
        "m": {"type": "integer", "minimum": 0, "multipleOf": 7},
    },
    "required": ["p", "t", "n", "m"],
}
DRAFT4 = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {
        "x": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True},
        "k": {"type": "integer", "minimum": 0, "maximum": 2, "exclusiveMaximum": True},
    },
    "required": ["x", "k"],
}
COMPOSED = {
    "$defs": {"Verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
    "type": "object",
    "properties": {
        "winner": {"$ref": "#/$defs/Verdict"},
        "maybe": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
        "either": {"oneOf": [{"type": "boolean"}, {"type": "integer"}]},
        "when": {"type": "string", "format": "date-time"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "minItems": 1},
        "both": {"allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                           {"properties": {"b": {"type": "null"}}, "required": ["b"]}]},
    },
    "required": ["winner", "maybe", "either", "when", "tags", "both"],
}  # fmt: skip
SCHEMAS = {
    "judge": JUDGE,
    "label": LABEL,
    "nested": NESTED,
    "bounds": BOUNDS,
    "composed": COMPOSED,
    "draft4": DRAFT4,
}


def client(fleet: SimFleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.urls[0], api_key="sim", max_retries=0)


def chat(api: openai.OpenAI, **body: Any) -> openai.types.chat.ChatCompletion:
    messages = body.pop("messages", [{"role": "user", "content": "Judge this answer."}])
    return api.chat.completions.create(model=MODEL, messages=messages, **body)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_filled_values_validate_for_many_seeds(name: str) -> None:
    schema = SCHEMAS[name]
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for seed in range(200):
        validator.validate(fill_schema(schema, random.Random(seed)))


@pytest.mark.parametrize("name", ["judge", "label", "nested", "bounds"])
def test_response_format_json_schema_answer_validates(fast_sim: SimFleet, name: str) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": SCHEMAS[name]},
    }
    with client(fast_sim) as api:
        reply = chat(api, response_format=response_format)
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMAS[name])
    assert reply.choices[0].finish_reason == "stop"


def test_structured_outputs_json_answer_validates(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        reply = chat(api, extra_body={"structured_outputs": {"json": JUDGE}})
    document = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(document, JUDGE)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == -(-len(reply.choices[0].message.content or "") // 4)


def test_guided_json_is_ignored_like_vllm_0_12(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        reply = chat(api, extra_body={"guided_json": JUDGE})
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.choices[0].message.content or "")


def test_json_object_and_choice(fast_sim: SimFleet) -> None:
    with client(fast_sim) as api:
        as_object = chat(api, response_format={"type": "json_object"})
        choice = chat(api, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert isinstance(json.loads(as_object.choices[0].message.content or ""), dict)
    assert choice.choices[0].message.content in ("yes", "no")


def test_same_seed_and_request_give_the_same_answer(
    fast_sim: SimFleet, start_sim: FleetFactory
) -> None:
    other_seed = start_sim("--seed", "8", "--ttft", "0", "--itl", "0")
    response_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": NESTED}}
    texts, documents = [], []
    for fleet in (fast_sim, fast_sim, other_seed):  # seeds 7, 7, 8
        with client(fleet) as api:
            texts.append(chat(api, max_tokens=40).choices[0].message.content)
            documents.append(chat(api, response_format=response_format).choices[0].message.content)
    assert texts[0] == texts[1]
    assert documents[0] == documents[1]
    assert texts[0] != texts[2]
    assert documents[0] != documents[2]


def _is_valid(text: str | None) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), JUDGE)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def test_invalid_json_rate_breaks_answers_but_a_re_ask_can_succeed(
    start_sim: FleetFactory,
) -> None:
    fleet = start_sim("--ttft", "0", "--itl", "0", "--invalid-json-rate", "0.5")
    response_format = {"type": "json_schema", "json_schema": {"name": "judge", "schema": JUDGE}}
    valid_first = valid_after_re_ask = 0
    with client(fleet) as api:
        for record in range(30):
            messages = [{"role": "user", "content": f"Judge record {record}"}]
            text = chat(api, messages=list(messages), response_format=response_format)
            text = text.choices[0].message.content
            again = chat(api, messages=list(messages), response_format=response_format)
            assert again.choices[0].message.content == text  # same request, same verdict
            if _is_valid(text):
                valid_first += 1
                continue
            for _ in range(8):  # re-ask: the conversation grows, so the verdict is drawn afresh
                messages += [
                    {"role": "assistant", "content": text or ""},
                    {"role": "user", "content": "That was not valid JSON. Answer with JSON only."},
                ]
                text = chat(api, messages=messages, response_format=response_format)
                text = text.choices[0].message.content
                if _is_valid(text):
                    valid_after_re_ask += 1
                    break
    assert 5 <= valid_first <= 25
    assert valid_first + valid_after_re_ask == 30

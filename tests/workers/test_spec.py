from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from workers.errors import OutputInvalidError, TemplateError
from workers.spec import (
    CUT_MARK,
    Spec,
    SpecError,
    builtin_spec_names,
    combine,
    load_spec,
    parse_answer,
    plan_requests,
    reask_messages,
    response_format,
)

JUDGE_RECORD = {"question": "What is the capital of Australia?", "answer": "Sydney."}


def write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- loading ------------------------------------------------------------------------------


def test_builtin_names_are_the_documented_five() -> None:
    assert builtin_spec_names() == ["analyze", "analyze-json", "classify", "judge", "pairwise"]


@pytest.mark.parametrize("name", ["judge", "pairwise", "analyze", "analyze-json"])
def test_each_builtin_loads_and_survives_a_json_round_trip(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert Spec.model_validate(stored) == spec


def test_classify_loads_with_labels_and_round_trips() -> None:
    spec = load_spec("classify", labels=["positive", "negative", "neutral"])
    assert spec.labels == ["positive", "negative", "neutral"]
    assert Spec.model_validate(spec.model_dump(mode="json")) == spec


def test_builtin_sampling_params_are_deterministic_for_graders() -> None:
    judge = load_spec("judge")
    assert judge.params["temperature"] == 0
    assert 256 <= judge.params["max_tokens"] <= 1024
    assert load_spec("pairwise").swap is True


def test_spec_is_frozen() -> None:
    spec = load_spec("judge")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        setattr(spec, "name", "other")  # noqa: B010 - mypy knows the field is read-only


def test_unknown_name_is_a_one_line_spec_error_listing_builtins() -> None:
    with pytest.raises(SpecError) as info:
        load_spec("jduge")
    message = str(info.value)
    assert "unknown spec 'jduge'" in message
    assert "judge" in message.split("built-in")[1]
    assert "\n" not in message


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found") as info:
        load_spec(str(tmp_path / "nope.toml"))
    assert "\n" not in str(info.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'template = "hi"\nparams = {temperature = }\n')
    with pytest.raises(SpecError, match="invalid TOML") as info:
        load_spec(str(path))
    assert "line 2" in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_json_schema_is_a_spec_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'template = "{{ text }}"\n[json_schema]\ntype = "object"\n'
        '[json_schema.properties.x]\ntype = "strnig"\n',
    )
    with pytest.raises(SpecError, match="invalid JSON Schema") as info:
        load_spec(str(path))
    assert "\n" not in str(info.value)


def test_template_syntax_error_is_a_spec_error_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'template = """\nQuestion: {{ question }\n"""\n')
    with pytest.raises(SpecError, match="template syntax error at line 1") as info:
        load_spec(str(path))
    assert "\n" not in str(info.value)


def test_unknown_field_and_reserved_param_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="tempalte"):
        load_spec(str(write(tmp_path, 'tempalte = "x"\ntemplate = "y"\n')))
    with pytest.raises(SpecError, match="params may not set model"):
        load_spec(str(write(tmp_path, 'template = "y"\n[params]\nmodel = "m"\n', "p.toml")))


def test_custom_spec_file_with_tables_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'system = "Be brief."\ntemplate = "Summarise: {{ text }}"\nmax_reasks = 1\n'
        "[params]\ntemperature = 0.3\nmax_tokens = 100\n"
        '[json_schema]\ntype = "object"\nrequired = ["summary"]\n'
        '[json_schema.properties.summary]\ntype = "string"\n',
        "summarise.toml",
    )
    spec = load_spec(str(path))
    assert spec.name == "summarise"
    assert spec.params == {"temperature": 0.3, "max_tokens": 100}
    assert spec.max_reasks == 1
    assert spec.json_schema is not None
    assert spec.json_schema["required"] == ["summary"]
    messages = plan_requests(spec, {"text": "long text"})[0]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise: long text"},
    ]


def test_custom_spec_takes_json_schema_as_an_inline_json_string(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"x": {"type": ["string", "null"]}}}
    path = write(
        tmp_path,
        f'name = "nullable"\ntemplate = "{{{{ a }}}}"\njson_schema = \'{json.dumps(schema)}\'\n',
    )
    spec = load_spec(str(path))
    assert spec.name == "nullable"
    assert spec.json_schema == schema


# --- rendering ----------------------------------------------------------------------------


def test_judge_renders_without_reference() -> None:
    [messages] = plan_requests(load_spec("judge"), JUDGE_RECORD)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "What is the capital of Australia?" in user
    assert "Sydney." in user
    assert "Reference answer" not in user


@pytest.mark.parametrize("reference", ["Canberra.", ""])
def test_judge_renders_reference_only_when_it_has_text(reference: str) -> None:
    [messages] = plan_requests(load_spec("judge"), {**JUDGE_RECORD, "reference": reference})
    user = messages[1]["content"]
    assert ("Reference answer" in user) is bool(reference)
    assert ("Canberra." in user) is bool(reference)


def test_missing_field_raises_template_render_error_naming_it() -> None:
    with pytest.raises(TemplateError, match=r"^template: 'answer' is undefined$"):
        plan_requests(load_spec("judge"), {"question": "Why?"})


def test_whole_record_and_non_identifier_fields_are_reachable(tmp_path: Path) -> None:
    spec = Spec(name="t", template='{{ record["my field"] }} / {{ record | length }}')
    assert plan_requests(spec, {"my field": "v", "b": 1})[0][0]["content"] == "v / 2"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ record.get.__self__ }}",
    ],
)
def test_sandbox_blocks_dunder_access(template: str) -> None:
    spec = Spec(name="evil", template=template)
    with pytest.raises(TemplateError, match="unsafe") as info:
        plan_requests(spec, {"x": "s"})
    assert "<class" not in str(info.value)


def test_template_cannot_change_the_record() -> None:
    record = {"tags": ["a"]}
    with pytest.raises(TemplateError, match="unsafe"):
        plan_requests(Spec(name="t", template="{{ tags.append('b') }}"), record)
    assert record == {"tags": ["a"]}


def test_runtime_template_failure_is_a_template_render_error() -> None:
    spec = Spec(name="t", template="{{ a + b }}")
    with pytest.raises(TemplateError, match=r"^template: "):
        plan_requests(spec, {"a": "text", "b": 3})


# --- classify -----------------------------------------------------------------------------


def test_classify_without_labels_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="needs labels"):
        load_spec("classify")


def test_classify_labels_fill_the_enum_and_the_prompt() -> None:
    spec = load_spec("classify", labels=["bug", "feature", "question"])
    assert spec.json_schema is not None
    assert spec.json_schema["properties"]["label"]["enum"] == ["bug", "feature", "question"]
    [messages] = plan_requests(spec, {"text": "It crashes on start."})
    assert "- bug\n- feature\n- question" in messages[0]["content"]
    assert "It crashes on start." in messages[1]["content"]


def test_labels_argument_overrides_labels_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'template = "{{ text }}"\nlabels = ["a", "b"]\n')
    assert load_spec(str(path)).labels == ["a", "b"]
    spec = load_spec(str(path), labels=["x", "y"])
    assert spec.labels == ["x", "y"]
    assert spec.json_schema is not None
    assert spec.json_schema["properties"]["label"]["enum"] == ["x", "y"]


@pytest.mark.parametrize("labels", [["a", "a"], ["a", " "]])
def test_bad_labels_are_spec_errors(labels: list[str]) -> None:
    with pytest.raises(SpecError):
        load_spec("classify", labels=labels)


def test_labels_for_a_spec_without_labels_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match="does not take labels"):
        load_spec("judge", labels=["a"])


def test_classify_parse_checks_the_label() -> None:
    spec = load_spec("classify", labels=["spam", "ham"])
    assert parse_answer(spec, '{"label": "spam", "confidence": 0.9}') == {
        "label": "spam",
        "confidence": 0.9,
    }
    assert parse_answer(spec, "ham") == {"label": "ham"}
    with pytest.raises(OutputInvalidError, match="eggs") as info:
        parse_answer(spec, '{"label": "eggs"}')
    assert info.value.raw == '{"label": "eggs"}'


# --- parsing and re-asking ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"score": 7, "reasoning": "Mostly right."}',
        '  \n{"score": 7, "reasoning": "Mostly right."}\n',
        '```json\n{"score": 7, "reasoning": "Mostly right."}\n```',
        'Here is my grade:\n```\n{"score": 7, "reasoning": "Mostly right."}\n```\nThanks.',
        '<think>It is fine.</think>\n{"score": 7, "reasoning": "Mostly right."}',
    ],
)
def test_parse_answer_accepts_valid_and_fenced_json(text: str) -> None:
    assert parse_answer(load_spec("judge"), text) == {"score": 7, "reasoning": "Mostly right."}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("The answer deserves a 7.", "invalid JSON"),
        ('{"score": 7, "reasoning": "ok"', "invalid JSON"),
        ("[7]", "not an object"),
        ('{"score": 11, "reasoning": "ok"}', "score"),
        ('{"score": "7", "reasoning": "ok"}', "not of type 'integer'"),
        ('{"score": 7}', "'reasoning' is a required property"),
        ('{"score": 7, "reasoning": "ok", "extra": 1}', "Additional properties"),
    ],
)
def test_parse_answer_rejects_bad_output_keeping_raw(text: str, needle: str) -> None:
    with pytest.raises(OutputInvalidError, match=needle) as info:
        parse_answer(load_spec("judge"), text)
    assert info.value.raw == text
    assert "\n" not in str(info.value)


def test_text_spec_answers_are_not_parsed() -> None:
    assert parse_answer(load_spec("analyze"), "Not JSON at all.") is None
    assert response_format(load_spec("analyze")) is None


def test_reask_messages_appends_the_bad_answer_and_the_correction() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    out = reask_messages(messages, "nope", "invalid JSON: Expecting value.")
    assert out[:2] == messages
    assert out[2] == {"role": "assistant", "content": "nope"}
    assert out[3] == {
        "role": "user",
        "content": "Your previous answer was invalid: invalid JSON: Expecting value. "
        "Answer again with only a JSON document matching the schema.",
    }
    assert len(messages) == 2  # the input list is left alone


def test_reask_messages_shortens_or_drops_the_bad_answer_to_fit() -> None:
    messages = [{"role": "user", "content": "u"}]
    cut = reask_messages(messages, "x" * 100, "invalid JSON", answer_chars=40)
    assert cut[1] == {"role": "assistant", "content": "x" * (40 - len(CUT_MARK)) + CUT_MARK}
    assert reask_messages(messages, "short", "invalid JSON", answer_chars=40)[1]["content"] == (
        "short"
    )
    dropped = reask_messages(messages, "x" * 100, "invalid JSON", answer_chars=0)
    assert [m["role"] for m in dropped] == ["user", "user"]
    assert dropped[1]["content"].startswith("Your previous answer was invalid: invalid JSON.")


def test_control_characters_inside_strings_parse_and_the_schema_still_decides() -> None:
    judge = load_spec("judge")
    text = '{"score": 7, "reasoning": "tab\there,\x0bvertical tab\nnewline"}'
    assert parse_answer(judge, text) == {
        "score": 7,
        "reasoning": "tab\there,\x0bvertical tab\nnewline",
    }
    fenced = 'Here:\n```json\n{"score": 7, "reasoning": "a\x0cb"}\n```'
    assert parse_answer(judge, fenced) == {"score": 7, "reasoning": "a\x0cb"}
    too_long = json.dumps({"score": 7, "reasoning": "y" * 601}).replace("yy", "y\ty", 1)
    with pytest.raises(OutputInvalidError) as caught:
        parse_answer(judge, too_long)
    # The 602-character value is not quoted: the point survives, and a re-ask stays short.
    assert str(caught.value) == (
        "schema violation: reasoning: violates maxLength 600 (has 602 characters)"
    )


def _strings_unbounded(schema: Any, where: str = "") -> list[str]:
    if not isinstance(schema, dict):
        return []
    found = []
    if schema.get("type") == "string" and not ({"maxLength", "enum", "const"} & schema.keys()):
        found.append(where or "(root)")
    if schema.get("type") == "array" and "maxItems" not in schema:
        found.append(where or "(root)")
    for name, sub in (schema.get("properties") or {}).items():
        found += _strings_unbounded(sub, f"{where}.{name}")
    found += _strings_unbounded(schema.get("items"), f"{where}[]")
    return found


@pytest.mark.parametrize("name", ["judge", "pairwise", "classify", "analyze", "analyze-json"])
def test_builtin_schemas_bound_every_string_and_max_tokens_fits_a_small_context(
    name: str,
) -> None:
    # A model that never closes a string stops at maxLength under guided decoding; without
    # it, the answer runs to max_tokens and is lost (finish_reason "length").
    spec = load_spec(name, labels=["a", "b"] if name == "classify" else None)
    assert _strings_unbounded(spec.json_schema) == []
    # Half of a 1,024-token context, the smallest vfleet is tested on, is left for the prompt.
    assert spec.params["max_tokens"] <= 512
    assert spec.keep_truncated is (spec.json_schema is None)


def test_keep_truncated_is_for_free_text_specs_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'template = "{{ q }}"\nkeep_truncated = true\n'
        'json_schema = \'{"type": "object", "properties": {"a": {"type": "string"}}}\'\n',
    )
    with pytest.raises(SpecError, match="keep_truncated is for free-text specs"):
        load_spec(str(path))


def test_response_format_shape() -> None:
    spec = load_spec("analyze-json")
    assert response_format(spec) == {
        "type": "json_schema",
        "json_schema": {"name": "analyze-json", "schema": spec.json_schema, "strict": True},
    }
    odd = Spec(name="my spec/v2", template="x", json_schema={"type": "object"})
    fmt = response_format(odd)
    assert fmt is not None
    assert fmt["json_schema"]["name"] == "my_spec_v2"


# --- pairwise -----------------------------------------------------------------------------


def test_pairwise_plans_two_requests_with_answers_swapped() -> None:
    record = {"question": "Q?", "answer_a": "first answer", "answer_b": "second answer"}
    first, second = plan_requests(load_spec("pairwise"), record)
    a_then_b = first[-1]["content"]
    b_then_a = second[-1]["content"]
    assert a_then_b.index("first answer") < a_then_b.index("second answer")
    assert b_then_a.index("second answer") < b_then_a.index("first answer")
    assert record["answer_a"] == "first answer"  # the record itself is not changed


def test_pairwise_without_answer_b_names_the_field() -> None:
    with pytest.raises(TemplateError, match="'answer_b' is undefined"):
        plan_requests(load_spec("pairwise"), {"question": "Q?", "answer_a": "x"})


@pytest.mark.parametrize(
    ("first", "second", "winner", "consistent"),
    [
        ("A", "B", "A", True),
        ("B", "A", "B", True),
        ("tie", "tie", "tie", True),
        ("A", "A", "tie", False),
        ("B", "tie", "tie", False),
    ],
)
def test_combine_unswaps_the_second_verdict(
    first: str, second: str, winner: str, consistent: bool
) -> None:
    verdicts: list[dict[str, Any] | None] = [
        {"winner": first, "reasoning": "r1"},
        {"winner": second, "reasoning": "r2"},
    ]
    result = combine(load_spec("pairwise"), verdicts)
    assert result is not None
    assert result["winner"] == winner
    assert result["consistent"] is consistent
    assert result["verdicts"] == verdicts


def test_combine_single_answer_is_itself() -> None:
    answer = {"score": 3, "reasoning": "r"}
    assert combine(load_spec("judge"), [answer]) is answer
    assert combine(load_spec("analyze"), [None]) is None
    with pytest.raises(ValueError, match="expects 1"):
        combine(load_spec("judge"), [answer, answer])


def test_swap_requires_a_winner_property() -> None:
    with pytest.raises(ValueError, match="winner"):
        Spec(name="s", template="x", swap=True)

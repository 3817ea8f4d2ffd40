"""Task specs: what a batch asks of each record, and how the answer is checked.

A spec is a TOML file with these fields (all but ``template`` optional)::

    name = "judge"                 # defaults to the file's stem
    system = "You are ..."         # system message (a Jinja2 template too)
    template = "Question: {{ question }} ..."   # user message, Jinja2 over the record
    swap = false                   # pairwise position swap: ask twice, A/B swapped
    max_reasks = 2                 # re-asks after an invalid structured answer
    labels = ["pos", "neg"]        # classify: the allowed labels ([] = given at enqueue)
    votes = 1                      # ask N times (seeds seed, seed+1, ...) and aggregate
    keep_truncated = false         # free text: keep an answer cut by max_tokens as it is
    mode = "template"              # "openai": each record is an OpenAI batch line, sent as is

    [params]                       # passed to chat.completions.create as they are
    temperature = 0
    max_tokens = 512

    [json_schema]                  # JSON Schema (draft 2020-12) of the answer; an object
    type = "object"
    ...

``json_schema`` may also be an inline JSON string (``json_schema = '{"type": "object", ...}'``),
which is handier for schemas with ``null`` in them, as TOML has no null.

Templates are rendered in an immutable Jinja2 sandbox with ``StrictUndefined``, bounded in
time and output size (:mod:`workers.templates`): each field
of the record is a top-level variable, ``record`` is the whole record (for field names that
are not identifiers: ``record["my field"]``) and ``labels`` is the spec's label list.
``record`` and ``labels`` win over record fields of the same name.

Classification: a spec that has ``labels`` (even an empty list) needs labels, from the file or
from :func:`load_spec`'s ``labels`` argument, which overrides the file. The labels become the
``enum`` of the schema's ``label`` property; a labelled spec without a schema gets
``{"label": <enum>}``.

Pairwise swap: with ``swap = true`` each record is asked twice, the second time with
``answer_a`` and ``answer_b`` exchanged; :func:`combine` un-swaps the second verdict and
reports whether the two agree.

Votes: with ``votes = N`` every request is asked N times with seeds ``seed``, ``seed + 1``...
(``params.seed``, default 0) and :func:`aggregate_votes` keeps the mean score or the majority
label/winner with the spread of the votes.

Answers cut by ``max_tokens`` (finish_reason ``length``): a structured answer that does not
parse is failed as truncated, never re-asked (the re-ask would be cut again and costs more
context); a free-text answer is failed the same way unless ``keep_truncated`` keeps it (the
record's ``finish_reason`` then says it was cut). JSON answers are parsed leniently: raw
control characters inside strings, which strict JSON forbids and small models emit, are
accepted; the schema still decides.

OpenAI batch files: the spec named ``openai`` (:func:`openai_spec`, ``mode = "openai"``; not
a TOML file) renders nothing; each
record is a batch line (``custom_id``, ``method``, ``url``, ``body``) whose body the worker
sends as it is, with the instance's model (:data:`OPENAI_PATHS` lists the URLs served).

A name given to :func:`load_spec` is a built-in spec (``workers/specs/<name>.toml``) if one
exists; anything else is read as a path (write ``./judge`` for a local file named ``judge``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.resources
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jinja2
import jsonschema
import pydantic

from workers import errors, templates
from workers.errors import ConfigError

LABEL_FIELD = "label"
"""The property of a classify answer that holds the label."""

WINNER_FIELD = "winner"
"""The property of a pairwise answer that holds the verdict."""

SWAP_FIELDS = ("answer_a", "answer_b")
"""The record fields exchanged for the second, swapped, pairwise request."""

UNSWAP = {"A": "B", "B": "A", "tie": "tie"}
"""A verdict given on swapped positions, mapped back to the original positions."""

RESERVED_PARAMS = frozenset({"model", "messages", "response_format", "stream", "n"})
"""Request fields the worker sets itself; a spec may not set them (the worker reads one choice)."""

REASK_TEMPLATE = (
    "Your previous answer was invalid: {error}. "
    "Answer again with only a JSON document matching the schema."
)

CUT_MARK = " [...]"
"""Ends an invalid answer shortened to fit a re-ask into the context."""

OPENAI_PATHS = {"/v1/chat/completions": "/chat/completions", "/v1/completions": "/completions"}
"""OpenAI batch line URLs the fleet serves, and their path relative to an instance's /v1."""

OPENAI_SPEC_NAME = "openai"
"""The name :func:`load_spec` answers with :func:`openai_spec`."""

FINGERPRINT_VERSION = 1
"""Bump when what :func:`work_fingerprint` covers changes: old results stop matching."""

MAX_ERROR_CHARS = 300
"""Validation messages are cut to this length: they go back to the model in a re-ask."""

SHORT_ERROR_CHARS = 120
"""A validator's message longer than this quotes the value: it is replaced by what failed."""

_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.DOTALL)
_THINK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
_LENIENT = json.JSONDecoder(strict=False)

# Errors that rendering a user's template over a user's record may raise: all of them mean
# this record can never render, so they become a permanent TemplateError.
_RENDER_ERRORS = (
    jinja2.TemplateError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
)


class SpecError(ConfigError):
    """A spec file is wrong, a spec name is unknown or labels are missing (user error)."""


class Spec(pydantic.BaseModel):
    """What a batch asks of each record. Rebuild a stored one with ``Spec.model_validate``."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(min_length=1)
    system: str | None = None
    template: str = pydantic.Field(min_length=1)
    params: dict[str, Any] = {}
    json_schema: dict[str, Any] | None = None
    labels: list[str] | None = None
    swap: bool = False
    max_reasks: int = pydantic.Field(default=2, ge=0, le=10)
    votes: int = pydantic.Field(default=1, ge=1, le=25)
    mode: Literal["template", "openai"] = "template"
    keep_truncated: bool = False

    @pydantic.field_validator("json_schema", mode="before")
    @classmethod
    def _schema_from_json_string(cls, value: Any) -> Any:
        return _schema_from_string(value)

    @pydantic.field_validator("system", "template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                templates.compile_template(value)
            except jinja2.TemplateSyntaxError as e:
                raise ValueError(f"template syntax error at line {e.lineno}: {e.message}") from e
        return value

    @pydantic.field_validator("params")
    @classmethod
    def _params_not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_PARAMS & value.keys())
        if reserved:
            raise ValueError(f"params may not set {', '.join(reserved)} (the worker sets them)")
        return value

    @pydantic.field_validator("json_schema")
    @classmethod
    def _schema_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(value)
            except jsonschema.SchemaError as e:
                where = "/".join(str(p) for p in e.path) or "(root)"
                raise ValueError(f"invalid JSON Schema at {where}: {e.message}") from e
            if value.get("type") != "object":
                raise ValueError('json_schema must describe an object ("type": "object")')
        return value

    @pydantic.field_validator("labels")
    @classmethod
    def _labels_valid(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            _check_labels(value)
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Spec:
        if self.labels is not None:
            enum = _label_enum(self.json_schema)
            if enum != self.labels:
                raise ValueError(
                    f"json_schema properties.{LABEL_FIELD}.enum must equal labels {self.labels}"
                )
        if self.swap and _property(self.json_schema, WINNER_FIELD) is None:
            raise ValueError(f"swap needs a json_schema with a '{WINNER_FIELD}' property")
        if self.mode == "openai" and (
            self.swap or self.json_schema or self.labels is not None or self.votes > 1
        ):
            raise ValueError(
                "mode 'openai' sends bodies as they are: no swap, schema, labels, votes"
            )
        if self.keep_truncated and self.json_schema is not None:
            raise ValueError("keep_truncated is for free-text specs: cut JSON is never valid")
        return self


def builtin_spec_names() -> list[str]:
    """Return the names of the built-in specs, sorted."""
    specs = importlib.resources.files("workers") / "specs"
    return sorted(p.name.removesuffix(".toml") for p in specs.iterdir() if p.name.endswith(".toml"))


def load_spec(name_or_path: str, *, labels: Sequence[str] | None = None) -> Spec:
    """Load a built-in spec by name, or a spec from a TOML file.

    ``labels`` replaces the spec's labels and the enum of its schema's ``label`` property.

    Returns the validated :class:`Spec`.
    Raises :class:`SpecError` (one line) for an unknown name, a missing or unreadable file,
    a TOML syntax error, an invalid field, schema or template, and missing or bad labels.
    """
    if name_or_path == OPENAI_SPEC_NAME:
        if labels is not None:
            raise SpecError("spec 'openai' does not take labels")
        return openai_spec()
    source, data = _read_spec_file(name_or_path)
    data.setdefault("name", source.stem)
    if labels is not None:
        if "labels" not in data:
            raise SpecError(f"spec {data['name']!r} does not take labels")
        data["labels"] = [str(label).strip() for label in labels]
    if "labels" in data:
        data = _inject_labels(data)
    try:
        return Spec.model_validate(data)
    except pydantic.ValidationError as e:
        raise SpecError(f"spec {source}: {_one_line(e)}") from e


def openai_spec() -> Spec:
    """The spec of batches enqueued from OpenAI batch files: bodies are sent as they are."""
    return Spec(name=OPENAI_SPEC_NAME, mode="openai", template="{{ body }}", max_reasks=0)


def work_fingerprint(spec: Spec, model: str) -> Callable[[Mapping[str, Any]], str]:
    """Return a function giving a record's fingerprint under ``spec`` and ``model``.

    The fingerprint (64 hex digits) covers the record's input, the spec's whole content
    (prompts, schema, labels, votes) with its sampling parameters, and the model: equal
    fingerprints mean the same work, whose stored result can be reused.
    """
    head = hashlib.sha256()
    head.update(_canonical({"v": FINGERPRINT_VERSION, "model": model, "spec": spec.model_dump()}))

    def fingerprint(record: Mapping[str, Any]) -> str:
        h = head.copy()
        h.update(b"\0")
        h.update(_canonical(record))
        return h.hexdigest()

    return fingerprint


def _canonical(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


def plan_requests(spec: Spec, record: Mapping[str, Any]) -> list[list[dict[str, str]]]:
    """Return the chat message lists to send for one record.

    One list normally; with ``swap`` two: as given, then with ``answer_a``/``answer_b``
    exchanged.
    Raises :class:`errors.TemplateError` naming the missing field or the template's failure.
    """
    plans = [_render_messages(spec, record)]
    if spec.swap:
        missing = [f for f in SWAP_FIELDS if f not in record]
        if missing:
            raise errors.TemplateError(f"template: {missing[0]!r} is undefined")
        first, second = SWAP_FIELDS
        swapped = {**record, first: record[second], second: record[first]}
        plans.append(_render_messages(spec, swapped))
    return plans


def response_format(spec: Spec) -> dict[str, Any] | None:
    """Return the ``response_format`` request field for the spec, or None for free text."""
    if spec.json_schema is None:
        return None
    name = _SAFE_NAME_RE.sub("_", spec.name)[:64]
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": spec.json_schema, "strict": True},
    }


def parse_answer(spec: Spec, text: str) -> dict[str, Any] | None:
    """Parse and validate the model's answer.

    Accepts surrounding whitespace, a leading ``<think>...</think>`` block, a fenced
    ```` ```json ```` block and an object after some prose. For a labelled spec a bare
    label (``positive``) is accepted as ``{"label": "positive"}``.
    Returns the answer as a dict, or None for a free-text spec (the caller keeps the text).
    Raises :class:`workers.errors.OutputInvalidError` (with ``raw=text``) if the answer is
    not JSON, not an object, not valid against the schema, or its label is not one of the
    spec's labels.
    """
    if spec.json_schema is None:
        return None
    answer = _load_json(spec, text)
    validator = _validator(spec.json_schema)
    # best_match walks every error; on the hot path almost every answer is valid.
    error = (
        None
        if validator.is_valid(answer)
        else jsonschema.exceptions.best_match(validator.iter_errors(answer))
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        message = _schema_message(error)
        message = f"{where}: {message}" if where else message
        raise errors.OutputInvalidError(_cut(f"schema violation: {message}"), raw=text)
    if spec.labels is not None and answer.get(LABEL_FIELD) not in spec.labels:
        raise errors.OutputInvalidError(
            _cut(f"label {answer.get(LABEL_FIELD)!r} is not one of {spec.labels}"), raw=text
        )
    return answer


def _schema_message(error: jsonschema.ValidationError) -> str:
    """The validator's message, or, when it quotes a long value ("'...' is too long"), what
    was violated without the value: it goes back to the model in a re-ask, whose room in
    the context is short, and a message cut at MAX_ERROR_CHARS would lose its point."""
    if len(error.message) <= SHORT_ERROR_CHARS:
        return error.message
    size = ""
    if isinstance(error.instance, str | list | dict):
        unit = "characters" if isinstance(error.instance, str) else "items"
        size = f" (has {len(error.instance)} {unit})"
    return f"violates {error.validator} {error.validator_value!r}{size}"


def reask_messages(
    messages: list[dict[str, str]],
    bad_text: str,
    error: str,
    *,
    answer_chars: int | None = None,
) -> list[dict[str, str]]:
    """Return ``messages`` followed by the invalid answer and a request to answer again.

    ``answer_chars`` bounds how much of the invalid answer goes back (to fit the context):
    None sends it whole, a smaller number its beginning with :data:`CUT_MARK`, 0 none of it
    (the correction alone follows the original messages).
    """
    reask = {"role": "user", "content": REASK_TEMPLATE.format(error=error.rstrip().rstrip("."))}
    if answer_chars is not None and answer_chars <= 0:
        return [*messages, reask]
    if answer_chars is not None and len(bad_text) > answer_chars:
        bad_text = bad_text[: max(0, answer_chars - len(CUT_MARK))] + CUT_MARK
    return [*messages, {"role": "assistant", "content": bad_text}, reask]


def combine(spec: Spec, parsed: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Combine the parsed answers of one record's requests into its result.

    One answer: returned as it is. Two (pairwise swap): the second verdict is un-swapped;
    returns ``{"winner", "consistent", "verdicts", "winners"}`` where ``winner`` is the
    agreed verdict, or ``"tie"`` with ``consistent`` False when the two disagree.
    Raises ValueError if the number or shape of the answers does not fit the spec.
    """
    expected = 2 if spec.swap else 1
    if len(parsed) != expected:
        raise ValueError(f"spec {spec.name!r} expects {expected} answer(s), got {len(parsed)}")
    if not spec.swap:
        return parsed[0]
    first, second = parsed
    if first is None or second is None:
        raise ValueError("pairwise swap needs two parsed answers")
    winners = [str(first.get(WINNER_FIELD)), UNSWAP.get(str(second.get(WINNER_FIELD)), "?")]
    consistent = winners[0] == winners[1]
    return {
        WINNER_FIELD: winners[0] if consistent else "tie",
        "consistent": consistent,
        "winners": winners,
        "verdicts": [first, second],
    }


# --- loading ------------------------------------------------------------------------------


def _read_spec_file(name_or_path: str) -> tuple[Path, dict[str, Any]]:
    is_name = "/" not in name_or_path and "\\" not in name_or_path
    builtin = importlib.resources.files("workers") / "specs" / f"{name_or_path}.toml"
    if is_name and builtin.is_file():
        text = builtin.read_text(encoding="utf-8")
        source = Path(f"{name_or_path}.toml")
    else:
        source = Path(name_or_path)
        if is_name and not source.suffix and not source.exists():
            names = ", ".join(builtin_spec_names())
            raise SpecError(f"unknown spec {name_or_path!r} (built-in: {names}; or a .toml path)")
        try:
            text = source.read_text(encoding="utf-8-sig")
        except FileNotFoundError as e:
            raise SpecError(f"spec file not found: {name_or_path}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"cannot read spec file {source}: {e}") from e
    try:
        return source, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"spec {source}: invalid TOML: {e}") from e


def _inject_labels(data: dict[str, Any]) -> dict[str, Any]:
    labels = data["labels"]
    if not isinstance(labels, list):
        return data  # pydantic reports the type error
    if not labels:
        raise SpecError(f"spec {data['name']!r} needs labels: give them in the spec or at enqueue")
    try:
        _check_labels(labels)
    except ValueError as e:
        raise SpecError(f"spec {data['name']!r}: {e}") from e
    try:
        schema = _schema_from_string(data.get("json_schema"))
    except ValueError as e:
        raise SpecError(f"spec {data['name']!r}: {e}") from e
    if schema is None:
        schema = {
            "type": "object",
            "properties": {LABEL_FIELD: {"type": "string"}},
            "required": [LABEL_FIELD],
            "additionalProperties": False,
        }
    schema = copy.deepcopy(schema)
    prop = _property(schema, LABEL_FIELD)
    if prop is None:
        raise SpecError(f"spec {data['name']!r} has labels but no '{LABEL_FIELD}' property")
    prop["enum"] = list(labels)
    return {**data, "json_schema": schema}


def _schema_from_string(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema is not valid JSON: {e}") from e
    return value


def _check_labels(labels: list[str]) -> None:
    if not labels:
        raise ValueError("labels must not be empty")
    if any(not isinstance(label, str) or not label.strip() for label in labels):
        raise ValueError("labels must be non-empty strings")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}")


def _property(schema: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if not isinstance(schema, dict):
        return None
    props = schema.get("properties")
    prop = props.get(name) if isinstance(props, dict) else None
    return prop if isinstance(prop, dict) else None


def _label_enum(schema: dict[str, Any] | None) -> list[Any] | None:
    prop = _property(schema, LABEL_FIELD)
    enum = prop.get("enum") if prop is not None else None
    return enum if isinstance(enum, list) else None


def _one_line(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    text = f"{where}: {message}{more}" if where else f"{message}{more}"
    return " ".join(text.split())


# --- rendering and parsing ----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _validator_for(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft202012Validator]] = {}


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # A spec's schema is one dict for the life of the process: find its validator by
    # identity first (the entry keeps the dict alive, so its id is not reused), and by
    # content only the first time, which is what costs a dumps.
    entry = _VALIDATORS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    if len(_VALIDATORS) < 256:
        _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def _render(source: str, context: Mapping[str, Any]) -> str:
    try:
        return templates.render(source, context)
    except _RENDER_ERRORS as e:
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        raise errors.TemplateError(" ".join(f"template: {message}".split())) from e


def _render_messages(spec: Spec, record: Mapping[str, Any]) -> list[dict[str, str]]:
    context = {**record, "record": dict(record), "labels": spec.labels}
    messages = []
    if spec.system is not None:
        messages.append({"role": "system", "content": _render(spec.system, context)})
    messages.append({"role": "user", "content": _render(spec.template, context)})
    return messages


def _load_json(spec: Spec, text: str) -> dict[str, Any]:
    body = _THINK_RE.sub("", text, count=1).strip()
    try:
        # strict=False: raw control characters inside strings (a tab, a form feed) are
        # accepted. Small models emit them under guided decoding; the schema still decides.
        answer = json.loads(body, strict=False)
    except json.JSONDecodeError as e:
        answer = _salvage_json(spec, body)
        if answer is None:
            raise errors.OutputInvalidError(_cut(f"invalid JSON: {e}"), raw=text) from e
    if not isinstance(answer, dict):
        raise errors.OutputInvalidError(
            f"answer is a JSON {type(answer).__name__}, not an object", raw=text
        )
    return answer


def _salvage_json(spec: Spec, body: str) -> Any:
    """Return the JSON in a fenced block, the first object in prose, a bare label, or None."""
    fenced = _FENCE_RE.search(body)
    candidates = [fenced.group(1)] if fenced is not None else []
    if "{" in body:
        candidates.append(body[body.index("{") :])
    for candidate in candidates:
        try:
            return _LENIENT.raw_decode(candidate.strip())[0]
        except json.JSONDecodeError:
            continue
    bare = body.strip("\"'.` ")
    if spec.labels is not None and bare in spec.labels:
        return {LABEL_FIELD: bare}
    return None


def _cut(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."

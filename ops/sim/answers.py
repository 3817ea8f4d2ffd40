"""Deterministic answers: the same seed and request body always give the same answer.

* plain text: ``N`` words from a small vocabulary, ``N`` drawn from ``--output-tokens``; each word
  is one completion token;
* a JSON Schema (``response_format`` json_schema or ``structured_outputs.json``): a document
  valid against it; ``json_object``: some JSON object; ``structured_outputs.choice``: one choice.
  JSON text is cut into 4-character pieces, one completion token each, so its length follows the
  schema, not ``--output-tokens``;
* every answer is capped by ``max_tokens`` / ``max_completion_tokens`` and the context left;
  a capped answer ends with ``finish_reason: "length"`` (and capped JSON is invalid, as in vLLM).

``--invalid-json-rate`` makes that fraction of JSON answers invalid on purpose. The decision
hashes the whole request body, so a re-ask (which adds messages) is decided afresh.

What a small model does under vLLM's guided decoding, on request:

* ``--control-char-rate``: that fraction of JSON answers holds a raw control character (tab,
  vertical tab, form feed...) inside a string, which strict JSON parsers refuse;
* ``--whitespace-padding``: JSON is padded with whitespace until ``max_tokens`` and never
  ends, as on a server without ``disable_any_whitespace``;
* ``--run-on-strings``: a string the schema does not bound (no ``maxLength``, ``enum``,
  ``const``, ``format``) is never closed, so the answer runs to ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from ops.sim.protocol import CHARS_PER_TOKEN, SimRequest, Structured
from ops.sim.schema_fill import fill_schema
from ops.sim.vocabulary import WORDS


@dataclass(frozen=True)
class AnswerPolicy:
    """The instance options that shape answers."""

    seed: int
    output_tokens: tuple[int, int]
    max_model_len: int
    invalid_json_rate: float = 0.0
    control_char_rate: float = 0.0
    whitespace_padding: bool = False
    run_on_strings: bool = False


@dataclass(frozen=True)
class Answer:
    """An answer cut into completion tokens."""

    pieces: tuple[str, ...]
    finish_reason: str

    @property
    def text(self) -> str:
        """The whole answer."""
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        """How many tokens the answer counts for in ``usage``."""
        return len(self.pieces)


def _rng(seed: int, key: str, purpose: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{purpose}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def text_pieces(rng: random.Random, count: int) -> list[str]:
    """``count`` words, the first capitalised, the last ending a sentence."""
    words = rng.choices(WORDS, k=count)
    words[0] = words[0].capitalize()
    words[-1] += "."
    return [words[0], *(" " + word for word in words[1:])]


def json_pieces(text: str) -> list[str]:
    """JSON text cut into roughly token-sized pieces."""
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)] or [""]


def _structured_value(structured: Structured, rng: random.Random) -> Any:
    if structured.kind == "json_schema" and structured.schema is not None:
        return fill_schema(structured.schema, rng)
    words = text_pieces(rng, rng.randint(3, 12))
    return {"answer": "".join(words)}


def _invalid_text(document: str, structured: Structured, rng: random.Random) -> str:
    """Text that is not valid: prose around a cut JSON, or valid JSON of the wrong shape."""
    wants_object = structured.schema is None or structured.schema.get("type") == "object"
    if wants_object and rng.random() < 0.5:
        return json.dumps([document])  # a JSON array where an object is required
    return "Sure! Here is the JSON you asked for: " + document[: max(1, len(document) // 2)]


def _cap(request: SimRequest, policy: AnswerPolicy) -> int:
    room = policy.max_model_len - request.prompt_tokens
    if request.max_tokens is not None:
        room = min(room, request.max_tokens)
    return max(1, room)


CONTROL_CHARS = ("\t", "\n", "\x0b", "\x0c", "\x15", "\x1b")
"""Raw control characters a small model puts inside JSON strings."""

_MARK = "\ue000"  # a private-use character standing for a spot in the JSON text


def _string_paths(value: Any, schema: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of the string leaves of ``value``, with whether ``schema`` bounds each."""
    found: list[tuple[Any, ...]] = []
    sub = schema if isinstance(schema, dict) else {}
    if isinstance(value, str):
        bounded = any(k in sub for k in ("maxLength", "enum", "const", "format"))
        found.append((*path, bounded))
    elif isinstance(value, dict):
        declared = sub.get("properties")
        props: dict[str, Any] = declared if isinstance(declared, dict) else {}
        for key, item in value.items():
            found += _string_paths(item, props.get(key, {}), (*path, key))
    elif isinstance(value, list):
        items = sub.get("items", {})
        for index, item in enumerate(value):
            found += _string_paths(item, items, (*path, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _with_control_char(value: Any, schema: Any, rng: random.Random) -> str | None:
    """The JSON text of ``value`` with a raw control character in one of its strings."""
    paths = [p[:-1] for p in _string_paths(value, schema) if _get(value, p[:-1])]
    if not paths:
        return None
    path = rng.choice(paths)
    text = _get(value, path)
    at = rng.randrange(len(text))
    # Replaces a character, so a bounded string keeps its length.
    marked = _replace(value, path, text[:at] + _MARK + text[at + 1 :])
    return json.dumps(marked, ensure_ascii=False).replace(_MARK, rng.choice(CONTROL_CHARS))


def _run_on(value: Any, schema: Any, rng: random.Random, cap: int) -> list[str] | None:
    """The pieces of an answer whose first unbounded string never ends, or None."""
    paths = [p[:-1] for p in _string_paths(value, schema) if not p[-1]]
    if not paths:
        return None
    text = json.dumps(_replace(value, paths[0], _MARK), ensure_ascii=False)
    head = json_pieces(text[: text.index(_MARK)])
    return head + text_pieces(rng, max(1, cap - len(head) + 1))  # one past: cut


def _structured_pieces(
    request: SimRequest, structured: Structured, policy: AnswerPolicy, cap: int
) -> list[str]:
    rng = _rng(policy.seed, request.key, "answer")
    if structured.kind == "choice":
        return json_pieces(rng.choice(structured.choices))
    value = _structured_value(structured, rng)
    if policy.whitespace_padding:
        return ["{", *[" "] * cap]
    schema = structured.schema if structured.kind == "json_schema" else None
    if policy.run_on_strings:
        run_on = _run_on(value, schema, rng, cap)
        if run_on is not None:
            return run_on
    document = json.dumps(value, ensure_ascii=False)
    verdict = _rng(policy.seed, request.key, "invalid")
    if verdict.random() < policy.invalid_json_rate:
        document = _invalid_text(document, structured, verdict)
    elif _rng(policy.seed, request.key, "control").random() < policy.control_char_rate:
        document = _with_control_char(value, schema, verdict) or document
    return json_pieces(document)


def make_answer(request: SimRequest, policy: AnswerPolicy) -> Answer:
    """The deterministic answer to ``request`` under ``policy``."""
    cap = _cap(request, policy)
    structured = request.structured
    if structured is None:
        rng = _rng(policy.seed, request.key, "answer")
        low, high = policy.output_tokens
        wanted = rng.randint(low, high)
        pieces = text_pieces(rng, min(wanted, cap))
        return Answer(tuple(pieces), "length" if wanted > cap else "stop")
    pieces = _structured_pieces(request, structured, policy, cap)
    if len(pieces) > cap:
        return Answer(tuple(pieces[:cap]), "length")
    return Answer(tuple(pieces), "stop")

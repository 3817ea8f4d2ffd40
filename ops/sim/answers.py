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


def make_answer(request: SimRequest, policy: AnswerPolicy) -> Answer:
    """The deterministic answer to ``request`` under ``policy``."""
    rng = _rng(policy.seed, request.key, "answer")
    cap = _cap(request, policy)
    structured = request.structured
    if structured is None:
        low, high = policy.output_tokens
        wanted = rng.randint(low, high)
        pieces = text_pieces(rng, min(wanted, cap))
        return Answer(tuple(pieces), "length" if wanted > cap else "stop")
    if structured.kind == "choice":
        pieces = json_pieces(rng.choice(structured.choices))
    else:
        document = json.dumps(_structured_value(structured, rng), ensure_ascii=False)
        verdict = _rng(policy.seed, request.key, "invalid")
        if verdict.random() < policy.invalid_json_rate:
            document = _invalid_text(document, structured, verdict)
        pieces = json_pieces(document)
    if len(pieces) > cap:
        return Answer(tuple(pieces[:cap]), "length")
    return Answer(tuple(pieces), "stop")

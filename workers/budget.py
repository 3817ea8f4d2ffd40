"""Token budgets without a tokenizer: does a request fit the model's context?

vfleet does not hold the served model's tokenizer, so it counts with upper bounds that hold
for the tokenizers vLLM serves:

* a text of N UTF-8 bytes is at most N + 1 tokens: every byte-level BPE token (GPT-2,
  Llama 3, Qwen) covers at least one byte, and SentencePiece with byte fallback (Llama 2,
  Mistral) spends at most one token per byte, plus its leading-space piece;
* the chat template adds at most :data:`MESSAGE_OVERHEAD` tokens around each message (role
  headers and end-of-turn tokens are 3 to 6 in the common templates).

What the server has already counted is exact: the first request's ``prompt_tokens`` comes
from ``usage``, so only what a re-ask adds is estimated, and it is overestimated (about
four times, for English), never under.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MESSAGE_OVERHEAD = 16
"""Tokens of chat template each added message may cost, beyond its text (generous)."""

MIN_ANSWER_TOKENS = 32
"""Below this many tokens of room, an invalid answer is dropped from a re-ask, not cut."""


def text_tokens(text: str) -> int:
    """An upper bound on the tokens of ``text``: its UTF-8 bytes plus one."""
    return len(text.encode("utf-8")) + 1


def max_tokens_of(params: Mapping[str, Any]) -> int | None:
    """The completion budget a request asks for (``max_completion_tokens`` wins, as in vLLM)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def prefix_for(text: str, tokens: int) -> int:
    """How many characters of ``text`` fit in ``tokens`` by :func:`text_tokens`' count."""
    budget = tokens - 1
    if budget <= 0:
        return 0
    used = 0
    for i, ch in enumerate(text):
        used += len(ch.encode("utf-8"))
        if used > budget:
            return i
    return len(text)


def messages_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound on the prompt tokens of ``messages``, template included."""
    return sum(text_tokens(m.get("content") or "") + MESSAGE_OVERHEAD for m in messages)


def reask_room(
    *,
    max_model_len: int,
    prompt_tokens: int,
    reserve: int,
    correction: str,
) -> int | None:
    """Tokens left for the invalid answer's text in a re-ask.

    The re-ask is the prompt (``prompt_tokens``), the invalid answer and the ``correction``
    message, with ``reserve`` tokens left for the new answer. Returns the room for the
    answer's text (below :data:`MIN_ANSWER_TOKENS`: drop it), or None when even the
    prompt and the correction alone leave less than ``reserve``.
    """
    alone = prompt_tokens + MESSAGE_OVERHEAD + text_tokens(correction) + reserve
    if alone > max_model_len:
        return None
    return max_model_len - alone - MESSAGE_OVERHEAD

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
from dataclasses import dataclass
from typing import Any

MESSAGE_OVERHEAD = 16
"""Tokens of chat template each added message may cost, beyond its text (generous)."""

MIN_ANSWER_TOKENS = 32
"""Below this many tokens of room, an invalid answer is dropped from a re-ask, not cut."""

NEED_MARGIN = 32
"""A re-ask's answer gets room for the last answer's length plus this many tokens."""


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


@dataclass(frozen=True)
class ReaskFit:
    """How a re-ask fits the context: room for the invalid answer's text (0: leave it out)
    and the completion budget (``max_tokens``) to send with it."""

    answer_tokens: int
    max_tokens: int


def fit_reask(
    *,
    max_model_len: int,
    prompt_tokens: int,
    max_tokens: int,
    need: int,
    correction: str,
    answer: str,
) -> ReaskFit | None:
    """Fit a re-ask (prompt, invalid answer, correction) into ``max_model_len``.

    In order of preference: the whole answer with the full ``max_tokens``; the answer cut
    (or left out) to keep ``max_tokens``; no answer and a ``max_tokens`` lowered to what is
    left, if that is at least ``need`` (what the new answer should take: about as much as
    the last one). None when not even that fits.
    """
    base = prompt_tokens + MESSAGE_OVERHEAD + text_tokens(correction)
    whole = text_tokens(answer) + MESSAGE_OVERHEAD
    if base + whole + max_tokens <= max_model_len:
        return ReaskFit(whole - MESSAGE_OVERHEAD, max_tokens)
    room = max_model_len - base - max_tokens - MESSAGE_OVERHEAD
    if room >= MIN_ANSWER_TOKENS:
        return ReaskFit(room, max_tokens)
    left = max_model_len - base
    if left >= min(need, max_tokens):
        return ReaskFit(0, min(left, max_tokens))
    return None

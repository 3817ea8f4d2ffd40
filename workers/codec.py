"""The lean codec of the OpenAI API: the request bodies vfleet sends and what it reads back.

Plain dicts in, small frozen dataclasses out: no typed request or response models (building
those costs more CPU than the call on a fast instance). Both clients use it, so they send
the same bytes and read the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers import errors


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


@dataclass(frozen=True)
class RawResponse:
    """The answer to a body sent as it is: what an OpenAI batch output line holds."""

    status_code: int
    request_id: str
    body: dict[str, Any]


def completion_of(data: dict[str, Any]) -> Completion:
    """The first choice of a chat completion answer. Raises :class:`errors.ServerError`
    when the answer is not one."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
        return Completion(
            text=str(text),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            finish_reason=choice.get("finish_reason"),
        )
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise errors.ServerError(f"the answer is not a chat completion: {e!r}") from e


def raw_response(status: int, request_id: str | None, data: dict[str, Any]) -> RawResponse:
    # OpenAI's batch output always has a request id; vLLM sends the header only with
    # --enable-request-id-headers, so the response's own id stands in for it.
    return RawResponse(status, request_id or str(data.get("id") or ""), data)


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    response_format: dict[str, Any] | None,
) -> dict[str, Any]:
    """The request body of a chat completion. Sampling parameters that are vLLM's own
    (``top_k``, ``min_p``...) sit beside the OpenAI ones, as vLLM reads them."""
    body: dict[str, Any] = {**params, "model": model, "messages": messages}
    if response_format is not None:
        body["response_format"] = response_format
    return body


def error_message(data: Any) -> tuple[str, str | None]:
    """``(message, param)`` of an error answer: ``{"error": {"message", "param"...}}``
    (OpenAI, vLLM >= 0.6), or the flat ``{"message", "param"}`` of older vLLM."""
    if isinstance(data, dict):
        inner = data.get("error")
        source = inner if isinstance(inner, dict) else data
        message = source.get("message") or (inner if isinstance(inner, str) else None)
        param = source.get("param")
        if message:
            return str(message), str(param) if param is not None else None
    return "", None

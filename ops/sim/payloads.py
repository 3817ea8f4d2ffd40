"""Response bodies shaped like vLLM's OpenAI-compatible server."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ops.sim.answers import Answer
from ops.sim.errors import SimRequestError
from ops.sim.protocol import SimRequest

DONE_EVENT = b"data: [DONE]\n\n"
_PLACEHOLDER = "\x00token\x00"


def request_id(request: SimRequest) -> str:
    """A fresh id: ``chatcmpl-...`` or ``cmpl-...``."""
    prefix = "chatcmpl" if request.kind == "chat" else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}"


def error_body(error: SimRequestError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as vLLM sends it."""
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.status,
        }
    }


def usage(request: SimRequest, answer: Answer) -> dict[str, Any]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": request.prompt_tokens,
        "total_tokens": request.prompt_tokens + answer.completion_tokens,
        "completion_tokens": answer.completion_tokens,
        "prompt_tokens_details": None,
    }


def completion_body(request: SimRequest, answer: Answer, rid: str) -> dict[str, Any]:
    """A whole, non-streamed chat completion or text completion."""
    if request.kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": answer.text,
                "refusal": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": answer.finish_reason,
            "stop_reason": None,
        }
        kind = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": answer.text,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        kind = "text_completion"
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": usage(request, answer),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


class ChunkWriter:
    """Builds the server-sent events of one streamed answer."""

    def __init__(self, request: SimRequest, rid: str) -> None:
        self._request = request
        self._rid = rid
        self._created = int(time.time())
        self._object = "chat.completion.chunk" if request.kind == "chat" else "text_completion"
        self._token_template: tuple[bytes, bytes] | None = None

    def _event(self, choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._rid,
            "object": self._object,
            "created": self._created,
            "model": self._request.model,
            "choices": choices,
        }
        if extra:
            chunk.update(extra)
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    def _choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self._request.kind == "chat":
            delta = {"content": text} if text or finish_reason is None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def role(self) -> bytes | None:
        """The first chat event announcing the assistant role (None for completions)."""
        if self._request.kind != "chat":
            return None
        delta = {"role": "assistant", "content": ""}
        return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def token(self, piece: str) -> bytes:
        """One event carrying one token (from a template: this runs once per token)."""
        if self._token_template is None:
            event = self._event([self._choice(_PLACEHOLDER, None)])
            before, _, after = event.partition(json.dumps(_PLACEHOLDER).encode())
            self._token_template = (before, after)
        before, after = self._token_template
        return before + json.dumps(piece, ensure_ascii=False).encode() + after

    def finish(self, answer: Answer) -> bytes:
        """The event with the finish reason, then the usage event if asked, then ``[DONE]``."""
        events = self._event([self._choice("", answer.finish_reason)])
        if self._request.include_usage:
            events += self._event([], {"usage": usage(self._request, answer)})
        return events + DONE_EVENT

    @staticmethod
    def error(error: SimRequestError) -> bytes:
        """An error event followed by ``[DONE]``, as vLLM ends a stream that failed."""
        return b"data: " + json.dumps(error_body(error)).encode() + b"\n\n" + DONE_EVENT

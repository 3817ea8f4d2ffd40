"""OpenAI's batch output line, for checking ``vfleet export --format openai``.

The ``openai`` package has no type for a line of a batch's output or error file, so this
is the ``BatchRequestOutput`` schema of OpenAI's API spec (``id``, ``custom_id``,
``response: {status_code, request_id, body} | null``, ``error: {code, message} | null``),
strict: a field of the wrong type or an unknown one fails. ``error.line`` is the one
addition, for input lines that did not become requests. Every response body must be what
the real ``openai`` types accept: a ``ChatCompletion`` or a ``Completion``.
"""

from __future__ import annotations

from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BatchResponse(_Strict):
    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchLineError(_Strict):
    code: str
    message: str
    line: int | None = None


class BatchOutputLine(_Strict):
    id: str
    custom_id: str | None
    response: BatchResponse | None
    error: BatchLineError | None

    @model_validator(mode="after")
    def _one_of(self) -> BatchOutputLine:
        if (self.response is None) == (self.error is None):
            raise ValueError("a line has either a response or an error")
        return self


def validate_output_line(data: dict[str, Any]) -> BatchOutputLine:
    """The line, checked; a response body must validate as ChatCompletion or Completion."""
    line = BatchOutputLine.model_validate(data)
    if line.response is not None:
        body = line.response.body
        kind = ChatCompletion if body.get("object") == "chat.completion" else Completion
        kind.model_validate(body)
    return line

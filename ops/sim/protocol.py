"""Parse and validate an OpenAI-style request body the way vLLM's front end does.

Prompt tokens are approximated (there is no tokenizer): one token per 4 characters of text,
rounded up, plus 3 tokens of chat-template overhead per message; a completion prompt given as
token ids counts one token per id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ops.sim.errors import SimRequestError

RequestKind = Literal["chat", "completion"]
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
# vLLM's /v1/completions defaults max_tokens to 16, like OpenAI's legacy endpoint.
COMPLETION_DEFAULT_MAX_TOKENS = 16
_IGNORED_IN_KEY = ("stream", "stream_options")


@dataclass(frozen=True)
class Structured:
    """What shape the answer must take: a JSON Schema, any JSON object, or one of some choices."""

    kind: Literal["json_schema", "json_object", "choice"]
    schema: Mapping[str, Any] | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimRequest:
    """A validated completion request."""

    kind: RequestKind
    model: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    structured: Structured | None
    key: str
    prefix_key: str | None = None
    prefix_tokens: int = 0


def count_tokens(text: str) -> int:
    """Approximate token count of ``text``: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def bad_request(message: str, param: str | None = None) -> SimRequestError:
    """A 400 in vLLM's shape."""
    return SimRequestError(400, message, error_type="BadRequestError", param=param)


def decode_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body.

    Raises:
        SimRequestError: 400 when the body is not a JSON object.
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"Invalid JSON body: {e}") from e
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def request_key(body: Mapping[str, Any]) -> str:
    """Hex digest of the canonical body; streaming options do not change the answer."""
    canonical = {k: v for k, v in body.items() if k not in _IGNORED_IN_KEY}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _chat_prompt(body: Mapping[str, Any]) -> tuple[int, str | None, int]:
    """Prompt tokens, and the system prompt's hash and tokens when it is a reusable prefix."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages.", "messages")
    tokens = 0
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise bad_request("Each message must be an object with a 'role'.", "messages")
        tokens += count_tokens(_content_text(message.get("content"))) + TOKENS_PER_MESSAGE
    first = messages[0]
    if first.get("role") != "system" or len(messages) < 2:
        return tokens, None, 0
    system = _content_text(first.get("content"))
    return tokens, hashlib.sha256(system.encode()).hexdigest(), count_tokens(system)


def _completion_prompt(body: Mapping[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return max(1, count_tokens(prompt))
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) for item in prompt):
            return len(prompt)
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return max(1, count_tokens(prompt[0]))
        raise bad_request("The simulator supports one prompt per request.", "prompt")
    raise bad_request("'prompt' must be a string or a list of token ids.", "prompt")


def _max_tokens(body: Mapping[str, Any], kind: RequestKind) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return COMPLETION_DEFAULT_MAX_TOKENS if kind == "completion" else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request(f"max_tokens must be at least 1, got {value}.", "max_tokens")
    return value


def _schema_object(value: Any, param: str) -> Mapping[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise bad_request(f"Invalid JSON schema: {e}", param) from e
    if not isinstance(value, Mapping):
        raise bad_request("The JSON schema must be an object.", param)
    return value


def _response_format(value: Any) -> Structured | None:
    if not isinstance(value, Mapping):
        raise bad_request("'response_format' must be an object.", "response_format")
    kind = value.get("type")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise bad_request(
                "response_format json_schema needs 'json_schema': {'name', 'schema'}.",
                "response_format",
            )
        return Structured("json_schema", _schema_object(spec["schema"], "response_format"))
    if kind == "json_object":
        return Structured("json_object")
    if kind in (None, "text"):
        return None
    raise bad_request(f"Unknown response_format type {kind!r}.", "response_format")


def _structured_outputs(value: Any) -> Structured | None:
    if not isinstance(value, Mapping):
        raise bad_request("'structured_outputs' must be an object.", "structured_outputs")
    if value.get("json") is not None:
        return Structured("json_schema", _schema_object(value["json"], "structured_outputs"))
    choice = value.get("choice")
    if isinstance(choice, list) and choice:
        return Structured("choice", choices=tuple(str(item) for item in choice))
    if value.get("json_object"):
        return Structured("json_object")
    return None  # regex / grammar: answered as plain text


def _structured(body: Mapping[str, Any]) -> Structured | None:
    # guided_json / guided_choice are ignored on purpose: vLLM >= 0.12 ignores them too.
    if body.get("structured_outputs") is not None:
        found = _structured_outputs(body["structured_outputs"])
        if found is not None:
            return found
    if body.get("response_format") is not None:
        return _response_format(body["response_format"])
    return None


def _context_error(
    max_model_len: int, prompt_tokens: int, max_tokens: int | None, check: str = "clamp"
) -> None:
    """Refuse a request that does not fit the context, in the words of vLLM ``check``.

    ``clamp`` (vLLM 0.32): a prompt over the context, or a ``max_tokens`` over
    ``max_model_len``, is a 400; a prompt that fits with too little room left is answered,
    cut short. ``reject`` (older vLLM): any prompt + ``max_tokens`` over the context is a 400.
    """
    if check == "clamp":
        if prompt_tokens > max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your prompt contains at least {max_model_len + 1} input tokens, which "
                "exceeds this limit even without any output tokens. Please reduce the length "
                f"of the input prompt. (parameter=input_tokens, value={max_model_len + 1})",
                "input_tokens",
            )
        if max_tokens is not None and max_tokens > max_model_len:
            raise bad_request(
                f"max_tokens={max_tokens} cannot be greater than max_model_len="
                f"{max_model_len}. Please request fewer output tokens. "
                f"(parameter=max_tokens, value={max_tokens})",
                "max_tokens",
            )
        return
    if max_tokens is None:
        if prompt_tokens >= max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {prompt_tokens} tokens in the messages, Please reduce the length of "
                "the messages."
            )
        return
    if prompt_tokens + max_tokens > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion."
        )


def parse_request(
    body: Mapping[str, Any],
    kind: RequestKind,
    *,
    served_model: str,
    max_model_len: int,
    context_check: str = "clamp",
) -> SimRequest:
    """Validate ``body`` for ``/v1/chat/completions`` or ``/v1/completions``.

    Raises:
        SimRequestError: 404 for another model, 400 for a malformed body or a request that
            exceeds the context length.
    """
    model = body.get("model", served_model)
    if model != served_model:
        raise SimRequestError(
            404, f"The model `{model}` does not exist.", error_type="NotFoundError", param="model"
        )
    if kind == "chat":
        prompt_tokens, prefix_key, prefix_tokens = _chat_prompt(body)
    else:
        prompt_tokens, prefix_key, prefix_tokens = _completion_prompt(body), None, 0
    if body.get("n", 1) != 1:
        raise bad_request("The simulator supports n=1 only.", "n")
    max_tokens = _max_tokens(body, kind)
    _context_error(max_model_len, prompt_tokens, max_tokens, context_check)
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, Mapping) and bool(
        stream_options.get("include_usage")
    )
    return SimRequest(
        kind=kind,
        model=served_model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        structured=_structured(body),
        key=request_key(body),
        prefix_key=prefix_key,
        prefix_tokens=prefix_tokens,
    )

"""The call to an OpenAI-compatible instance, with errors mapped onto our tree.

The ``openai`` client retries nothing here (``max_retries=0``): retries are Celery's, so
that a retried record goes back to the shared queue and any instance can take it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from workers import errors
from workers.fleet import InstanceConfig
from workers.provenance import InstanceProvenance

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 10.0
_CONTEXT_MARKERS = ("maximum context length", "context length", "context_length")
# vLLM >= 0.11 refuses a max_tokens above the context with a 400 that never says "context":
# "max_tokens=5000 cannot be greater than max_model_len=1024. Please request fewer output
# tokens. (parameter=max_tokens, value=5000)", param "max_tokens".
_MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")
_MAX_TOKENS_MARKERS = ("max_model_len", "maximum context length", "too large")


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify(exc: openai.OpenAIError) -> errors.RecordError:
    """Map an ``openai`` exception to a transient or permanent :class:`RecordError`."""
    msg = str(exc).splitlines()[0][:500] if str(exc) else exc.__class__.__name__
    if isinstance(exc, openai.APITimeoutError):
        return errors.RequestTimeoutError(f"timeout: {msg}")
    if isinstance(exc, openai.APIConnectionError):
        return errors.ConnectError(f"connection failed: {msg}")
    if isinstance(exc, openai.RateLimitError):
        return errors.RateLimitedError(f"429: {msg}", retry_after=_retry_after(exc.response))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500 or status in (408, 409):
            return errors.ServerError(f"{status}: {msg}", retry_after=_retry_after(exc.response))
        if status == 400 and _max_tokens_over_context(exc, msg):
            return errors.ContextLengthError(
                f"max_tokens is over the model's context (lower the spec's max_tokens): {msg}"
            )
        if status == 400 and any(m in msg.lower() for m in _CONTEXT_MARKERS):
            return errors.ContextLengthError(f"context length: {msg}")
        return errors.BadRequestError(f"{status}: {msg}")
    return errors.BadRequestError(f"{exc.__class__.__name__}: {msg}")


def _max_tokens_over_context(exc: openai.APIStatusError, msg: str) -> bool:
    param = getattr(exc, "param", None)
    lower = msg.lower()
    named = param in _MAX_TOKENS_PARAMS or any(p in lower for p in _MAX_TOKENS_PARAMS)
    return named and any(m in lower for m in _MAX_TOKENS_MARKERS)


class LLMClient:
    """Chat completions against one instance. Thread-safe; share one per worker process."""

    def __init__(
        self,
        instance: InstanceConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        http_client: httpx2.Client | None = None,
    ) -> None:
        self.instance = instance
        self._client = openai.OpenAI(
            base_url=instance.base_url,
            api_key=instance.api_key(),
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=connect_timeout),
            http_client=http_client,
        )
        self._card = InstanceProvenance(instance, http_client=http_client)

    def max_model_len(self) -> int | None:
        """The served model's context length from ``/v1/models`` (cached), or None when
        the endpoint does not say (not every OpenAI-compatible server does)."""
        value = self._card.get().get("max_model_len")
        return value if isinstance(value, int) and value > 0 else None

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        params: dict[str, Any],
        response_format: dict[str, Any] | None = None,
    ) -> Completion:
        """Send one chat completion. Raises a :class:`workers.errors.RecordError`.

        The body goes through the client's low-level ``post``: the same request, errors and
        timeouts as ``chat.completions.create``, without building the typed request and
        response models, which cost a third of the call's CPU. Sampling parameters that are
        vLLM's own (``top_k``, ``min_p``...) sit beside the OpenAI ones, as vLLM reads them.
        """
        payload: dict[str, Any] = {**params, "model": self.instance.model, "messages": messages}
        if response_format is not None:
            payload["response_format"] = response_format
        _, data = self._post("/chat/completions", payload)
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

    def _post(self, path: str, payload: dict[str, Any]) -> tuple[httpx2.Response, dict[str, Any]]:
        try:
            resp = self._client.post(path, body=payload, cast_to=httpx2.Response)
        except openai.OpenAIError as e:
            raise classify(e) from e
        try:
            data = resp.json()
        except ValueError as e:
            raise errors.ServerError(f"{resp.status_code}: the answer is not JSON") from e
        if not isinstance(data, dict):
            raise errors.ServerError(f"{resp.status_code}: the answer is not a JSON object")
        return resp, data

    # -- OpenAI batch files: a request body sent as it is (issue 8) -----------------------

    def send(self, path: str, body: dict[str, Any]) -> RawResponse:
        """POST ``body`` to ``path`` (``/chat/completions`` or ``/completions``, relative
        to the base URL) with ``model`` set to this instance's; every other field is kept.

        Returns the status, request id and JSON body. Raises a
        :class:`workers.errors.RecordError` for an error answer or a failed call.
        """
        resp, data = self._post(path, {**body, "model": self.instance.model})
        # OpenAI's batch output always has a request id; vLLM sends the header only with
        # --enable-request-id-headers, so the response's own id stands in for it.
        request_id = resp.headers.get("x-request-id") or str(data.get("id") or "")
        return RawResponse(resp.status_code, request_id, data)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class RawResponse:
    """An answer to :meth:`LLMClient.send`: what an OpenAI batch output line holds."""

    status_code: int
    request_id: str
    body: dict[str, Any]

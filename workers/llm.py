"""The calls to an OpenAI-compatible instance: what an answer holds, and the sync client.

Two clients send the same bodies and map answers onto :mod:`workers.errors` the same way
(:func:`workers.retry.error_for_status`):

* :class:`LLMClient`, on the ``openai`` package (its low-level ``post``): the reference
  client, for tools and tests, and what the lean one is checked against;
* :class:`workers.async_client.AsyncLLMClient`, on ``aiohttp``: the worker's hot path, where
  the ``openai``/``httpx`` stack cost about 1.4 ms of CPU per call against aiohttp's 0.16
  (docs/BENCHMARKS.md).

Neither retries anything (``max_retries=0``): a retried record waits in the ledger and any
instance may take it (:mod:`workers.retry`).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import openai

from workers import errors
from workers.codec import Completion, RawResponse, chat_body, completion_of, raw_response
from workers.fleet import InstanceConfig
from workers.provenance import InstanceProvenance
from workers.retry import error_for_status, parse_retry_after

__all__ = ["Completion", "LLMClient", "RawResponse", "classify"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 10.0


def classify(exc: openai.OpenAIError) -> errors.RecordError:
    """Map an ``openai`` exception to a transient or permanent :class:`RecordError`."""
    msg = str(exc).splitlines()[0][:500] if str(exc) else exc.__class__.__name__
    if isinstance(exc, openai.APITimeoutError):
        return errors.RequestTimeoutError(f"timeout: {msg}")
    if isinstance(exc, openai.APIConnectionError):
        return errors.ConnectError(f"connection failed: {msg}")
    if isinstance(exc, openai.APIStatusError):
        return error_for_status(
            exc.status_code,
            msg,
            param=getattr(exc, "param", None),
            retry_after=parse_retry_after(exc.response.headers.get("retry-after")),
        )
    return errors.BadRequestError(f"{exc.__class__.__name__}: {msg}")


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
        self._card = InstanceProvenance(instance)

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
        response models, which cost a third of the call's CPU.
        """
        _, data = self._post(
            "/chat/completions", chat_body(self.instance.model, messages, params, response_format)
        )
        return completion_of(data)

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

    # -- OpenAI batch files: a request body sent as it is ---------------------------------

    def send(self, path: str, body: dict[str, Any]) -> RawResponse:
        """POST ``body`` to ``path`` (``/chat/completions`` or ``/completions``, relative
        to the base URL) with ``model`` set to this instance's; every other field is kept.

        Returns the status, request id and JSON body. Raises a
        :class:`workers.errors.RecordError` for an error answer or a failed call.
        """
        resp, data = self._post(path, {**body, "model": self.instance.model})
        return raw_response(resp.status_code, resp.headers.get("x-request-id"), data)

    def close(self) -> None:
        self._client.close()

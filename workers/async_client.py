"""The worker's client of its instance: chat completions and batch lines over ``aiohttp``.

It sends what :class:`workers.llm.LLMClient` (the ``openai`` package) sends, reads the
answer with the same codec (:mod:`workers.codec`) and maps failures onto the same errors
(:func:`workers.retry.error_for_status`); the tests hold the two to that. It exists because
a worker driving a fast instance is CPU-bound: a call costs about 0.16 ms of CPU here
against 1.4 ms through ``openai`` + ``httpx`` (docs/BENCHMARKS.md).

One client per worker process, used from the worker's event loop (:mod:`workers.engine`):
the session is made on first use inside that loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from workers import errors
from workers.codec import (
    Completion,
    RawResponse,
    chat_body,
    completion_of,
    error_message,
    raw_response,
)
from workers.fleet import InstanceConfig
from workers.retry import error_for_status, parse_retry_after

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 10.0
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
# A kept-alive connection the server closed (it restarted, or timed the connection out)
# fails the next request before it was sent: that one request is sent once more.
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError,)


class AsyncLLMClient:
    """Chat completions against one instance, at most ``concurrency`` at once."""

    def __init__(
        self,
        instance: InstanceConfig,
        *,
        concurrency: int,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.instance = instance
        self.concurrency = concurrency
        self._base = instance.base_url.rstrip("/")
        self._headers = dict(_JSON)
        if key := instance.api_key():
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None

    def _ensure(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._slots is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._session, self._slots

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        params: dict[str, Any],
        response_format: dict[str, Any] | None = None,
    ) -> Completion:
        """Send one chat completion. Raises a :class:`workers.errors.RecordError`."""
        body = chat_body(self.instance.model, messages, params, response_format)
        _, _, data = await self._post("/chat/completions", body)
        return completion_of(data)

    async def send(self, path: str, body: dict[str, Any]) -> RawResponse:
        """POST an OpenAI batch line's ``body`` to ``path`` with this instance's model."""
        status, request_id, data = await self._post(path, {**body, "model": self.instance.model})
        return raw_response(status, request_id, data)

    async def _post(
        self, path: str, body: dict[str, Any]
    ) -> tuple[int, str | None, dict[str, Any]]:
        session, slots = self._ensure()
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with slots:
            for sent in (1, 2):
                try:
                    return await self._once(session, path, payload)
                except _STALE_CONNECTION as e:
                    if sent == 2:
                        raise errors.ConnectError(f"connection failed: {_describe(e)}") from e
        raise AssertionError("unreachable")

    async def _once(
        self, session: aiohttp.ClientSession, path: str, payload: bytes
    ) -> tuple[int, str | None, dict[str, Any]]:
        try:
            async with session.post(self._base + path, data=payload) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except _STALE_CONNECTION:
            raise
        except TimeoutError as e:
            raise errors.RequestTimeoutError(f"timeout: {_describe(e)}") from e
        except aiohttp.ClientError as e:
            raise errors.ConnectError(f"connection failed: {_describe(e)}") from e
        try:
            data = json.loads(raw)
        except ValueError as e:
            if status >= 400:
                text = raw.decode(errors="replace")
                raise error_for_status(status, text, retry_after=_retry_after(headers)) from e
            raise errors.ServerError(f"{status}: the answer is not JSON") from e
        if status >= 400:
            message, param = error_message(data)
            raise error_for_status(
                status, message or str(data), param=param, retry_after=_retry_after(headers)
            )
        if not isinstance(data, dict):
            raise errors.ServerError(f"{status}: the answer is not a JSON object")
        return status, headers.get("x-request-id"), data

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(headers: Any) -> float | None:
    return parse_retry_after(headers.get("retry-after"))


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

"""A plain asyncio HTTP client: ``aiohttp``, a semaphore's worth of lanes per instance.

What a user who wants nothing but speed writes: the same judge-shaped request bodies as every
other mode (rendered with templates compiled once), posted with ``aiohttp`` on kept-alive
connections, the answer read with ``json.loads``; no ``openai`` types, no queue, no store.
Lanes pull from one shared deque like the ideal's; a failed call (a transport error or a
status other than 200) puts the record back for any lane, up to ``CLIENT_MAX_ATTEMPTS``,
and backs the lane off (0.5 s to 5 s). It is the client-side limit the fast scenario
measures vfleet against.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ops.bench.config import CLIENT_MAX_ATTEMPTS, CLIENT_TIMEOUT
from ops.bench.ideal import BACKOFF_BASE, BACKOFF_MAX, IDLE_POLL, PERMANENT_STATUSES, Work
from ops.bench.outcome import OutcomeWriter
from ops.bench.workload import JudgePrompt

_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sim"}


class BodyMaker:
    """Request bodies of a prompt, as JSON bytes, from templates compiled once.

    Same rendering as :meth:`JudgePrompt.messages` (immutable sandbox, ``StrictUndefined``,
    the record's fields plus ``record`` and ``labels``), hence the same body as every mode.
    """

    def __init__(self, prompt: JudgePrompt, model: str) -> None:
        env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        self._system = env.from_string(prompt.system) if prompt.system is not None else None
        self._user = env.from_string(prompt.template)
        self._labels = prompt.labels
        self._fixed: dict[str, Any] = {"model": model, **prompt.params}
        fmt = prompt.response_format()
        if fmt is not None:
            self._fixed["response_format"] = fmt

    def request(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The body for ``record`` as a dict (``JudgePrompt.request``'s keys)."""
        context = {**record, "record": dict(record), "labels": self._labels}
        messages = []
        if self._system is not None:
            messages.append({"role": "system", "content": self._system.render(context)})
        messages.append({"role": "user", "content": self._user.render(context)})
        return {"model": self._fixed["model"], "messages": messages, **self._fixed}

    def body(self, record: Mapping[str, Any]) -> bytes:
        """The body for ``record``, encoded."""
        return json.dumps(self.request(record)).encode()


class _CallError(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RawHttpClient:
    """Lanes over one ``aiohttp`` session per instance, ``concurrency`` connections each."""

    def __init__(
        self, base_urls: Sequence[str], prompt: JudgePrompt, model: str, writer: OutcomeWriter
    ) -> None:
        self.urls = [f"{u.rstrip('/')}/chat/completions" for u in base_urls]
        self.bodies = BodyMaker(prompt, model)
        self.writer = writer

    async def run(self, records: list[dict[str, Any]], concurrency: int, time_limit: float) -> None:
        """Judge every record (or stop at ``time_limit``)."""
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        sessions = [
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
            )
            for _ in self.urls
        ]
        work = Work(deque(records), len(records), time.monotonic() + time_limit, self.writer)
        try:
            lanes = [
                self._lane(i, session, work)
                for i, session in enumerate(sessions)
                for _ in range(concurrency)
            ]
            await asyncio.gather(*lanes)
        finally:
            for session in sessions:
                await session.close()

    async def _call(self, session: aiohttp.ClientSession, url: str, body: bytes) -> int | None:
        """POST one body; returns the answer's completion tokens. Raises :class:`_CallError`."""
        try:
            async with session.post(url, data=body, headers=_HEADERS) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise _CallError(
                        f"HTTP {resp.status}", permanent=resp.status in PERMANENT_STATUSES
                    )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _CallError(f"{type(e).__name__}: {e}") from e
        usage = json.loads(raw).get("usage") or {}
        tokens = usage.get("completion_tokens")
        return int(tokens) if tokens is not None else None

    async def _lane(self, index: int, session: aiohttp.ClientSession, work: Work) -> None:
        url, backoff = self.urls[index], 0.0
        while work.remaining > 0 and time.monotonic() < work.deadline:
            if not work.pending:
                await asyncio.sleep(IDLE_POLL)
                continue
            record = work.pending.popleft()
            key = str(record["id"])
            work.attempts[key] += 1
            started = time.time()
            try:
                tokens = await self._call(session, url, self.bodies.body(record))
            except _CallError as e:
                if e.permanent or work.attempts[key] >= CLIENT_MAX_ATTEMPTS:
                    work.finish(key, index, started, None, str(e)[:200])
                else:
                    work.pending.appendleft(record)
                backoff = min(BACKOFF_MAX, max(BACKOFF_BASE, backoff * 2))
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                continue
            backoff = 0.0
            work.finish(key, index, started, tokens, None)

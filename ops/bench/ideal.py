"""The client-side ideal: one asyncio client, a semaphore's worth of lanes per instance.

No queue, no store, nothing durable: each instance gets exactly as many concurrent lanes
as its ``max-num-seqs``, and every lane pulls the next record from one shared in-memory
deque, so a fast instance takes more work and nothing waits behind a slow one. A failed
call puts the record back for any lane (up to ``CLIENT_MAX_ATTEMPTS``) and backs the
failing lane off exponentially (0.5 s to 5 s), like vfleet's settings in the benchmark.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from ops.bench.config import CLIENT_MAX_ATTEMPTS, CLIENT_TIMEOUT
from ops.bench.outcome import Outcome, OutcomeWriter
from ops.bench.workload import JudgePrompt

BACKOFF_BASE = 0.5
BACKOFF_MAX = 5.0
IDLE_POLL = 0.02
PERMANENT_STATUSES = (400, 401, 403, 404, 422)
"""Answers that the same request would get again: the record fails instead of retrying."""


@dataclass
class Work:
    """What the lanes of a client-side mode share: one deque of records still to send."""

    pending: deque[dict[str, Any]]
    remaining: int
    deadline: float
    writer: OutcomeWriter
    attempts: Counter[str] = field(default_factory=Counter)

    def finish(
        self, key: str, index: int, started: float, tokens: int | None, error: str | None
    ) -> None:
        """Record ``key``'s final outcome (``error`` None: it succeeded)."""
        now = time.time()
        self.remaining -= 1
        self.writer.write(
            Outcome(
                key, error is None, index, now, now - started, tokens, self.attempts[key], error
            )
        )


def _permanent(e: openai.OpenAIError) -> bool:
    return isinstance(e, openai.APIStatusError) and e.status_code in PERMANENT_STATUSES


class IdealClient:
    """Lanes over ``AsyncOpenAI`` clients, one client per instance."""

    def __init__(
        self, base_urls: Sequence[str], prompt: JudgePrompt, model: str, writer: OutcomeWriter
    ) -> None:
        self.base_urls = list(base_urls)
        self.prompt = prompt
        self.model = model
        self.writer = writer

    async def run(self, records: list[dict[str, Any]], concurrency: int, time_limit: float) -> None:
        """Judge every record (or stop at ``time_limit``)."""
        clients = [
            openai.AsyncOpenAI(base_url=u, api_key="sim", max_retries=0, timeout=CLIENT_TIMEOUT)
            for u in self.base_urls
        ]
        work = Work(deque(records), len(records), time.monotonic() + time_limit, self.writer)
        try:
            lanes = [
                self._lane(i, client, work)
                for i, client in enumerate(clients)
                for _ in range(concurrency)
            ]
            await asyncio.gather(*lanes)
        finally:
            for client in clients:
                await client.close()

    async def _lane(self, index: int, client: openai.AsyncOpenAI, work: Work) -> None:
        backoff = 0.0
        while work.remaining > 0 and time.monotonic() < work.deadline:
            if not work.pending:
                await asyncio.sleep(IDLE_POLL)
                continue
            record = work.pending.popleft()
            key = str(record["id"])
            work.attempts[key] += 1
            started = time.time()
            try:
                resp = await client.chat.completions.create(
                    **self.prompt.request(self.model, record)
                )
            except openai.OpenAIError as e:
                if _permanent(e) or work.attempts[key] >= CLIENT_MAX_ATTEMPTS:
                    work.finish(key, index, started, None, str(e).splitlines()[0][:200])
                else:
                    work.pending.appendleft(record)
                backoff = min(BACKOFF_MAX, max(BACKOFF_BASE, backoff * 2))
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                continue
            backoff = 0.0
            tokens = resp.usage.completion_tokens if resp.usage else None
            work.finish(key, index, started, tokens, None)

"""The simulated engine: continuous batching with a FIFO waiting queue and a load factor.

At most ``max_num_seqs`` requests run at once; the rest wait in arrival order. A running
request's work is measured in *nominal* seconds (``ttft + (tokens - 1) * itl`` on an idle
engine). All running requests progress together at rate ``1 / load_factor(running)``, where the
factor grows linearly from 1.0 with one running request to ``time_factor_under_load`` with a
full batch. Rather than a sleep per token, the engine keeps one *virtual clock* that advances at
that rate (integrating the load over time, so a request slows down when others join and speeds
up when they leave) and one timer for the earliest milestone any request waits for. Admissions,
releases and milestones are O(log n).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from dataclasses import dataclass

from ops.sim.errors import EngineDeadError

logger = logging.getLogger(__name__)

# Tolerance, in nominal seconds, for a milestone that a timer reaches a hair early.
_EPSILON = 1e-6
_PREFIX_CACHE_ENTRIES = 4096


@dataclass
class Slot:
    """A running request's place in the batch."""

    admitted_at: float
    vstart: float
    epoch: int
    kv_tokens: int
    released: bool = False


class Engine:
    """FIFO admission up to ``max_num_seqs`` and a load-dependent virtual clock."""

    def __init__(self, *, max_num_seqs: int, time_factor_under_load: float) -> None:
        self.max_num_seqs = max_num_seqs
        self.time_factor_under_load = time_factor_under_load
        self.running = 0
        self.kv_tokens = 0
        self.dead = False
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._milestones: list[tuple[float, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._vclock = 0.0
        self._vclock_at: float | None = None
        self._epoch = 0

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiting)

    def load_factor(self, running: int) -> float:
        """Slow-down with ``running`` requests: 1.0 alone, the full factor with a full batch."""
        if self.max_num_seqs <= 1 or running <= 1:
            return 1.0
        share = (min(running, self.max_num_seqs) - 1) / (self.max_num_seqs - 1)
        return 1.0 + (self.time_factor_under_load - 1.0) * share

    async def admit(self, kv_tokens: int = 0) -> Slot:
        """Wait for a slot (FIFO) and return it; pair with ``release``.

        Raises:
            EngineDeadError: the engine is dead, or dies while the request waits.
        """
        if self.dead:
            raise EngineDeadError
        if self.running < self.max_num_seqs and not self._waiting:
            self._set_running(self.running + 1)
        else:
            await self._wait_for_slot()
        self._advance()
        self.kv_tokens += kv_tokens
        return Slot(asyncio.get_running_loop().time(), self._vclock, self._epoch, kv_tokens)

    async def _wait_for_slot(self) -> None:
        epoch = self._epoch
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and epoch == self._epoch:
                self._hand_over()  # a slot was handed to us just as we were cancelled
            else:
                self._discard_waiter(future)
            raise
        if epoch != self._epoch:
            raise EngineDeadError

    def _discard_waiter(self, future: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(future)

    def release(self, slot: Slot) -> None:
        """Give the slot back: the first waiter takes it, or the batch shrinks."""
        if slot.released or slot.epoch != self._epoch:
            return
        slot.released = True
        self.kv_tokens -= slot.kv_tokens
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._set_running(self.running - 1)

    def due(self, slot: Slot, work: float) -> bool:
        """Whether ``work`` nominal seconds have already passed for ``slot``."""
        self._advance()
        return slot.vstart + work <= self._vclock + _EPSILON

    async def reach(self, slot: Slot, work: float) -> None:
        """Return once ``work`` nominal seconds have passed for ``slot`` since its admission.

        Raises:
            EngineDeadError: the engine dies meanwhile.
        """
        if slot.epoch != self._epoch:
            raise EngineDeadError
        target = slot.vstart + work
        self._advance()
        if target <= self._vclock + _EPSILON:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._milestones, (target, next(self._sequence), future))
        if self._milestones[0][2] is future:
            self._reschedule()
        await future

    def kill(self) -> None:
        """Kill the engine: every waiting or running request fails with ``EngineDeadError``."""
        self.dead = True
        self._epoch += 1
        self._advance()
        waiters = [
            future
            for future in [*self._waiting, *(future for _, _, future in self._milestones)]
            if not future.done()
        ]
        self._waiting.clear()
        self._milestones.clear()
        self.running = 0
        self.kv_tokens = 0
        self._reschedule()
        for future in waiters:
            future.set_exception(EngineDeadError())
            future.exception()  # mark retrieved: an owner cancelled meanwhile must not warn
        logger.info("engine killed: %d requests failed", len(waiters))

    def revive(self) -> None:
        """Bring a killed engine back with an empty batch."""
        self.dead = False

    def _set_running(self, running: int) -> None:
        self._advance()
        self.running = running
        self._reschedule()

    def _advance(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._vclock_at is not None and self.running:
            self._vclock += (now - self._vclock_at) / self.load_factor(self.running)
        self._vclock_at = now

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._milestones or self._vclock_at is None:
            return
        delay = (self._milestones[0][0] - self._vclock) * self.load_factor(self.running)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self._vclock_at + max(delay, 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._advance()
        while self._milestones and self._milestones[0][0] <= self._vclock + _EPSILON:
            _, _, future = heapq.heappop(self._milestones)
            if not future.done():
                future.set_result(None)
        self._reschedule()


class PrefixCache:
    """Remembers prompt prefixes (e.g. a shared system prompt) to count prefix-cache hits."""

    def __init__(self, entries: int = _PREFIX_CACHE_ENTRIES) -> None:
        self._entries = entries
        self._seen: dict[str, None] = {}

    def lookup(self, prefix_key: str | None) -> bool:
        """True when this prefix was seen before; remembers it either way."""
        if prefix_key is None:
            return False
        if prefix_key in self._seen:
            return True
        if len(self._seen) >= self._entries:
            self._seen.pop(next(iter(self._seen)))
        self._seen[prefix_key] = None
        return False

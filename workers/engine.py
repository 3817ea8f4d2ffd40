"""One asyncio event loop in a thread of its own: where a worker's HTTP calls run.

Celery's threads pool hands each task to a thread; the task submits its records' work here
(:meth:`AsyncEngine.run`) and waits. Every call to the instance, from every task, then runs
on this one loop, so a worker keeps hundreds of requests in flight without a thread each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_STOP_TIMEOUT = 10.0


class AsyncEngine:
    """Start with :meth:`start`; :meth:`run` a coroutine from any other thread."""

    def __init__(self, name: str = "vfleet-engine") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> AsyncEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
            self._ready.wait()
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns its future."""
        if self._loop is None:
            self.start()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from a thread not the loop's)."""
        return self.submit(coro).result()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None
        self._ready.clear()

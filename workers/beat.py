"""The beat: what it schedules, and the Redis lock that keeps it to one process.

Entries go to the ``scan`` queue and expire just before the next tick, so nothing piles up
while the scan worker is down. Exactly one beat runs: ``--pidfile`` keeps a second one off
this host, and :class:`BeatLock` (a Redis lock with a TTL the running beat keeps refreshing)
keeps it off every other host sharing the broker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from workers.errors import VfleetError
from workers.keys import BEAT_LOCK
from workers.locks import process_token
from workers.queues import (
    PRUNE_SNAPSHOTS_TASK,
    RECONCILE_TASK,
    SCAN_GPUS_TASK,
    SCAN_QUEUE,
    SCAN_VLLM_TASK,
)
from workers.settings import Settings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

# An entry expires at this fraction of its interval: a late message is dropped, not run.
EXPIRES_FRACTION = 0.9


class BeatAlreadyRunningError(VfleetError):
    """Another beat holds the beat lock."""


def schedule_entry(task: str, every: float) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": every,
        "options": {"queue": SCAN_QUEUE, "expires": max(1.0, every * EXPIRES_FRACTION)},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: GPU and vLLM scans, pruning, the reconciler."""
    return {
        "scan-gpus": schedule_entry(SCAN_GPUS_TASK, settings.gpu_scan_interval),
        "scan-vllm": schedule_entry(SCAN_VLLM_TASK, settings.vllm_scan_interval),
        "prune-snapshots": schedule_entry(PRUNE_SNAPSHOTS_TASK, settings.prune_interval),
        "reconcile": schedule_entry(RECONCILE_TASK, settings.beat_reconcile_interval),
    }


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class BeatLock:
    """Hold ``key`` in Redis while the beat runs (:class:`redis.lock.Lock`, refreshed every
    third of its TTL with ``reacquire``).

    If the lock is lost (expired while the process stalled, and taken by another beat),
    ``on_lost`` is called — by default this process stops itself with SIGTERM.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        ttl: float,
        key: str = BEAT_LOCK,
        on_lost: Callable[[], None] = _terminate_self,
    ) -> None:
        self.redis = redis_client
        self.ttl = ttl
        self.key = key
        self.token = process_token()
        self.on_lost = on_lost
        self._lock = Lock(redis_client, key, timeout=ttl, blocking=False, thread_local=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`BeatAlreadyRunningError` naming its holder."""
        if self._lock.acquire(token=self.token):
            self._thread = threading.Thread(target=self._refresh, name="beat-lock", daemon=True)
            self._thread.start()
            logger.info("beat lock %s taken by %s", self.key, self.token)
            return
        holder: Any = self.redis.get(self.key)
        left: Any = self.redis.pttl(self.key)
        who = holder.decode() if isinstance(holder, bytes) else str(holder)
        raise BeatAlreadyRunningError(
            f"another beat is running ({who} holds {self.key}, expires in "
            f"{max(0, int(left)) / 1000:.0f}s); exactly one beat may run per broker"
        )

    def _refresh(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                logger.error("beat lock %s lost to another beat: stopping", self.key)
                self.on_lost()
                return
            except RedisError as e:  # Redis down: keep trying until the TTL runs out
                logger.warning("beat lock refresh failed: %s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._lock.release()
        except (LockError, RedisError) as e:  # not ours any more, or Redis away: TTL frees it
            logger.warning("beat lock release failed: %s", e)

    def __enter__(self) -> BeatLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

"""The Redis lock that lets many workers share the feeder's rounds: one does the work; and
the turn that makes those rounds once per interval for the fleet, not once per worker.

It is redis-py's :class:`redis.lock.Lock` with one change: a process takes its lock with a
token of its own that stays the same for its life, and an acquire that finds the key
already holding that token succeeds. That matters when Redis stalls (paused, overloaded):
a ``SET NX`` sent by a client that gave up waiting still runs when Redis resumes, and
would leave a lock nobody knows it holds, stopping every feeder until its TTL ran out. With
a stable token the process that sent it simply has it on its next round.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import redis
from redis.lock import Lock

DEFAULT_ROUND_LOCK_TIMEOUT = 10.0
"""A feed or reconcile round takes well under this; a lock whose holder died frees itself
this soon."""

_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


_TAKE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return -1
end
local left = redis.call('pttl', KEYS[1])
if left < 0 then return 0 end
return left
"""
""":data:`_ACQUIRE` for :class:`Turn`: -1 when the turn is the caller's, else how many
milliseconds the holder's turn has left."""


def process_token() -> str:
    """A token naming this process (host, pid) and this start of it."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RoundLock(Lock):
    """A non-blocking lock for one round of shared work, held under a stable token.

    ``with RoundLock(client, name, token=t) as mine:`` runs the body either way; ``mine``
    says whether this process holds the lock for it.
    """

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        token: str,
        timeout: float = DEFAULT_ROUND_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(client, name, timeout=timeout, blocking=False, thread_local=False)
        self.token = token
        self._acquire_script: Any = client.register_script(_ACQUIRE)

    def do_acquire(self, token: str | bytes) -> bool:
        assert self.timeout is not None
        return bool(self._acquire_script(keys=[self.name], args=[token, int(self.timeout * 1000)]))

    def __enter__(self) -> bool:  # type: ignore[override]
        self.held = bool(self.acquire(token=self.token))
        return self.held

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.held = False
            self.release()


class Turn:
    """Whose turn it is to run a fleet-wide periodic job (feeding, hedging, reconciling).

    Every worker's housekeeper runs these jobs on its own timer, but the fleet needs one
    round per interval, not one per worker: with N workers, N rounds of Redis and SQL reads
    per interval did one round's work, and idle workers paid for it all along (a
    round-robin batch whose fast instances were done spent most of its CPU there). The
    worker that takes the turn keeps it while it keeps running rounds, each :meth:`take`
    renewing it for ``hold`` seconds; the others skip with one Redis call, and one of them
    takes over within ``hold`` seconds when the holder stops or dies. Same script and the
    same stable token as :class:`RoundLock`, so a take that a paused Redis ran late is not
    lost to its sender.
    """

    def __init__(self, client: redis.Redis, name: str, *, token: str, hold: float) -> None:
        self.name = name
        self.token = token
        self.hold_ms = max(1, int(hold * 1000))
        self._script: Any = client.register_script(_TAKE)
        self._others_until = 0.0

    def take(self) -> bool:
        """True when the turn is this token's (taken now or renewed); raises
        :class:`redis.RedisError` when Redis cannot be reached.

        While another worker holds the turn, this one asks again only once that holder's
        turn would lapse: the answer before then is no, and an idle fleet's workers would
        otherwise each spend a Redis call per job per interval to hear it.
        """
        if time.monotonic() < self._others_until:
            return False
        left_ms = int(self._script(keys=[self.name], args=[self.token, self.hold_ms]))
        if left_ms < 0:
            return True
        self._others_until = time.monotonic() + left_ms / 1000
        return False

"""What the Redis broker holds right now, read without consuming anything.

kombu's Redis transport keeps a queue as a list of JSON envelopes and the messages that
workers fetched but have not acked in the hash ``unacked``. The reconciler compares the
record ids found here with the ledger; the feeder reads queue lengths.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from typing import Any

import redis

from workers.keys import KOMBU_UNACKED, KOMBU_UNACKED_INDEX
from workers.queues import PROCESS_RECORDS_TASK

logger = logging.getLogger(__name__)

DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 3.0


def redis_client(url: str) -> redis.Redis:
    """A client for vfleet's own Redis commands (feeding, reconciling, health keys, locks).

    Every wait is bounded: a stalled or paused Redis costs the caller one failed round, not
    a thread blocked until Redis comes back.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        health_check_interval=30,
    )


def record_ids_of(envelope: dict[str, Any]) -> list[int]:
    """The record ids a kombu envelope carries ([] if it is not a record task)."""
    headers = envelope.get("headers") or {}
    if headers.get("task") != PROCESS_RECORDS_TASK:
        return []
    body: Any = envelope.get("body", "")
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    try:
        ids = json.loads(body)[0][0]
        return [int(i) for i in (ids if isinstance(ids, list) else [ids])]
    except (ValueError, TypeError, IndexError, KeyError):
        return []


def _record_ids(raw: bytes | str, *, wrapped: bool) -> list[int]:
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    envelope = data[0] if wrapped and isinstance(data, list) and data else data
    return record_ids_of(envelope) if isinstance(envelope, dict) else []


def live_messages(client: redis.Redis, queues: Iterable[str]) -> dict[int, float | None]:
    """Record ids that have a message in Redis right now.

    The value is None for a message waiting in one of ``queues``, or the time a worker
    fetched it (kombu's ``unacked_index``) for one fetched and not yet acked.
    """
    found: dict[int, float | None] = {}
    for queue in queues:
        for raw in client.lrange(queue, 0, -1):  # type: ignore[union-attr]
            for rid in _record_ids(raw, wrapped=False):
                found[rid] = None
    fetched = dict(client.zrange(KOMBU_UNACKED_INDEX, 0, -1, withscores=True))  # type: ignore[arg-type]
    for tag, raw in client.hgetall(KOMBU_UNACKED).items():  # type: ignore[union-attr]
        for rid in _record_ids(raw, wrapped=True):
            if found.get(rid, 0.0) is not None:
                found[rid] = max(float(fetched.get(tag, 0.0)), found.get(rid) or 0.0)
    return found


def queue_length(client: redis.Redis, queue: str) -> int:
    return int(client.llen(queue))  # type: ignore[arg-type]


def queue_lengths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """The length of each of ``queues``, in one round trip."""
    names = sorted(set(queues))
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return {name: int(n) for name, n in zip(names, pipe.execute(), strict=True)}

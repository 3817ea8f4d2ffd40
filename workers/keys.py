"""Every Redis key vfleet writes (besides Celery's own queues), in one place."""

from __future__ import annotations

PREFIX = "vfleet:"
HEALTH_PREFIX = f"{PREFIX}health:"
FEED_LOCK = f"{PREFIX}lock:feed"
RECONCILE_LOCK = f"{PREFIX}lock:reconcile"
# Which worker's housekeeper runs the fleet-wide jobs (workers.locks.Turn).
FEED_TURN = f"{PREFIX}turn:feed"
RECONCILE_TURN = f"{PREFIX}turn:reconcile"
BEAT_LOCK = f"{PREFIX}lock:beat"
# kombu's Redis transport keeps fetched-but-unacked messages in this hash.
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"


def health_key(instance: str) -> str:
    """JSON ``{"healthy": bool, "checked_at": epoch seconds, "error": str | null}`` written by
    the vLLM scan and by each instance worker's own probe; read by the gating."""
    return f"{HEALTH_PREFIX}{instance}"


def hedged_key(batch_id: int) -> str:
    """Set of the batch's record ids already hedged (workers.hedging): once each."""
    return f"{PREFIX}hedged:{batch_id}"

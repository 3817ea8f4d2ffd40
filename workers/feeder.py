"""Keep Redis fed from SQL, a window at a time, and re-publish what Redis lost.

* :meth:`Feeder.feed` tops each queue up to its window (a small multiple of the
  concurrency that consumes it) with the records that are due: retries whose wait is over,
  then the next unpublished records in input order. So a batch of 10^7 records never sits
  in Redis at once, and neither does a record waiting out a retry delay.
* :meth:`Feeder.reconcile` finds records that should have a live message but have none
  (Redis restarted, a worker was SIGKILLed between fetch and ack, a lease expired) and
  publishes them again. A duplicate message is harmless: the claim lets one through.

Both run under a Redis lock (:class:`workers.locks.RoundLock`), so many workers may call
them and one does the work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Set as AbstractSet

import redis

from workers.broker import live_messages, queue_length, queue_lengths
from workers.dispatch import Dispatcher, chunk_size, live_targets
from workers.fleet import Fleet
from workers.health import is_down
from workers.hedging import Running, medians, pick_hedges
from workers.keys import FEED_LOCK, RECONCILE_LOCK, health_key, hedged_key
from workers.locks import RoundLock, process_token
from workers.queues import instance_queue, shared_queue
from workers.routes import Route
from workers.settings import Settings
from workers.store.ledger import Ledger
from workers.store.models import CLAIMABLE, Status, utcnow
from workers.store.values import BatchInfo

logger = logging.getLogger(__name__)

DEFAULT_RECONCILE_LIMIT = 5000
HEDGE_SAMPLE = 500
"""Latest results per batch, by finish time, whose latencies give the instances' medians."""
HEDGED_TTL = 86_400


class Feeder:
    def __init__(
        self,
        *,
        ledger: Ledger,
        dispatcher: Dispatcher,
        redis_client: redis.Redis,
        fleet: Fleet,
        settings: Settings,
    ) -> None:
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.redis = redis_client
        self.fleet = fleet
        self.settings = settings
        self._token = process_token()

    def _window(self, concurrency: int) -> int:
        return max(self.settings.window_min, int(self.settings.window_factor * concurrency))

    def queues_of(self, batch: BatchInfo, down: AbstractSet[str] = frozenset()) -> dict[str, int]:
        """The queues ``batch`` is published to, each with its window.

        A ``round-robin`` batch skips the instances in ``down``; a ``pinned`` one keeps
        them (its records wait for their instance).
        """
        if batch.route == Route.SHARED or not batch.targets:
            serving = sum(i.concurrency for i in self.fleet.instances if i.model == batch.model)
            return {shared_queue(batch.model): self._window(serving)}
        known = {i.name: i.concurrency for i in self.fleet.instances}
        return {instance_queue(t): self._window(known.get(t, 0)) for t in live_targets(batch, down)}

    def down_instances(self) -> frozenset[str]:
        """Instances whose latest health report (their worker's probe or the vLLM scan)
        says down. An instance nobody reported on is not taken as down."""
        names = [i.name for i in self.fleet.instances]
        if not names:
            return frozenset()
        reports = self.redis.mget([health_key(n) for n in names])
        return frozenset(
            name
            for name, raw in zip(names, reports, strict=True)  # type: ignore[arg-type]
            if is_down(raw)
        )

    def _locked(self, name: str) -> RoundLock:
        # Per thread too: two threads of one process must not both get in.
        return RoundLock(self.redis, name, token=f"{self._token}:{threading.get_ident()}")

    def feed(self) -> int:
        """Top every queue up to its window; returns how many records were published."""
        with self._locked(FEED_LOCK) as mine:
            return self._feed() if mine else 0

    def _feed(self) -> int:
        batches = self.ledger.active_batches(holding=CLAIMABLE, unpublished=True)
        if not batches:
            return 0  # nothing waits to be published: the round costs one query
        down = self.down_instances()
        routed = [(batch, self.queues_of(batch, down)) for batch in batches]
        lengths = queue_lengths(self.redis, {q for _, queues in routed for q in queues})
        room: dict[str, int] = {}
        published = 0
        for batch, queues in routed:
            chunk = self.chunk(batch)
            for queue, window in queues.items():
                if queue not in room:  # in records: each waiting message holds up to a chunk
                    room[queue] = max(0, window - lengths[queue] * chunk)
            free = sum(room[q] for q in queues)
            if free <= 0:
                continue
            ids = self.ledger.due(batch.id, limit=free)
            if not ids:
                continue
            self._publish(batch, ids, down)
            published += len(ids)
            _spend(room, list(queues), len(ids))
        if published:
            logger.info("fed %s records into Redis", published)
        return published

    def chunk(self, batch: BatchInfo) -> int:
        """Records per message of ``batch`` (:func:`workers.dispatch.chunk_size`)."""
        return chunk_size(self.fleet, batch.model, self.settings.chunk_max)

    def _publish(self, batch: BatchInfo, ids: list[int], down: AbstractSet[str]) -> None:
        """Mark ``ids`` published, then publish them. In this order a worker can never see
        a message before its mark (and later find its own ``retry`` stamped published);
        a publish that fails is unmarked, so the records wait for the next round."""
        self.ledger.mark_published(ids)
        try:
            self.dispatcher.publish(batch, ids, chunk=self.chunk(batch), down=down)
        except BaseException:
            self.ledger.mark_published(ids, published=False)
            raise

    def hedge(self) -> int:
        """Run the tail's slowest records again on faster instances; returns how many.

        Only for ``shared`` batches with nothing left waiting (see :mod:`workers.hedging`);
        each record is hedged once.
        """
        if not self.settings.hedge:
            return 0
        with self._locked(FEED_LOCK) as mine:
            return self._hedge() if mine else 0

    def _hedge(self) -> int:
        batches = [
            b
            for b in self.ledger.active_batches(holding=(Status.RUNNING,))
            if b.route == Route.SHARED
        ]
        if not batches:
            return 0
        down = self.down_instances()
        total = 0
        for batch in batches:
            queue = shared_queue(batch.model)
            if queue_length(self.redis, queue) or self.ledger.waiting(batch.id):
                continue  # records still wait for a slot: no tail yet
            serving = [
                i.name
                for i in self.fleet.instances
                if i.model == batch.model and i.name not in down
            ]
            window = self._window(sum(self.fleet.instance(n).concurrency for n in serving))
            now = utcnow()
            running = [
                Running(rid, instance, (now - started).total_seconds())
                for rid, instance, started in self.ledger.running(batch.id, limit=window)
            ]
            if not running:
                continue
            latency = medians(self.ledger.recent_latencies(batch.id, limit=HEDGE_SAMPLE))
            picked = pick_hedges(
                running,
                latency,
                candidates=serving,
                after=self.settings.hedge_after,
                limit=window,
            )
            key = hedged_key(batch.id)
            fresh = [(rid, target) for rid, target in picked if self.redis.sadd(key, rid)]
            if not fresh:
                continue
            self.redis.expire(key, HEDGED_TTL)
            self.dispatcher.publish_hedges(fresh)
            total += len(fresh)
            logger.info("batch %s: hedged %s records of its tail", batch.name, len(fresh))
        return total

    def reconcile(self) -> int:
        """Re-publish records that have no live message; returns how many."""
        with self._locked(RECONCILE_LOCK) as mine:
            return self._reconcile() if mine else 0

    def _reconcile(self) -> int:
        stale = self.ledger.stale(
            grace_seconds=self.settings.reconcile_grace, limit=DEFAULT_RECONCILE_LIMIT
        )
        if not stale:
            return 0
        down = self.down_instances()
        batches = {b.id: b for b in self.ledger.active_batches()}
        # Messages waiting in a down instance's queue do not count as live for a
        # round-robin batch: they are published again to the instances that are up (the
        # old ones, run when it comes back, find their records claimed or done).
        routed = {b.id: self.queues_of(b, down) for b in batches.values()}
        queues = {q for per_batch in routed.values() for q in per_batch}
        live = live_messages(self.redis, queues)
        # A message a worker fetched this long ago and still holds, for a record nobody is
        # running, was fetched by a worker that died: messages never wait for a countdown
        # (retries wait in the ledger), so a live worker starts what it fetches at once.
        held_too_long = time.time() - self.settings.reconcile_grace
        missing: dict[int, list[int]] = defaultdict(list)
        for record_id, batch_id, orphaned in stale:
            if not routed.get(batch_id):  # not active, or every instance it goes to is down
                continue
            fetched_at = live.get(record_id, -1.0)
            has_message = record_id in live and (fetched_at is None or fetched_at > held_too_long)
            if orphaned or not has_message:
                missing[batch_id].append(record_id)
        total = 0
        for batch_id, ids in missing.items():
            self._publish(batches[batch_id], ids, down)
            total += len(ids)
            logger.warning(
                "batch %s: re-published %s records that had no live message",
                batches[batch_id].name,
                len(ids),
            )
        return total


def _spend(room: dict[str, int], queues: list[str], n: int) -> None:
    """Take ``n`` from the rooms of ``queues`` (round-robin spreads evenly)."""
    for queue in queues:
        take = min(room[queue], n)
        room[queue] -= take
        n -= take

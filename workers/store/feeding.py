"""What the feeder, the reconciler and the hedger read: records waiting to be published,
due retries, records whose message may be lost, the running tail of a batch."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import Engine, Integer, Select, and_, bindparam, or_, select, update

from workers.store.models import CLAIMABLE, Record, Status, utcnow
from workers.store.queries import aware

# A feed round's statements, built once with bind parameters: SQLAlchemy compiles each
# once, where a statement built per call pays for its construction and cache-key walk on
# every round (most of a round's CPU).
_DUE_RETRIES = (
    select(Record.id)
    .where(
        Record.batch_id == bindparam("b_batch"),
        Record.status == Status.RETRY,
        Record.published_at.is_(None),
        Record.not_before <= bindparam("b_now"),
    )
    .order_by(Record.not_before)
    .limit(bindparam("b_limit", type_=Integer))
)
_DUE_QUEUED = (
    select(Record.id)
    .where(
        Record.batch_id == bindparam("b_batch"),
        Record.status == Status.QUEUED,
        Record.published_at.is_(None),
        or_(Record.not_before.is_(None), Record.not_before <= bindparam("b_now")),
    )
    .order_by(Record.seq)
    .limit(bindparam("b_limit", type_=Integer))
)
_MARK_PUBLISHED = (
    update(Record)
    .where(Record.id.in_(bindparam("b_ids", expanding=True)))
    .values(published_at=bindparam("b_when", type_=Record.__table__.c.published_at.type))
)


class FeedingStore:
    """The feeding half of :class:`workers.store.ledger.Ledger`."""

    engine: Engine

    def unpublished(self, batch_id: int, *, limit: int) -> list[int]:
        """Ids of queued records never published (or given back), in input order; those
        given back with a ``not_before`` still ahead included."""
        q = (
            select(Record.id)
            .where(
                Record.batch_id == batch_id,
                Record.status == Status.QUEUED,
                Record.published_at.is_(None),
            )
            .order_by(Record.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [int(i) for i in conn.scalars(q)]

    def waiting(self, batch_id: int) -> bool:
        """Whether any record of the batch waits to be published (due or not yet)."""
        q = (
            select(Record.id)
            .where(
                Record.batch_id == batch_id,
                Record.status.in_(CLAIMABLE),
                Record.published_at.is_(None),
            )
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.scalar(q) is not None

    def due(self, batch_id: int, *, limit: int, now: datetime | None = None) -> list[int]:
        """Ids of the batch's records waiting to be published that are due now: retries
        whose ``not_before`` has passed (longest waiting first), then queued records in
        input order. Each query walks one index (``ix_records_batch_retry`` and
        ``ix_records_batch_status``), so a batch of millions reads only ``limit`` rows."""
        params = {"b_batch": batch_id, "b_now": now or utcnow(), "b_limit": limit}
        with self.engine.connect() as conn:
            ids = [int(i) for i in conn.scalars(_DUE_RETRIES, params)]
            if len(ids) < limit:
                params["b_limit"] = limit - len(ids)
                ids += [int(i) for i in conn.scalars(_DUE_QUEUED, params)]
        return ids

    def mark_published(self, ids: Sequence[int], *, published: bool = True) -> None:
        """Stamp ``ids`` as published now (or, ``published=False``, as never published:
        a publish that failed)."""
        if not ids:
            return
        params = {"b_ids": list(ids), "b_when": utcnow() if published else None}
        with self.engine.begin() as conn:
            conn.execute(_MARK_PUBLISHED, params)

    def stale(
        self, *, grace_seconds: float, limit: int, now: datetime | None = None
    ) -> list[tuple[int, int, bool]]:
        """``(record_id, batch_id, orphaned)`` of records that may have no live message:
        published more than ``grace_seconds`` ago yet still waiting, or running with an
        expired lease (``orphaned``: its owner stopped renewing the lease, so a message
        still held for it is held by a dead worker).
        """
        now = now or utcnow()
        before = now - timedelta(seconds=grace_seconds)
        q = (
            select(Record.id, Record.batch_id, Record.status)
            .where(
                or_(
                    and_(Record.status.in_(CLAIMABLE), Record.published_at < before),
                    and_(Record.status == Status.RUNNING, Record.lease_until < now),
                )
            )
            .order_by(Record.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(int(a), int(b), c == Status.RUNNING) for a, b, c in conn.execute(q)]

    def running(self, batch_id: int, *, limit: int) -> list[tuple[int, str, datetime]]:
        """``(record_id, instance, started_at)`` of the batch's running records."""
        q = (
            select(Record.id, Record.instance, Record.started_at)
            .where(Record.batch_id == batch_id, Record.status == Status.RUNNING)
            .order_by(Record.started_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                (int(i), str(inst), started)
                for i, inst, at in conn.execute(q)
                if inst is not None and (started := aware(at)) is not None
            ]

    def recent_latencies(self, batch_id: int, *, limit: int) -> list[tuple[str, float]]:
        """``(instance, seconds)`` of the batch's latest successful calls, by finish time.

        By finish time, not by publish order: a slow instance's results belong to records
        published long before, and a sample in publish order can leave it out (then its
        median is unknown and its tail is never hedged). Walks ``ix_records_batch_finished``
        backwards, so a batch of millions reads about ``limit`` rows."""
        with self.engine.connect() as conn:
            rows = conn.execute(recent_latencies_query(), {"b_batch": batch_id, "b_limit": limit})
            return [
                (str(i), float(ms) / 1000) for i, ms in rows if i is not None and ms is not None
            ]


@functools.cache
def recent_latencies_query() -> Select[str | None, float | None]:
    """The hedger's sample: a batch's latest successful calls (``b_batch``, ``b_limit``)."""
    return (
        select(Record.instance, Record.latency_ms)
        .where(
            Record.batch_id == bindparam("b_batch"),
            Record.status == Status.SUCCEEDED,
            Record.reused_from.is_(None),
            Record.latency_ms.is_not(None),
        )
        .order_by(Record.finished_at.desc())
        .limit(bindparam("b_limit", type_=Integer))
    )

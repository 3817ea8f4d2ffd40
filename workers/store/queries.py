"""Read-only views of a batch: counts per status and instance, first and last times, every
record streamed in input order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.orm import Session

from workers.store.models import Record, Status


class QueryStore:
    """The reading half of :class:`workers.store.ledger.Ledger`."""

    engine: Engine

    def counts(self, batch_id: int) -> dict[str, int]:
        """Records per status (every status present, zeros included)."""
        q = (
            select(Record.status, func.count())
            .where(Record.batch_id == batch_id)
            .group_by(Record.status)
        )
        out = {s.value: 0 for s in Status}
        with self.engine.connect() as conn:
            for status, n in conn.execute(q):
                out[status] = int(n)
        return out

    def instance_counts(self, batch_id: int) -> dict[str, dict[str, int]]:
        """Per instance: records per status (only instances that touched the batch)."""
        q = (
            select(Record.instance, Record.status, func.count())
            .where(Record.batch_id == batch_id, Record.instance.is_not(None))
            .group_by(Record.instance, Record.status)
        )
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for inst, status, n in conn.execute(q):
                out.setdefault(inst or "?", {})[status] = int(n)
        return out

    def finished_between(self, batch_id: int, since: datetime) -> int:
        """Records of the batch that reached a final status at or after ``since``."""
        q = select(func.count()).where(Record.batch_id == batch_id, Record.finished_at >= since)
        with self.engine.connect() as conn:
            return int(conn.scalar(q) or 0)

    def first_started(self, batch_id: int) -> datetime | None:
        q = select(func.min(Record.started_at)).where(Record.batch_id == batch_id)
        with self.engine.connect() as conn:
            value = conn.scalar(q)
        return aware(value)

    def last_finished(self, batch_id: int) -> datetime | None:
        q = select(func.max(Record.finished_at)).where(Record.batch_id == batch_id)
        with self.engine.connect() as conn:
            value = conn.scalar(q)
        return aware(value)


DEFAULT_PAGE = 1000


def record_pages(
    engine: Engine, batch_id: int, *, page: int = DEFAULT_PAGE
) -> Iterator[list[Record]]:
    """The batch's records in input order (``seq``, then ``id``), ``page`` rows at a time.

    Keyset pagination along ``ix_records_batch_seq``: each page is one range read that
    starts where the last one ended, in a session of its own, so a batch of millions
    costs the same per page and nothing is held between pages."""
    after: tuple[int, int] | None = None
    while True:
        q = select(Record).where(Record.batch_id == batch_id)
        if after is not None:
            q = q.where(tuple_(Record.seq, Record.id) > tuple_(*after))
        q = q.order_by(Record.seq, Record.id).limit(page)
        with Session(engine, expire_on_commit=False) as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield rows
        if len(rows) < page:
            return
        after = (rows[-1].seq, rows[-1].id)


def iter_records(engine: Engine, batch_id: int, *, chunk: int = DEFAULT_PAGE) -> Iterator[Record]:
    """Every record of the batch in input order, streamed ``chunk`` rows at a time
    (:func:`record_pages`)."""
    for rows in record_pages(engine, batch_id, page=chunk):
        yield from rows


def aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back naive UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value

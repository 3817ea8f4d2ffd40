"""Batches in the ledger: create (race-safe), look up, list, cancel, redrive, delete."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, Select, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers.errors import BatchNotFoundError, ConfigError, StoreError
from workers.store.limits import BATCH_NAME_CHARS, MODEL_CHARS, SPEC_NAME_CHARS, check_text
from workers.store.models import CLAIMABLE, Batch, Record, Status, utcnow
from workers.store.values import BatchInfo


def _info(batch: Batch | Row[Any]) -> BatchInfo:
    return BatchInfo(
        batch.id,
        batch.name,
        batch.spec_name,
        batch.spec,
        batch.model,
        batch.route,
        tuple(batch.targets or ()),
        batch.created_at,
        batch.cancelled_at,
    )


@functools.lru_cache(maxsize=16)
def active_batches_query(
    *, holding: tuple[Status, ...] = (), unpublished: bool = False
) -> Select[Any]:
    """Batches that are not cancelled, in creation order. With ``holding``, only those with
    a record in one of those statuses (and, with ``unpublished``, not published yet): one
    index seek per batch (``ix_records_batch_status``), so a feeder's round over a ledger
    of finished batches reads no records and has nothing more to ask Redis.

    Built once per kind and run on a plain connection: the feeder asks every round."""
    q = select(*Batch.__table__.c).where(Batch.cancelled_at.is_(None)).order_by(Batch.id)
    if holding:
        has = [Record.batch_id == Batch.id, Record.status.in_(holding)]
        if unpublished:
            has.append(Record.published_at.is_(None))
        q = q.where(exists().where(*has))
    return q


class BatchStore:
    """The batch half of :class:`workers.store.ledger.Ledger`."""

    engine: Engine
    _batches: dict[int, BatchInfo]
    _lock: threading.Lock

    if TYPE_CHECKING:

        def counts(self, batch_id: int) -> dict[str, int]: ...

    def create_batch(
        self,
        *,
        name: str,
        spec_name: str,
        spec: dict[str, Any],
        model: str,
        route: str,
        targets: Sequence[str] = (),
        source: str | None = None,
    ) -> tuple[BatchInfo, bool]:
        """Return the batch ``name``, creating it; the flag says whether it is new.

        Raises :class:`ConfigError` when it exists with another spec, model or route:
        re-running an enqueue must not silently mix two prompts in one batch; and
        :class:`~workers.store.limits.LimitError` for a name the ledger cannot hold. Two callers
        creating one batch at once both get it, and one of them is told it is new.
        """
        check_text("batch name", name, BATCH_NAME_CHARS)
        check_text("spec name", spec_name, SPEC_NAME_CHARS)
        check_text("model name", model, MODEL_CHARS)
        wanted = (spec, model, route, tuple(targets))
        for _ in range(2):  # a lost creation race: the second look finds the winner's batch
            with Session(self.engine) as s, s.begin():
                batch = s.scalar(select(Batch).where(Batch.name == name))
                if batch is not None:
                    if (batch.spec, batch.model, batch.route, tuple(batch.targets or ())) != wanted:
                        raise ConfigError(
                            f"batch {name!r} exists with another spec, model or route; "
                            "use a new --batch name"
                        )
                    return _info(batch), False
            try:
                with Session(self.engine) as s, s.begin():
                    batch = Batch(
                        name=name,
                        spec_name=spec_name,
                        spec=spec,
                        model=model,
                        route=route,
                        targets=list(targets) or None,
                        source=source,
                    )
                    s.add(batch)
                    s.flush()
                    return _info(batch), True
            except IntegrityError:
                continue
        raise StoreError(f"batch {name!r} could not be created nor found")

    def batch(self, name: str) -> BatchInfo:
        """Return the batch called ``name``. Raises :class:`BatchNotFoundError`."""
        with Session(self.engine) as s:
            batch = s.scalar(select(Batch).where(Batch.name == name))
            if batch is None:
                raise BatchNotFoundError(f"no batch named {name!r} (see `vfleet batches`)")
            return _info(batch)

    def batch_by_id(self, batch_id: int) -> BatchInfo:
        """Return batch ``batch_id``, cached: a batch's spec never changes."""
        with self._lock:
            cached = self._batches.get(batch_id)
        if cached is not None:
            return cached
        with Session(self.engine) as s:
            batch = s.get(Batch, batch_id)
            if batch is None:
                raise BatchNotFoundError(f"no batch with id {batch_id}")
            info = _info(batch)
        with self._lock:
            self._batches[batch_id] = info
        return info

    def batches(self) -> list[Batch]:
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(Batch).order_by(Batch.id)))

    def set_total(self, batch_id: int) -> int:
        """Recount the batch's records into ``batches.total`` and return it."""
        with Session(self.engine) as s, s.begin():
            n = s.scalar(select(func.count()).where(Record.batch_id == batch_id)) or 0
            s.execute(update(Batch).where(Batch.id == batch_id).values(total=n))
            return n

    def active_batches(
        self, *, holding: Sequence[Status] = (), unpublished: bool = False
    ) -> list[BatchInfo]:
        """Batches that are not cancelled (the feeder's candidates); with ``holding``, only
        those with work of that kind (:func:`active_batches_query`)."""
        q = active_batches_query(holding=tuple(holding), unpublished=unpublished)
        with self.engine.connect() as conn:
            return [_info(b) for b in conn.execute(q)]

    def cancel(self, batch_id: int) -> int:
        """Cancel the batch: its ``queued``/``retry`` records become ``cancelled``.

        Running records finish. Returns how many records were cancelled now.
        """
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.cancelled_at.is_(None))
                .values(cancelled_at=now)
            )
            stmt = (
                update(Record)
                .where(Record.batch_id == batch_id, Record.status.in_(CLAIMABLE))
                .values(status=Status.CANCELLED, lease_until=None, finished_at=now)
            )
            return int(conn.execute(stmt).rowcount)

    def requeue_cancelled(self, batch_id: int) -> int:
        """Undo a cancel: ``cancelled`` records are ``queued`` again, unpublished, and the
        batch is active again. Returns how many records were queued."""
        with self.engine.begin() as conn:
            conn.execute(update(Batch).where(Batch.id == batch_id).values(cancelled_at=None))
            stmt = (
                update(Record)
                .where(Record.batch_id == batch_id, Record.status == Status.CANCELLED)
                .values(status=Status.QUEUED, published_at=None, not_before=None, finished_at=None)
            )
            return int(conn.execute(stmt).rowcount)

    def requeue(self, batch_id: int, *, error_kind: str | None = None) -> int:
        """Put the batch's failed records (of ``error_kind``, if given) back in the queue.

        Attempts restart from zero; the last error stays until the next outcome.
        """
        cond = [Record.batch_id == batch_id, Record.status == Status.FAILED]
        if error_kind is not None:
            cond.append(Record.error_kind == error_kind)
        stmt = (
            update(Record)
            .where(*cond)
            .values(
                status=Status.QUEUED,
                attempts=0,
                published_at=None,
                not_before=None,
                lease_until=None,
                finished_at=None,
            )
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def delete_batch(self, batch_id: int, *, force: bool = False, chunk: int = 5000) -> int:
        """Delete the batch's records, then the batch; returns how many records went.

        Raises :class:`StoreError` while records are running, unless ``force``.
        """
        running = self.counts(batch_id)[Status.RUNNING]
        if running and not force:
            raise StoreError(
                f"{running} records of the batch are running; cancel it and wait, or use --force"
            )
        deleted = 0
        while True:  # in chunks: one huge DELETE would hold SQLite's write lock for long
            with self.engine.begin() as conn:
                ids = select(Record.id).where(Record.batch_id == batch_id).limit(chunk)
                n = int(conn.execute(delete(Record).where(Record.id.in_(ids))).rowcount)
            deleted += n
            if n == 0:
                break
        with self.engine.begin() as conn:
            conn.execute(delete(Batch).where(Batch.id == batch_id))
        with self._lock:
            self._batches.pop(batch_id, None)
        return deleted

"""The record state machine on top of the SQL store.

SQL is the source of truth; Redis only carries record ids. Every state change is one
conditional UPDATE, so a record has at most one owner and a late or duplicate message
finds nothing to do:

* :meth:`Ledger.claim` moves ``queued``/``retry`` (or ``running`` with an expired lease)
  to ``running`` and bumps ``attempts``; the attempt number is the claim's identity.
* :meth:`Ledger.succeed`, :meth:`Ledger.fail` and :meth:`Ledger.retry_later` only act on
  the row while it is still ``running`` under that same attempt.
* A record waiting for a retry stays here (``retry``, unpublished, ``not_before``) and is
  published by the feeder when :meth:`Ledger.due` returns it: never as a delayed message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers.errors import BatchNotFoundError, ConfigError, StoreError
from workers.store.limits import BATCH_NAME_CHARS, MODEL_CHARS, SPEC_NAME_CHARS, check_text
from workers.store.models import Batch, Record, Status, utcnow

DEFAULT_INSERT_CHUNK = 2000
CLAIMABLE = (Status.QUEUED, Status.RETRY)


# The two statements every record runs, built once with bind parameters: SQLAlchemy then
# compiles each once, where a statement built per call costs its cache-key walk each time.
_CLAIM = (
    update(Record)
    .where(
        Record.id == bindparam("b_id"),
        or_(
            Record.status.in_(CLAIMABLE),
            and_(Record.status == Status.RUNNING, Record.lease_until < bindparam("b_now")),
        ),
    )
    .values(
        status=Status.RUNNING,
        attempts=Record.attempts + 1,
        lease_until=bindparam("b_lease"),
        worker=bindparam("b_worker"),
        instance=bindparam("b_instance"),
        task_id=bindparam("b_task"),
        started_at=bindparam("b_now"),
        not_before=None,
    )
    .returning(Record.batch_id, Record.key, Record.input, Record.attempts)
)
_RESULT = {
    name: bindparam(f"b_{name}", type_=Record.__table__.c[name].type)
    for name in (
        "output_text",
        "output",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "provenance",
        "finish_reason",
        "finished_at",
    )
}
_SUCCEED = (
    update(Record)
    .where(
        Record.id == bindparam("b_id"),
        Record.status == Status.RUNNING,
        Record.attempts == bindparam("b_attempts"),
    )
    .values(status=Status.SUCCEEDED, lease_until=None, error_kind=None, error=None, **_RESULT)
)
# A hedge (workers.hedging) wins over whichever attempt is running.
_SUCCEED_HEDGE = (
    update(Record)
    .where(Record.id == bindparam("b_id"), Record.status == Status.RUNNING)
    .values(
        status=Status.SUCCEEDED,
        lease_until=None,
        error_kind=None,
        error=None,
        worker=bindparam("b_worker"),
        instance=bindparam("b_instance"),
        **_RESULT,
    )
)


@dataclass(frozen=True)
class BatchInfo:
    id: int
    name: str
    spec_name: str
    spec: dict[str, Any]
    model: str
    route: str
    targets: tuple[str, ...] = ()
    created_at: datetime | None = None
    cancelled_at: datetime | None = None


@dataclass(frozen=True)
class Claim:
    """A record this worker now owns, under attempt number ``attempts``."""

    record_id: int
    batch: BatchInfo
    key: str
    input: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What a successful call produced."""

    output_text: str
    output: dict[str, Any] | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float
    # Where it ran: instance, host, GPU indices, model id, max_model_len (records.provenance).
    provenance: dict[str, Any] | None = None
    # The (last) answer's finish_reason: "stop", "length"...
    finish_reason: str | None = None


def _info(batch: Batch) -> BatchInfo:
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


class Ledger:
    """Reads and moves records. Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._batches: dict[int, BatchInfo] = {}
        self._lock = threading.Lock()

    # -- batches -----------------------------------------------------------------------

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

    # -- records in --------------------------------------------------------------------

    def add_records(
        self,
        batch_id: int,
        rows: Iterable[tuple[str, int, dict[str, Any]]],
        *,
        chunk: int = DEFAULT_INSERT_CHUNK,
    ) -> int:
        """Insert ``(key, seq, input)`` rows, skipping keys the batch already has.

        Returns how many rows were new. Streams ``rows`` in chunks; memory stays flat.
        """
        added = 0
        buf: list[dict[str, Any]] = []
        for key, seq, data in rows:
            buf.append(
                {
                    "batch_id": batch_id,
                    "key": key,
                    "seq": seq,
                    "input": data,
                    "status": Status.QUEUED,
                    "attempts": 0,
                    "created_at": utcnow(),
                }
            )
            if len(buf) >= chunk:
                added += self._insert_chunk(buf)
                buf = []
        if buf:
            added += self._insert_chunk(buf)
        return added

    def _insert_chunk(self, rows: list[dict[str, Any]]) -> int:
        dialect = self.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(Record)
            .on_conflict_do_nothing(index_elements=["batch_id", "key"])
            .returning(Record.id)
        )
        # RETURNING yields only the rows actually inserted, so this counts the new ones.
        with self.engine.begin() as conn:
            return len(conn.execute(stmt, rows).all())

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
        now = now or utcnow()
        due_now = or_(Record.not_before.is_(None), Record.not_before <= now)
        retries = (
            select(Record.id)
            .where(
                Record.batch_id == batch_id,
                Record.status == Status.RETRY,
                Record.published_at.is_(None),
                Record.not_before <= now,
            )
            .order_by(Record.not_before)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            ids = [int(i) for i in conn.scalars(retries)]
            if len(ids) < limit:
                queued = (
                    select(Record.id)
                    .where(
                        Record.batch_id == batch_id,
                        Record.status == Status.QUEUED,
                        Record.published_at.is_(None),
                        due_now,
                    )
                    .order_by(Record.seq)
                    .limit(limit - len(ids))
                )
                ids += [int(i) for i in conn.scalars(queued)]
        return ids

    def mark_published(self, ids: Sequence[int], *, published: bool = True) -> None:
        """Stamp ``ids`` as published now (or, ``published=False``, as never published:
        a publish that failed)."""
        if not ids:
            return
        when = utcnow() if published else None
        with self.engine.begin() as conn:
            conn.execute(update(Record).where(Record.id.in_(ids)).values(published_at=when))

    def give_back(self, record_id: int, *, delay: float, now: datetime | None = None) -> bool:
        """Hand an unclaimed waiting record back to the feeder, due ``delay`` seconds from
        now (a worker that cannot run it: closed gate, shutting down). False if it is not
        waiting (claimed, finished)."""
        now = now or utcnow()
        stmt = (
            update(Record)
            .where(Record.id == record_id, Record.status.in_(CLAIMABLE))
            .values(published_at=None, not_before=now + timedelta(seconds=delay))
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- the state machine -------------------------------------------------------------

    def claim(
        self,
        record_id: int,
        *,
        worker: str,
        instance: str,
        task_id: str | None,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> Claim | None:
        """Take ``record_id`` for this worker; None when someone else has it or it is done."""
        now = now or utcnow()
        params = {
            "b_id": record_id,
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_seconds),
            "b_worker": worker,
            "b_instance": instance,
            "b_task": task_id,
        }
        with self.engine.begin() as conn:
            row = conn.execute(_CLAIM, params).first()
        if row is None:
            return None
        batch = self.batch_by_id(row.batch_id)
        return Claim(record_id, batch, row.key, row.input, row.attempts)

    def _finish(self, claim: Claim, log: dict[str, Any] | None = None, **values: Any) -> bool:
        owned = (
            Record.id == claim.record_id,
            Record.status == Status.RUNNING,
            Record.attempts == claim.attempts,
        )
        with self.engine.begin() as conn:
            if log is not None:
                # Read-modify-write is safe: the row is ours while it is running under our
                # attempt number, and the UPDATE below checks that again.
                row = conn.execute(
                    select(Record.attempts_log, Record.instance).where(*owned)
                ).first()
                if row is None:
                    return False
                entry = {"attempt": claim.attempts, "instance": row.instance, **log}
                values["attempts_log"] = [*(row.attempts_log or []), entry]
            stmt = update(Record).where(*owned).values(lease_until=None, **values)
            return conn.execute(stmt).rowcount == 1

    def succeed(self, claim: Claim, outcome: Outcome) -> bool:
        """Store the result and ``succeeded`` in one transaction; False if the claim was lost."""
        params = {"b_id": claim.record_id, "b_attempts": claim.attempts, **_result(outcome)}
        with self.engine.begin() as conn:
            return conn.execute(_SUCCEED, params).rowcount == 1

    def fail(
        self,
        claim: Claim,
        *,
        kind: str,
        message: str,
        raw: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        finish_reason: str | None = None,
    ) -> bool:
        """Mark the record ``failed`` with a reason, keeping the last answer (raw text, token
        counts, finish_reason) when the instance gave one."""
        return self._finish(
            claim,
            _log_entry(kind, message, "failed"),
            status=Status.FAILED,
            error_kind=kind,
            error=message,
            output_text=raw,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            finished_at=utcnow(),
        )

    def retry_later(self, claim: Claim, *, kind: str, message: str, delay: float = 0.0) -> bool:
        """Give the record back as ``retry``, due ``delay`` seconds from now, keeping the
        error of this attempt. It waits here, unpublished, until the feeder publishes it.

        If its batch was cancelled while it ran, it becomes ``cancelled`` instead.
        """
        cancelled = (
            select(Batch.id)
            .where(Batch.id == Record.batch_id, Batch.cancelled_at.is_not(None))
            .exists()
        )
        return self._finish(
            claim,
            _log_entry(kind, message, "retry"),
            status=case((cancelled, Status.CANCELLED.value), else_=Status.RETRY.value),
            error_kind=kind,
            error=message,
            published_at=None,
            not_before=utcnow() + timedelta(seconds=delay),
        )

    # -- hedged requests (workers.hedging) ---------------------------------------------

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
                if inst is not None and (started := _aware(at)) is not None
            ]

    def recent_latencies(self, batch_id: int, *, limit: int) -> list[tuple[str, float]]:
        """``(instance, seconds)`` of the batch's latest published successful calls.

        Ordered along ``ix_records_batch_status`` (batch, status, published_at, seq), so a
        batch of millions reads only ``limit`` index entries."""
        q = (
            select(Record.instance, Record.latency_ms)
            .where(
                Record.batch_id == batch_id,
                Record.status == Status.SUCCEEDED,
                Record.reused_from.is_(None),
                Record.latency_ms.is_not(None),
            )
            .order_by(Record.published_at.desc(), Record.seq.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                (str(i), float(ms) / 1000)
                for i, ms in conn.execute(q)
                if i is not None and ms is not None
            ]

    def peek_running(self, record_id: int) -> tuple[Claim, str] | None:
        """A running record as ``(claim, instance running it)``, for a hedge; None if it
        is not running. The claim is not taken: the record keeps its owner."""
        q = select(
            Record.batch_id, Record.key, Record.input, Record.attempts, Record.instance
        ).where(Record.id == record_id, Record.status == Status.RUNNING)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        claim = Claim(record_id, self.batch_by_id(row.batch_id), row.key, row.input, row.attempts)
        return claim, str(row.instance)

    def succeed_hedge(self, claim: Claim, outcome: Outcome, *, worker: str, instance: str) -> bool:
        """Store a hedge's result if the record is still running (under any attempt): the
        first result wins, and the owner's later :meth:`succeed` finds nothing to do."""
        params = {
            "b_id": claim.record_id,
            "b_worker": worker,
            "b_instance": instance,
            **_result(outcome),
        }
        with self.engine.begin() as conn:
            return conn.execute(_SUCCEED_HEDGE, params).rowcount == 1

    def renew(self, record_ids: Sequence[int], *, worker: str, lease_seconds: float) -> int:
        """Extend the leases of records this worker is still working on; returns how many."""
        if not record_ids:
            return 0
        stmt = (
            update(Record)
            .where(
                Record.id.in_(record_ids), Record.status == Status.RUNNING, Record.worker == worker
            )
            .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def release(self, held: Sequence[tuple[int, int]]) -> int:
        """Give back ``(record_id, attempts)`` claims unfinished at shutdown: ``queued`` again,
        unpublished, so the feeder or a restored message hands them to another worker."""
        n = 0
        with self.engine.begin() as conn:
            for record_id, attempts in held:
                stmt = (
                    update(Record)
                    .where(
                        Record.id == record_id,
                        Record.status == Status.RUNNING,
                        Record.attempts == attempts,
                    )
                    .values(status=Status.QUEUED, lease_until=None, published_at=None)
                )
                n += conn.execute(stmt).rowcount
        return n

    # -- the feeder and the reconciler ---------------------------------------------------

    def active_batches(self) -> list[BatchInfo]:
        """Batches that are not cancelled (the feeder's candidates)."""
        with Session(self.engine) as s:
            return [
                _info(b)
                for b in s.scalars(
                    select(Batch).where(Batch.cancelled_at.is_(None)).order_by(Batch.id)
                )
            ]

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

    # -- reading -----------------------------------------------------------------------

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
        return _aware(value)

    def last_finished(self, batch_id: int) -> datetime | None:
        q = select(func.max(Record.finished_at)).where(Record.batch_id == batch_id)
        with self.engine.connect() as conn:
            value = conn.scalar(q)
        return _aware(value)

    # -- lifecycle: cancel, redrive, delete ----------------------------------------------

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


def iter_records(engine: Engine, batch_id: int, *, chunk: int = 1000) -> Iterator[Record]:
    """Every record of the batch in input order, streamed ``chunk`` rows at a time."""
    last_seq, last_id = -1, -1
    while True:
        q = (
            select(Record)
            .where(
                Record.batch_id == batch_id,
                or_(Record.seq > last_seq, and_(Record.seq == last_seq, Record.id > last_id)),
            )
            .order_by(Record.seq, Record.id)
            .limit(chunk)
        )
        with Session(engine, expire_on_commit=False) as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield from rows
        last_seq, last_id = rows[-1].seq, rows[-1].id


def _result(outcome: Outcome) -> dict[str, Any]:
    """The bind parameters of ``_RESULT`` for ``outcome``."""
    return {
        "b_output_text": outcome.output_text,
        "b_output": outcome.output,
        "b_prompt_tokens": outcome.prompt_tokens,
        "b_completion_tokens": outcome.completion_tokens,
        "b_latency_ms": outcome.latency_ms,
        "b_provenance": outcome.provenance,
        "b_finish_reason": outcome.finish_reason,
        "b_finished_at": utcnow(),
    }


def _log_entry(kind: str, message: str, outcome: str) -> dict[str, Any]:
    """One ``attempts_log`` entry (the attempt number and instance are added on write)."""
    return {"kind": kind, "error": message[:1000], "outcome": outcome, "at": utcnow().isoformat()}


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back naive UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value

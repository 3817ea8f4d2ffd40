"""The record state machine: claim, finish, retry, give back, renew, release, hedge.

Every state change is one conditional UPDATE, so a record has at most one owner and a
late or duplicate message finds nothing to do:

* :meth:`ClaimStore.claim` moves ``queued``/``retry`` (or ``running`` with an expired
  lease) to ``running`` and bumps ``attempts``; the attempt number is the claim's identity.
* :meth:`ClaimStore.succeed`, :meth:`ClaimStore.fail` and :meth:`ClaimStore.retry_later`
  only act on the row while it is still ``running`` under that same attempt.
* A retried or given-back record waits unpublished with ``not_before``; the feeder
  publishes it when :meth:`workers.store.feeding.FeedingStore.due` returns it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, or_, select, update
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.elements import ColumnElement

from workers.store.models import CLAIMABLE, Batch, Record, Status, utcnow
from workers.store.values import BatchInfo, Claim, Outcome


# The two statements every record runs, built once with bind parameters: SQLAlchemy then
# compiles each once, where a statement built per call costs its cache-key walk each time.
def _claim_statement(which: ColumnElement[bool]) -> ReturningUpdate[Any]:
    """Claim the records ``which`` selects that are claimable or whose lease ran out."""
    return (
        update(Record)
        .where(
            which,
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
        .returning(Record.id, Record.batch_id, Record.key, Record.input, Record.attempts)
    )


_CLAIM = _claim_statement(Record.id == bindparam("b_id"))
# The same claim for every id of a message at once (a message carries a chunk of records).
_CLAIM_MANY = _claim_statement(Record.id.in_(bindparam("b_ids", expanding=True)))
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


class ClaimStore:
    """The state-machine half of :class:`workers.store.ledger.Ledger`."""

    engine: Engine

    if TYPE_CHECKING:

        def batch_by_id(self, batch_id: int) -> BatchInfo: ...

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

    def claim_many(
        self,
        record_ids: Sequence[int],
        *,
        worker: str,
        instance: str,
        task_id: str | None,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Take every claimable one of ``record_ids`` in one statement; returns their claims
        in the order of ``record_ids`` (the others are someone else's, or done)."""
        if not record_ids:
            return []
        now = now or utcnow()
        params = {
            "b_ids": list(record_ids),
            "b_now": now,
            "b_lease": now + timedelta(seconds=lease_seconds),
            "b_worker": worker,
            "b_instance": instance,
            "b_task": task_id,
        }
        with self.engine.begin() as conn:
            rows = {row.id: row for row in conn.execute(_CLAIM_MANY, params)}
        return [
            Claim(rid, self.batch_by_id(r.batch_id), r.key, r.input, r.attempts)
            for rid in record_ids
            if (r := rows.get(rid)) is not None
        ]

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for several writes (a chunk's results): pass it as ``conn=``."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _begin(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as own:
            yield own

    def _finish(
        self,
        claim: Claim,
        log: dict[str, Any] | None = None,
        *,
        conn: Connection | None = None,
        **values: Any,
    ) -> bool:
        owned = (
            Record.id == claim.record_id,
            Record.status == Status.RUNNING,
            Record.attempts == claim.attempts,
        )
        with self._begin(conn) as conn:
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

    def succeed(self, claim: Claim, outcome: Outcome, *, conn: Connection | None = None) -> bool:
        """Store the result and ``succeeded`` in one transaction; False if the claim was lost."""
        params = {"b_id": claim.record_id, "b_attempts": claim.attempts, **_result(outcome)}
        with self._begin(conn) as conn:
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
        conn: Connection | None = None,
    ) -> bool:
        """Mark the record ``failed`` with a reason, keeping the last answer (raw text, token
        counts, finish_reason) when the instance gave one."""
        return self._finish(
            claim,
            _log_entry(kind, message, "failed"),
            conn=conn,
            status=Status.FAILED,
            error_kind=kind,
            error=message,
            output_text=raw,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            finished_at=utcnow(),
        )

    def retry_later(
        self,
        claim: Claim,
        *,
        kind: str,
        message: str,
        delay: float = 0.0,
        conn: Connection | None = None,
    ) -> bool:
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
            conn=conn,
            status=case((cancelled, Status.CANCELLED.value), else_=Status.RETRY.value),
            error_kind=kind,
            error=message,
            published_at=None,
            not_before=utcnow() + timedelta(seconds=delay),
        )

    def give_back(
        self, record_ids: Sequence[int], *, delay: float, now: datetime | None = None
    ) -> int:
        """Hand unclaimed waiting records back to the feeder, due ``delay`` seconds from now
        (a worker that cannot run them: closed gate, shutting down). Returns how many were
        waiting (the others were claimed or finished meanwhile)."""
        if not record_ids:
            return 0
        now = now or utcnow()
        stmt = (
            update(Record)
            .where(Record.id.in_(list(record_ids)), Record.status.in_(CLAIMABLE))
            .values(published_at=None, not_before=now + timedelta(seconds=delay))
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

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

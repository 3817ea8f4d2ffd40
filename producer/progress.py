"""How far a batch has got: counts, rate, ETA (read from the ledger)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workers.store.ledger import BatchInfo, Ledger
from workers.store.models import Status, utcnow

RATE_WINDOW = timedelta(seconds=30)


@dataclass(frozen=True)
class BatchProgress:
    batch: BatchInfo
    counts: dict[str, int]
    instances: dict[str, dict[str, int]] = field(default_factory=dict)
    rate: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(self.counts[s] for s in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED))

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.done == self.total

    @property
    def eta_seconds(self) -> float | None:
        if self.complete:
            return 0.0
        if self.rate <= 0:
            return None
        return (self.total - self.done) / self.rate

    @property
    def elapsed_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.complete and self.finished_at else utcnow()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def overall_rate(self) -> float:
        elapsed = self.elapsed_seconds
        return self.done / elapsed if elapsed else 0.0

    def status_word(self) -> str:
        """An OpenAI-batch-like status.

        ``cancelling`` / ``cancelled``: cancelled, with records still running / none;
        ``completed``: every record final; ``finalizing``: nothing waits, the last
        running records are finishing; ``in_progress``: work started; else ``validating``.
        """
        c = self.counts
        if self.batch.cancelled_at is not None:
            return "cancelling" if c[Status.RUNNING] else "cancelled"
        if self.complete:
            return "completed"
        if not self.started_at:
            return "validating"
        waiting = c[Status.QUEUED] + c[Status.RETRY]
        return "finalizing" if waiting == 0 and c[Status.RUNNING] else "in_progress"

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "id": self.batch.name,
            "object": "batch",
            "status": self.status_word(),
            "model": self.batch.model,
            "spec": self.batch.spec_name,
            "route": self.batch.route,
            "request_counts": {
                "total": self.total,
                "completed": c[Status.SUCCEEDED],
                "failed": c[Status.FAILED],
            },
            "counts": c,
            "instances": self.instances,
            "records_per_second": round(self.rate, 3),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat()
            if self.complete and self.finished_at
            else None,
            **self._timestamps(),
        }

    def _timestamps(self) -> dict[str, int | None]:
        """OpenAI's batch timestamps, as epoch seconds."""
        status = self.status_word()
        cancelled = self.batch.cancelled_at
        done = self.finished_at if status in ("completed", "cancelled") else None
        return {
            "created_at": _epoch(self.batch.created_at),
            "in_progress_at": _epoch(self.started_at),
            "finalizing_at": _epoch(done) if status == "completed" else None,
            "completed_at": _epoch(done) if status == "completed" else None,
            "cancelling_at": _epoch(cancelled),
            "cancelled_at": _epoch(done or cancelled) if status == "cancelled" else None,
        }


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_progress(ledger: Ledger, batch: BatchInfo) -> BatchProgress:
    """Read the batch's progress now. Rate is over the last 30 s, or since the start."""
    now = utcnow()
    started = ledger.first_started(batch.id)
    window_start = now - RATE_WINDOW
    if started is not None and started > window_start:
        window_start = started
    recent = ledger.finished_between(batch.id, window_start)
    span = (now - window_start).total_seconds()
    return BatchProgress(
        batch=batch,
        counts=ledger.counts(batch.id),
        instances=ledger.instance_counts(batch.id),
        rate=recent / span if span > 0.5 else 0.0,
        started_at=started,
        finished_at=ledger.last_finished(batch.id),
    )

"""How far a batch has got: counts, rate, ETA, bad input lines and finish reasons (read
from the ledger), and the batch as an OpenAI batch object (:meth:`BatchProgress.as_dict`,
which ``openai.types.Batch`` accepts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workers.store import bad_lines, summary
from workers.store.ledger import Ledger
from workers.store.models import Status, utcnow
from workers.store.values import BatchInfo

RATE_WINDOW = timedelta(seconds=30)
COMPLETION_WINDOW = "24h"
"""OpenAI's only completion window; vfleet sets no deadline (``expires_at`` stays null)."""
CHAT_ENDPOINT = "/v1/chat/completions"
MAX_ERRORS_SHOWN = 1000
"""Bad lines listed in ``errors.data`` (``bad_lines`` counts them all)."""
TRUNCATED = "length"
"""The finish_reason of an answer cut by ``max_tokens``."""


@dataclass(frozen=True)
class Details:
    """What only ``status --json`` shows: the bad lines, token usage, where input came from."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: summary.Usage = field(default_factory=summary.Usage)
    endpoint: str = CHAT_ENDPOINT
    source: str | None = None


@dataclass(frozen=True)
class BatchProgress:
    batch: BatchInfo
    counts: dict[str, int]
    instances: dict[str, dict[str, int]] = field(default_factory=dict)
    rate: float = 0.0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Input lines kept with the batch, per reason code (blank lines are "blank_line").
    bad_lines: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    last_started_at: datetime | None = None
    details: Details | None = None

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
    def bad_count(self) -> int:
        """Bad input lines (blank ones aside)."""
        return bad_lines.split_counts(self.bad_lines)[0]

    @property
    def skipped_count(self) -> int:
        """Skipped (blank) input lines."""
        return bad_lines.split_counts(self.bad_lines)[1]

    @property
    def truncated(self) -> int:
        """Answers cut by ``max_tokens`` (finish_reason ``length``)."""
        return self.finish_reasons.get(TRUNCATED, 0)

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
        """The batch as an OpenAI batch object, with vfleet's own fields beside."""
        c = self.counts
        details = self.details or Details()
        return {
            "id": self.batch.name,
            "object": "batch",
            "endpoint": details.endpoint,
            "model": self.batch.model,
            "input_file_id": details.source or self.batch.name,
            "completion_window": COMPLETION_WINDOW,
            "status": self.status_word(),
            "output_file_id": None,
            "error_file_id": None,
            "request_counts": {
                "total": self.total,
                "completed": c[Status.SUCCEEDED],
                "failed": c[Status.FAILED],
            },
            "errors": {"object": "list", "data": details.errors},
            "usage": _usage(details.usage),
            "metadata": {"spec": self.batch.spec_name, "route": self.batch.route},
            **self._timestamps(),
            # vfleet's own
            "spec": self.batch.spec_name,
            "route": self.batch.route,
            "counts": c,
            "instances": self.instances,
            "bad_lines": self.bad_count,
            "skipped_lines": self.skipped_count,
            "bad_line_codes": self.bad_lines,
            "finish_reasons": self.finish_reasons,
            "truncated": self.truncated,
            "records_per_second": round(self.rate, 3),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat()
            if self.complete and self.finished_at
            else None,
        }

    def _timestamps(self) -> dict[str, int | None]:
        """OpenAI's batch timestamps, as epoch seconds (null for what has not happened).

        ``finalizing_at`` is when the last waiting record was taken: from then on only
        running records were left.
        """
        status = self.status_word()
        cancelled = self.batch.cancelled_at
        done = self.finished_at if status in ("completed", "cancelled") else None
        finalizing = self.last_started_at if status in ("finalizing", "completed") else None
        return {
            "created_at": _epoch(self.batch.created_at) or 0,
            "in_progress_at": _epoch(self.started_at),
            "expires_at": None,
            "finalizing_at": _epoch(finalizing),
            "completed_at": _epoch(done) if status == "completed" else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": _epoch(cancelled),
            "cancelled_at": _epoch(done or cancelled) if status == "cancelled" else None,
        }


def _usage(u: summary.Usage) -> dict[str, Any]:
    # vfleet does not track cached prompt tokens nor reasoning tokens: they read 0.
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def batch_progress(ledger: Ledger, batch: BatchInfo, *, details: bool = False) -> BatchProgress:
    """Read the batch's progress now; with ``details``, what ``status --json`` needs too.

    The rate is over the last 30 s (or since the start); once the batch is complete it is
    the whole run's, so it does not decay while the batch sits finished.
    """
    engine = ledger.engine
    tally = summary.tally(engine, batch.id)
    counts = tally.counts
    started = ledger.first_started(batch.id)
    finished = ledger.last_finished(batch.id)
    total = sum(counts.values())
    done = sum(counts[s] for s in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED))
    return BatchProgress(
        batch=batch,
        counts=counts,
        instances=tally.instances,
        rate=_rate(ledger, batch, started, finished, done if total and done == total else None),
        started_at=started,
        finished_at=finished,
        bad_lines=bad_lines.counts(engine, batch.id),
        finish_reasons=tally.finish_reasons,
        last_started_at=summary.last_started(engine, batch.id),
        details=_details(ledger, batch, tally.usage) if details else None,
    )


def _rate(
    ledger: Ledger,
    batch: BatchInfo,
    started: datetime | None,
    finished: datetime | None,
    done_total: int | None,
) -> float:
    if done_total is not None:  # complete: the whole run's rate
        if started is None or finished is None:
            return 0.0
        span = (finished - started).total_seconds()
        return done_total / span if span > 0 else 0.0
    now = utcnow()
    window_start = now - RATE_WINDOW
    if started is not None and started > window_start:
        window_start = started
    recent = ledger.finished_between(batch.id, window_start)
    span = (now - window_start).total_seconds()
    return recent / span if span > 0.5 else 0.0


def _details(ledger: Ledger, batch: BatchInfo, usage: summary.Usage) -> Details:
    engine = ledger.engine
    errors = []
    for b in bad_lines.iter_bad_lines(engine, batch.id, skipped=False):
        errors.append({"code": b.code, "line": b.line, "message": b.message, "param": None})
        if len(errors) >= MAX_ERRORS_SHOWN:
            break
    return Details(
        errors=errors,
        usage=usage,
        endpoint=_endpoint(ledger, batch),
        source=summary.source(engine, batch.id),
    )


def _endpoint(ledger: Ledger, batch: BatchInfo) -> str:
    """The batch's endpoint: chat for template specs; for an OpenAI batch file, the url
    of its requests (of one of them, should a file mix chat and completions)."""
    if batch.spec.get("mode") != "openai":
        return CHAT_ENDPOINT
    # Here, not at the top: workers.spec brings jinja2 and jsonschema, which `vfleet status`
    # does not need otherwise (its start-up counts against its 1 s on 10^6 records).
    from workers.spec import OPENAI_PATHS

    sample = summary.sample_input(ledger.engine, batch.id) or {}
    url = sample.get("url")
    return url if isinstance(url, str) and url in OPENAI_PATHS else CHAT_ENDPOINT

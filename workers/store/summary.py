"""What ``vfleet status`` and ``vfleet enqueue`` tell about a batch beyond its counts:
finish reasons, token usage, where its input came from and what waits to be published.

Each function is one aggregate query over the batch's records; :func:`tally` gives the
counts, the instances, the finish reasons and the tokens in one, reading only the index
that covers them (``ix_records_batch_progress``), so a batch of millions costs a pass
over a narrow index, not over its records' JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from workers.store.models import Batch, Record, Status
from workers.store.queries import aware


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Tally:
    """What one pass over a batch's progress index says (see :func:`tally`)."""

    counts: dict[str, int]
    """Records per status, every status present (zeros included)."""
    instances: dict[str, dict[str, int]]
    """Per instance that touched the batch: records per status."""
    finish_reasons: dict[str, int]
    """Records per finish reason, the most frequent first (records without one left out)."""
    usage: Usage


def tally(engine: Engine, batch_id: int) -> Tally:
    """Counts per status, per instance and status, per finish reason, and token usage of
    the batch, from one grouped query along ``ix_records_batch_progress``. Agrees with
    :meth:`~workers.store.queries.QueryStore.counts`,
    :meth:`~workers.store.queries.QueryStore.instance_counts`, :func:`finish_reasons` and
    :func:`usage`."""
    q = (
        select(
            Record.status,
            Record.instance,
            Record.finish_reason,
            func.count(),
            func.sum(Record.prompt_tokens),
            func.sum(Record.completion_tokens),
        )
        .where(Record.batch_id == batch_id)
        .group_by(Record.status, Record.instance, Record.finish_reason)
    )
    counts = {s.value: 0 for s in Status}
    instances: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    prompt = completion = 0
    with engine.connect() as conn:
        for status, instance, reason, n, p_tokens, c_tokens in conn.execute(q):
            counts[status] = counts.get(status, 0) + int(n)
            if instance is not None:
                per = instances.setdefault(instance, {})
                per[status] = per.get(status, 0) + int(n)
            if reason is not None:
                reasons[str(reason)] = reasons.get(str(reason), 0) + int(n)
            prompt += int(p_tokens or 0)
            completion += int(c_tokens or 0)
    ordered = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return Tally(counts, instances, ordered, Usage(prompt, completion))


def finish_reasons(engine: Engine, batch_id: int) -> dict[str, int]:
    """Records per ``finish_reason`` of their last answer (records without one left out)."""
    q = (
        select(Record.finish_reason, func.count())
        .where(Record.batch_id == batch_id, Record.finish_reason.is_not(None))
        .group_by(Record.finish_reason)
        .order_by(func.count().desc(), Record.finish_reason)
    )
    with engine.connect() as conn:
        return {str(reason): int(n) for reason, n in conn.execute(q)}


def usage(engine: Engine, batch_id: int) -> Usage:
    """Tokens the batch's records used (reused results count what they cost first)."""
    q = select(
        func.coalesce(func.sum(Record.prompt_tokens), 0),
        func.coalesce(func.sum(Record.completion_tokens), 0),
    ).where(Record.batch_id == batch_id)
    with engine.connect() as conn:
        row = conn.execute(q).one()
    return Usage(int(row[0] or 0), int(row[1] or 0))


def last_started(engine: Engine, batch_id: int) -> datetime | None:
    """When the batch's latest attempt started."""
    q = select(func.max(Record.started_at)).where(Record.batch_id == batch_id)
    with engine.connect() as conn:
        return aware(conn.scalar(q))


def waiting_unpublished(engine: Engine, batch_id: int) -> int:
    """Queued records never published: they wait in the ledger for room in the queues."""
    q = select(func.count()).where(
        Record.batch_id == batch_id,
        Record.status == Status.QUEUED,
        Record.published_at.is_(None),
    )
    with engine.connect() as conn:
        return int(conn.scalar(q) or 0)


def source(engine: Engine, batch_id: int) -> str | None:
    """The file the batch was first enqueued from."""
    with engine.connect() as conn:
        value = conn.scalar(select(Batch.source).where(Batch.id == batch_id))
    return None if value is None else str(value)


def sample_input(engine: Engine, batch_id: int) -> dict[str, Any] | None:
    """The input of one record of the batch (any one: the cheapest to find)."""
    q = select(Record.input).where(Record.batch_id == batch_id).limit(1)
    with engine.connect() as conn:
        value = conn.scalar(q)
    return value if isinstance(value, dict) else None

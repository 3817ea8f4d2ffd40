"""What ``vfleet status`` and ``vfleet enqueue`` tell about a batch beyond its counts:
finish reasons, token usage, where its input came from and what waits to be published.

Each function is one aggregate query over the batch's records.
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

"""What the ledger hands out and takes in: plain values, no SQLAlchemy.

The judge logic builds an :class:`Outcome`, the runtime holds a :class:`Claim`, the feeder
and the views read :class:`BatchInfo`; none of them needs to know there is SQL behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


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

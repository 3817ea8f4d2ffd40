"""SQLAlchemy 2 typed models of the ledger.

A record moves through ``queued → running → succeeded | failed``, with ``retry`` between
attempts and ``cancelled`` when its batch is cancelled. Only a conditional UPDATE moves it
(see :mod:`workers.store.ledger`), so two workers never both own one record.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use workers.store.models.utcnow")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRY = "retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
CLAIMABLE = (Status.QUEUED, Status.RETRY)
"""Statuses a worker may claim a record from (besides ``running`` with an expired lease)."""


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Batch(Base):
    __tablename__ = "batches"
    # SQLite would otherwise reuse the id of a deleted newest batch, and workers cache a
    # batch's spec by id.
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 (read once, at mapping)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec_name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(String(300))
    route: Mapped[str] = mapped_column(String(20), default="shared")
    # round-robin and pinned: the instances the batch was pushed to, in order.
    targets: Mapped[list[str] | None] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]


class Record(Base):
    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("batch_id", "key", name="uq_records_batch_key"),
        # Serves per-batch counts and the feeder's "next unpublished records in order".
        Index("ix_records_batch_status", "batch_id", "status", "published_at", "seq"),
        Index("ix_records_status_published", "status", "published_at"),
        Index("ix_records_status_lease", "status", "lease_until"),
        # Versioned dedupe: find a succeeded record that did the same work.
        Index("ix_records_fingerprint", "fingerprint", "status"),
        # The feeder's "retries of this batch that are due".
        Index("ix_records_batch_retry", "batch_id", "status", "not_before"),
        # Export's keyset pages in input order (workers.store.queries.record_pages).
        Index("ix_records_batch_seq", "batch_id", "seq", "id"),
        # Covers `vfleet status`'s one grouped count (workers.store.summary.tally), so it
        # reads the index, not the records' JSON.
        Index(
            "ix_records_batch_progress",
            "batch_id",
            "status",
            "instance",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
        ),
        # First and last start, last finish, finished in the last 30 s: one index seek.
        Index("ix_records_batch_started", "batch_id", "started_at"),
        Index("ix_records_batch_finished", "batch_id", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(300))
    seq: Mapped[int] = mapped_column(BigInteger)
    input: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=Status.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    instance: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(300))
    task_id: Mapped[str | None] = mapped_column(String(64))
    output_text: Mapped[str | None] = mapped_column(Text)
    output: Mapped[dict[str, Any] | None]
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Hash of input, spec, model and sampling parameters (workers.spec.work_fingerprint).
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    # The record whose stored result this one copied instead of calling the fleet.
    reused_from: Mapped[int | None] = mapped_column(BigId)
    # Where the result came from: instance, host, GPU indices, model id, max_model_len.
    provenance: Mapped[dict[str, Any] | None]
    # One entry per failed or retried attempt: attempt, kind, error, instance, at.
    attempts_log: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # A record in ``retry`` waits here until this time; the feeder publishes it when due.
    not_before: Mapped[datetime | None]
    # The last answer's finish_reason (``stop``, ``length``...), as the server gave it.
    finish_reason: Mapped[str | None] = mapped_column(String(32))


class BadLine(Base):
    """An input line that did not become a record: its number, why, and its text (bounded).

    Shown by ``status`` (count), ``report`` (reasons) and ``export`` (OpenAI's batch errors).
    """

    __tablename__ = "bad_lines"
    __table_args__ = (
        UniqueConstraint("batch_id", "source", "line", name="uq_bad_lines_batch_source_line"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    # The input file (absolute path, ``-`` for standard input): a batch may be fed from
    # several files, whose line numbers overlap.
    source: Mapped[str] = mapped_column(String(1000))
    line: Mapped[int] = mapped_column(BigInteger)
    custom_id: Mapped[str | None] = mapped_column(String(300))
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GpuSnapshot(Base):
    __tablename__ = "gpu_snapshots"
    __table_args__ = (Index("ix_gpu_snapshots_host_taken", "host", "taken_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    host: Mapped[str] = mapped_column(String(200))
    gpu_index: Mapped[int | None] = mapped_column(Integer)
    uuid: Mapped[str | None] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    utilization_gpu: Mapped[float | None] = mapped_column(Float)
    utilization_memory: Mapped[float | None] = mapped_column(Float)
    memory_total_mib: Mapped[float | None] = mapped_column(Float)
    memory_used_mib: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    power_draw_w: Mapped[float | None] = mapped_column(Float)
    power_limit_w: Mapped[float | None] = mapped_column(Float)
    processes: Mapped[dict[str, Any] | None]
    idle: Mapped[bool | None]
    error: Mapped[str | None] = mapped_column(Text)


class VllmSnapshot(Base):
    __tablename__ = "vllm_snapshots"
    __table_args__ = (Index("ix_vllm_snapshots_instance_taken", "instance", "taken_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    instance: Mapped[str] = mapped_column(String(200))
    base_url: Mapped[str] = mapped_column(Text)
    healthy: Mapped[bool]
    model: Mapped[str | None] = mapped_column(String(300))
    max_model_len: Mapped[int | None] = mapped_column(Integer)
    running: Mapped[float | None] = mapped_column(Float)
    waiting: Mapped[float | None] = mapped_column(Float)
    swapped: Mapped[float | None] = mapped_column(Float)
    kv_cache_usage: Mapped[float | None] = mapped_column(Float)
    prompt_tokens_total: Mapped[float | None] = mapped_column(Float)
    generation_tokens_total: Mapped[float | None] = mapped_column(Float)
    prompt_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    generation_tokens_per_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

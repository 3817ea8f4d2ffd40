"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 01:36:20.911151
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec_name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("route", sa.String(length=20), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "gpu_snapshots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("taken_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=True),
        sa.Column("uuid", sa.String(length=100), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("utilization_gpu", sa.Float(), nullable=True),
        sa.Column("utilization_memory", sa.Float(), nullable=True),
        sa.Column("memory_total_mib", sa.Float(), nullable=True),
        sa.Column("memory_used_mib", sa.Float(), nullable=True),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("power_draw_w", sa.Float(), nullable=True),
        sa.Column("power_limit_w", sa.Float(), nullable=True),
        sa.Column("processes", sa.JSON(), nullable=True),
        sa.Column("idle", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("gpu_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_gpu_snapshots_host_taken", ["host", "taken_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_gpu_snapshots_taken_at"), ["taken_at"], unique=False)

    op.create_table(
        "vllm_snapshots",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("taken_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("instance", sa.String(length=200), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=True),
        sa.Column("max_model_len", sa.Integer(), nullable=True),
        sa.Column("running", sa.Float(), nullable=True),
        sa.Column("waiting", sa.Float(), nullable=True),
        sa.Column("swapped", sa.Float(), nullable=True),
        sa.Column("kv_cache_usage", sa.Float(), nullable=True),
        sa.Column("prompt_tokens_total", sa.Float(), nullable=True),
        sa.Column("generation_tokens_total", sa.Float(), nullable=True),
        sa.Column("prompt_tokens_per_s", sa.Float(), nullable=True),
        sa.Column("generation_tokens_per_s", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vllm_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            "ix_vllm_snapshots_instance_taken", ["instance", "taken_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_vllm_snapshots_taken_at"), ["taken_at"], unique=False)

    op.create_table(
        "records",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("published_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("instance", sa.String(length=200), nullable=True),
        sa.Column("worker", sa.String(length=300), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("output_text", sa.Text(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "key", name="uq_records_batch_key"),
    )
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_records_batch_status", ["batch_id", "status", "published_at", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_records_status_published", ["status", "published_at"], unique=False
        )
        batch_op.create_index("ix_records_status_lease", ["status", "lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_status_lease")
        batch_op.drop_index("ix_records_status_published")
        batch_op.drop_index("ix_records_batch_status")

    op.drop_table("records")
    with op.batch_alter_table("vllm_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vllm_snapshots_taken_at"))
        batch_op.drop_index("ix_vllm_snapshots_instance_taken")

    op.drop_table("vllm_snapshots")
    with op.batch_alter_table("gpu_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gpu_snapshots_taken_at"))
        batch_op.drop_index("ix_gpu_snapshots_host_taken")

    op.drop_table("gpu_snapshots")
    op.drop_table("batches")

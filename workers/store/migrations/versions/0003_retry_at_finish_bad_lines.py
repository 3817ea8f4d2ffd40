"""retries wait in the ledger, finish reasons, bad input lines kept with the batch

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from workers.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finish_reason", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_records_batch_retry", ["batch_id", "status", "not_before"], unique=False
        )
    op.create_table(
        "bad_lines",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=1000), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("custom_id", sa.String(length=300), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "source", "line", name="uq_bad_lines_batch_source_line"),
    )


def downgrade() -> None:
    op.drop_table("bad_lines")
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_batch_retry")
        batch_op.drop_column("finish_reason")
        batch_op.drop_column("not_before")

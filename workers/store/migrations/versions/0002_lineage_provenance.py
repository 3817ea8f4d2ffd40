"""record fingerprint, reuse, provenance and attempts log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column(
                "reused_from", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("attempts_log", sa.JSON(), nullable=True))
        batch_op.create_index("ix_records_fingerprint", ["fingerprint", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("records", schema=None) as batch_op:
        batch_op.drop_index("ix_records_fingerprint")
        batch_op.drop_column("attempts_log")
        batch_op.drop_column("provenance")
        batch_op.drop_column("reused_from")
        batch_op.drop_column("fingerprint")

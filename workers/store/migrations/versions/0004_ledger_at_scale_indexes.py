"""indexes for a batch of millions: export's pages in input order, status's counts and times

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 13:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_records_batch_seq": ["batch_id", "seq", "id"],
    "ix_records_batch_progress": [
        "batch_id",
        "status",
        "instance",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
    ],
    "ix_records_batch_started": ["batch_id", "started_at"],
    "ix_records_batch_finished": ["batch_id", "finished_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "records", columns, unique=False)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="records")

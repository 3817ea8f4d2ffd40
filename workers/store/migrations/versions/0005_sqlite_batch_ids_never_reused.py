"""SQLite: batch ids are never handed out twice (AUTOINCREMENT)

Without AUTOINCREMENT, SQLite gives a new row max(rowid) + 1, so deleting the newest batch
frees its id for the next one. Workers cache a batch's spec by id for their whole life, so
a long-running worker would have run the new batch with the deleted batch's spec.
PostgreSQL's sequences never reuse a value: nothing changes there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 23:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _recreate_batches(*, autoincrement: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # The copy is dropped and renamed in place: workers.store.migrate turns SQLite's
    # foreign keys off around the migration, or dropping the old table would cascade to
    # every record.
    with op.batch_alter_table(
        "batches", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"foreign keys broken by recreating batches: {broken[:5]}")


def upgrade() -> None:
    _recreate_batches(autoincrement=True)


def downgrade() -> None:
    _recreate_batches(autoincrement=False)

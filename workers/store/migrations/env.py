"""Alembic environment: runs on the connection vfleet hands it (see workers.store.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from workers.store.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("vfleet migrations run through `vfleet db upgrade`, not bare alembic")
_run(connection)

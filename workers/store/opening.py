"""Open the ledger the settings name, migrating the embedded SQLite on the way."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

from ops.urls import mask_url
from workers.errors import StoreError
from workers.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workers.store.ledger import Ledger


def open_ledger(settings: Settings, *, pool_size: int = 8) -> Ledger:
    """A ledger on the configured database, migrated if it is new or the embedded SQLite.

    A PostgreSQL ledger is shared by many hosts: an empty database gets the schema on
    first use, one at an older revision is upgraded only by ``vfleet db upgrade``.
    Several processes may open one new ledger at once (see
    :func:`workers.store.migrate.upgrade`).
    """
    from sqlalchemy.exc import OperationalError

    from workers.store.engine import make_engine
    from workers.store.ledger import Ledger

    engine = make_engine(settings.database_url, pool_size=pool_size)
    deadline = time.monotonic() + SQLITE_OPEN_PATIENCE_S
    while True:
        try:
            _check_schema(engine)
            return Ledger(engine)
        except OperationalError as e:
            if _sqlite_busy(engine, e) and time.monotonic() < deadline:
                # SQLite answers some lock conflicts at once, without its busy timeout:
                # a read snapshot that went stale while another process built the schema,
                # or a WAL index another process is still setting up. Checking the
                # schema again is safe: whoever built it first left nothing to redo.
                engine.dispose()
                time.sleep(random.uniform(0.05, 0.3))
                continue
            engine.dispose()
            raise StoreError(
                f"cannot open database {mask_url(settings.database_url)}: "
                f"{str(e.orig).splitlines()[0]}"
            ) from e


SQLITE_OPEN_PATIENCE_S = 60.0
"""How long opening an SQLite ledger waits out other processes that are opening it too."""


def _sqlite_busy(engine: Engine, error: Exception) -> bool:
    text = str(getattr(error, "orig", error)).lower()
    return engine.dialect.name == "sqlite" and ("locked" in text or "busy" in text)


SCHEMA_HEAD = "0005"
"""The newest migration shipped (a test holds it equal to Alembic's head). Knowing it here
lets a ledger already at head open without importing Alembic, a fifth of a CLI command's
start-up."""


def _stored_revision(engine: Engine) -> str | None:
    """What ``alembic_version`` says, or None when it is missing or not one row."""
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    return str(rows[0][0]) if len(rows) == 1 else None


def _check_schema(engine: Engine) -> None:
    if _stored_revision(engine) == SCHEMA_HEAD:
        return
    from workers.store.migrate import current_revision, head_revision, upgrade

    current = current_revision(engine)
    if current == head_revision():
        return
    if engine.dialect.name == "sqlite" or current is None:
        upgrade(engine)
        return
    raise StoreError(
        f"database schema is at {current}, this vfleet needs "
        f"{head_revision()}: run `vfleet db upgrade`"
    )

"""Open the ledger the settings name, migrating the embedded SQLite on the way."""

from __future__ import annotations

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
    try:
        _check_schema(engine)
    except OperationalError as e:
        raise StoreError(
            f"cannot open database {mask_url(settings.database_url)}: {str(e.orig).splitlines()[0]}"
        ) from e
    return Ledger(engine)


def _check_schema(engine: Engine) -> None:
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

"""Schema migrations with Alembic, run on an engine vfleet built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from workers.errors import StoreError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

MIGRATION_LOCK_KEY = 0x7666_6C74_6462
"""PostgreSQL advisory lock held while the schema is upgraded ("vfltdb")."""


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    """The newest migration shipped with this version of vfleet."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return _revision(conn)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``. Raises :class:`StoreError` if it cannot.

    Safe when several processes open one new ledger at once: the upgrade runs in one
    transaction under a lock (SQLite: ``BEGIN EXCLUSIVE``; PostgreSQL: an advisory lock),
    and whoever gets the lock second finds the work done and does nothing.
    """
    cfg = _config()
    try:
        with engine.connect() as conn, _foreign_keys_off(conn), conn.begin():
            _lock(conn)
            if revision == "head" and _revision(conn) == head_revision():
                return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as e:
        raise StoreError(f"migration failed: {e.__class__.__name__}: {e}".splitlines()[0]) from e


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    """SQLite: foreign keys off while the schema changes, as SQLite's own procedure for
    rebuilding a table asks. A batch-mode migration drops a table and renames its copy in
    its place; with foreign keys on, dropping ``batches`` would delete every record through
    the cascade. The pragma only takes effect outside a transaction, hence here."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
    conn.commit()
    try:
        yield
    finally:
        if conn.in_transaction():
            conn.rollback()
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()


def ensure_schema(engine: Engine) -> None:
    """Upgrade the database if it is behind this version of vfleet."""
    if current_revision(engine) != head_revision():
        upgrade(engine)


def _lock(conn: Connection) -> None:
    """Hold the migration lock until ``conn``'s transaction ends."""
    if conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL: without this each CREATE TABLE would
        # commit on its own, and two processes would both create alembic_version.
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()

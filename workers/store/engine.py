"""Engines for the ledger: SQLite in WAL mode by default, PostgreSQL for several hosts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ops.urls import mask_url
from workers.errors import ConfigError

DEFAULT_SQLITE_BUSY_TIMEOUT_MS = 60_000
DEFAULT_POOL_SIZE = 8


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (status, export) run beside writing workers; the busy timeout
    # makes concurrent writers from several worker processes wait instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={DEFAULT_SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """Return an engine for ``url``. Raises :class:`ConfigError` for a malformed URL."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if "@" in userinfo or "/" in userinfo:
        # SQLAlchemy would split such a password at its '@' or '/' and take the rest for
        # the host, which then shows up in connection errors.
        raise ConfigError(
            "database URL (VFLEET_DATABASE_URL / --database-url): its password holds '@' or "
            "'/': percent-encode them (%40, %2F)"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        # Neither the URL nor the parser's message: both may hold pieces of a password.
        raise ConfigError(
            "database URL (VFLEET_DATABASE_URL / --database-url) is not valid: "
            "use dialect://user:password@host:port/database or sqlite:///path"
        ) from e
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={
                "timeout": DEFAULT_SQLITE_BUSY_TIMEOUT_MS / 1000,
                "check_same_thread": False,
            },
            pool_size=pool_size,
            max_overflow=pool_size * 4,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size * 4, pool_pre_ping=True
        )
    except Exception as e:  # missing driver, unknown dialect
        raise ConfigError(f"database URL {mask_url(url)}: {e}") from e

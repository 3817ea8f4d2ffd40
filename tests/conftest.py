"""Fixtures shared by every test package: real Redis, PostgreSQL, simulator, workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from tests.services import postgres_admin_url, postgres_database, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port for the whole session."""
    server = start_redis()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis database number of our private server, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """A PostgreSQL server for the session (the machine's, or one started here)."""
    yield from postgres_admin_url()


@pytest.fixture(scope="session")
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the session (dropped at the end)."""
    yield from postgres_database(postgres_admin)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'vfleet.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vfleet.db'}"
        return
    yield from postgres_database(request.getfixturevalue("postgres_admin"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment without any VFLEET_ variable the developer may have set."""
    for key in list(os.environ):
        if key.startswith("VFLEET_"):
            monkeypatch.delenv(key)
    return dict(os.environ)

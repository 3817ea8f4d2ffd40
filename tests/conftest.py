"""Fixtures shared by every test package: real Redis, PostgreSQL, simulator, workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from tests import leftovers
from tests.services import postgres_admin_url, postgres_database, start_redis

_RUN_MARKER = leftovers.mark_this_run()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process it started (a server, a worker, a command run through the
    test sshd) is still alive once every fixture was torn down; then kill it."""
    found = leftovers.reported() + leftovers.wait_for_leftovers(_RUN_MARKER)
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(found)} process(es) started by the tests are still running:"]
    lines += [f"  {item}" for item in found]
    if reporter is not None:
        reporter.write_sep("=", "processes left running", red=True)
        for line in lines:
            reporter.write_line(line)
    leftovers.kill(found)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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

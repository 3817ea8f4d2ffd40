"""Real services for the tests: a private redis-server, a PostgreSQL database, workers.

A test that needs a service it cannot have fails under CI (``CI=true``) and is skipped,
saying what is missing, elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from ops.redis_server import RedisServer, RedisServerError
from tests.pg_server import PostgresServer, pg_bindir

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere: the service ``reason`` names is not available."""
    if IN_CI:
        pytest.fail(f"CI needs this: {reason}")
    pytest.skip(reason)


def start_redis() -> RedisServer:
    try:
        return RedisServer().start()
    except RedisServerError as e:
        missing(str(e))
        raise


def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server to create test databases on: ``VFLEET_TEST_POSTGRES_URL``, else
    the machine's at 127.0.0.1:5432, else one this session starts with initdb/pg_ctl."""
    configured = os.environ.get("VFLEET_TEST_POSTGRES_URL")
    url = configured or DEFAULT_POSTGRES_ADMIN_URL
    probe = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with probe.connect():
            pass
        yield url
        return
    except OperationalError as e:
        reason = str(e.orig).splitlines()[0]
    finally:
        probe.dispose()
    if configured or pg_bindir() is None:
        missing(
            f"PostgreSQL not reachable at {url} ({reason}) and no initdb to start one: "
            "apt-get install postgresql, or set VFLEET_TEST_POSTGRES_URL"
        )
    server = PostgresServer().init()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server; dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"vfleet_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def vfleet(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``vfleet`` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def wait_for(
    predicate: object, *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> None:
    """Poll ``predicate()`` until it is true; fail the test after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


CHROMIUM = "/usr/bin/chromium"
# Headless, sandbox off (root), and nothing that reaches for the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def chromium(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Debian's headless Chromium with a fresh profile under ``tmp``."""
    if not Path(CHROMIUM).exists():
        missing("apt-get install chromium")
    env = {**os.environ, "HOME": str(tmp)}
    argv = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

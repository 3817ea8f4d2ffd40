"""Several real ``vfleet`` processes opening one new ledger at once: every one of them
works and the schema is built once, on SQLite and on PostgreSQL (see tests.together)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tests.services import postgres_database
from tests.together import run_together
from workers.store.engine import make_engine
from workers.store.migrate import current_revision, head_revision

pytestmark = pytest.mark.timeout(300)

PROCESSES = 4
ROUNDS = 5


def cli_env(database_url: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    env["VFLEET_DATABASE_URL"] = database_url
    env["VFLEET_BROKER_URL"] = "redis://127.0.0.1:1/0"  # never reached by these commands
    env["VFLEET_FLEET_FILE"] = str(tmp / "none.toml")
    return env


@contextmanager
def new_database(kind: str, tmp: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'new-{time.monotonic_ns()}.db'}"
        return
    yield from postgres_database(request.getfixturevalue("postgres_admin"))


def _schema_at_head(url: str) -> bool:
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        return current_revision(engine) == head_revision() and "bad_lines" in tables
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_many_processes_open_one_new_ledger_at_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for _ in range(ROUNDS):
        with new_database(kind, tmp_path, request) as url:
            results = run_together(
                tmp_path, cli_env(url, tmp_path), [["batches", "--json"]] * PROCESSES
            )
            for res in results:
                assert res.returncode == 0, res.stderr
                assert res.stdout.strip() == "[]" and "Traceback" not in res.stderr
            assert _schema_at_head(url)

"""Several real ``vfleet`` processes opening one new ledger at once: every one of them
works, the schema is built once, on SQLite and on PostgreSQL.

The processes import vfleet first and then wait for a start file, so that they all reach
the migration within milliseconds of each other (a cold start takes a second or more,
which would spread them out); then each runs the real CLI, ``producer.cli.run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tests.services import ROOT, postgres_database
from workers.store.engine import make_engine
from workers.store.migrate import current_revision, head_revision

pytestmark = pytest.mark.timeout(300)

# Waits for its start file, then runs the vfleet CLI with the rest of its arguments.
DRIVER = """
import os, sys, time
from producer.cli import run
import alembic.command, sqlalchemy, workers.store.ledger, workers.store.migrate  # imported now
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
sys.exit(run(sys.argv[3:]))
"""

PROCESSES = 4
ROUNDS = 5


def cli_env(database_url: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    env["VFLEET_DATABASE_URL"] = database_url
    env["VFLEET_BROKER_URL"] = "redis://127.0.0.1:1/0"  # never reached by these commands
    env["VFLEET_FLEET_FILE"] = str(tmp / "none.toml")
    return env


def run_together(
    tmp: Path, env: dict[str, str], argvs: list[list[str]], timeout: float = 180
) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per argv, release them at once, and wait for all."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs, readies = [], []
    for n, argv in enumerate(argvs):
        ready = tmp / f"{go.name}-ready-{n}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(ready), str(go), *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline, "the processes never got ready"
        assert all(p.poll() is None for p in procs), "a process died before the start"
        time.sleep(0.02)
    go.touch()
    results = []
    for p, argv in zip(procs, argvs, strict=True):
        out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    return results


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

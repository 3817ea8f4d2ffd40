"""Parquet in: rows read a batch at a time across row groups, values made JSON, bad rows
numbered like bad lines, through the real ``vfleet enqueue``; and what happens without
pyarrow. (Parquet out, through real workers: tests/producer/test_api.py.)"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from producer.readers import BadRow, Row, read_records
from producer.readers import codes as bad_codes
from tests.services import vfleet
from workers.store import bad_lines
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records

pytestmark = pytest.mark.timeout(120)


def judge_table(n: int, start: int = 0) -> pa.Table:
    ids = range(start, start + n)
    return pa.table(
        {
            "id": [f"r{i}" for i in ids],
            "question": [f"What is {i} + {i}?" for i in ids],
            "answer": [str(2 * i) for i in ids],
        }
    )


def write_groups(path: Path, *tables: pa.Table) -> Path:
    """One row group per table."""
    with pq.ParquetWriter(path, tables[0].schema) as writer:
        for t in tables:
            writer.write_table(t)
    return path


class Cli:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'vfleet.db'}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
        self.env |= {
            "VFLEET_DATABASE_URL": self.db,
            "VFLEET_BROKER_URL": redis_url,
            "VFLEET_FLEET_FILE": str(tmp / "fleet.toml"),
        }
        self.engine = make_engine(self.db)
        upgrade(self.engine)
        self.ledger = Ledger(self.engine)

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):  # type: ignore[no-untyped-def]
        res = vfleet(*args, env=env or self.env, stdin=stdin)
        assert "Traceback" not in res.stderr, res.stderr
        return res

    def enqueue(self, path: Path | str, *args: str) -> dict[str, Any]:
        res = self("enqueue", str(path), "--model", "m", "--key", "id", "--json", *args)
        assert res.returncode == 0, res.stderr
        report: dict[str, Any] = json.loads(res.stdout)
        return report

    def records(self, batch: str) -> list[tuple[int, str, dict[str, Any]]]:
        info = self.ledger.batch(batch)
        return [(r.seq, r.key, r.input) for r in iter_records(self.engine, info.id)]

    def bad(self, batch: str) -> list[tuple[int, str]]:
        info = self.ledger.batch(batch)
        return [(b.line, b.code) for b in bad_lines.iter_bad_lines(self.engine, info.id)]


@pytest.fixture
def cli(tmp_path: Path, redis_url: str) -> Iterator[Cli]:
    c = Cli(tmp_path, redis_url)
    yield c
    c.engine.dispose()


def test_rows_are_numbered_across_row_groups_and_values_become_json(tmp_path: Path) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    odd = pa.table(
        {
            "id": ["x1", "x2", "x3", "x4"],
            "score": [1.5, float("nan"), float("inf"), 2.0],
            "at": [when] * 4,
            "price": pa.array([decimal.Decimal("1.10")] * 4, pa.decimal128(5, 2)),
            "blob": [b"ok", b"\xff\xfe", b"x", b"y"],
            "tags": [["a", "b"], [], None, ["c"]],
            "meta": [{"k": 1, "v": "w"}] * 4,
            "kind": pa.array(["u", "v", "u", "v"]).dictionary_encode(),
        }
    )
    src = write_groups(tmp_path / "odd.parquet", odd.slice(0, 2), odd.slice(2, 2))
    assert pq.ParquetFile(src).num_row_groups == 2
    items = list(read_records(src, max_record_bytes=10_000))
    assert [type(i).__name__ for i in items] == ["Row", "BadRow", "BadRow", "Row"]
    first, fourth = items[0], items[3]
    assert isinstance(first, Row) and isinstance(fourth, Row)
    assert first.data == {
        "id": "x1",
        "score": 1.5,
        "at": "2026-01-02T03:04:05+00:00",
        "price": "1.10",
        "blob": "ok",
        "tags": ["a", "b"],
        "meta": {"k": 1, "v": "w"},
        "kind": "u",
    }
    assert fourth.line == 4 and fourth.data["tags"] == ["c"]
    bad2, bad3 = items[1], items[2]
    assert isinstance(bad2, BadRow) and isinstance(bad3, BadRow)
    assert (bad2.line, bad2.code) == (2, bad_codes.NOT_UTF8)
    assert bad2.message.startswith("field 'blob': bytes that are not UTF-8")
    assert (bad3.line, bad3.code, bad3.message) == (
        3,
        bad_codes.INVALID_VALUE,
        "field 'score': a number that is not finite",
    )
    assert bad3.raw is not None and '"id":"x3"' in bad3.raw


def test_nan_is_missing_and_a_row_over_the_limit_is_a_bad_row(tmp_path: Path) -> None:
    table = pa.table({"id": ["a", "b"], "x": [float("nan"), 1.0], "text": ["short", "y" * 500]})
    src = write_groups(tmp_path / "t.parquet", table)
    a, b = read_records(src, max_record_bytes=200)
    assert isinstance(a, Row) and a.data == {"id": "a", "x": None, "text": "short"}
    assert isinstance(b, BadRow) and b.code == bad_codes.TOO_LARGE and b.line == 2


def test_enqueue_parquet_stores_every_row_and_numbers_the_bad_ones(cli: Cli) -> None:
    good = judge_table(3000)
    bad = pa.table(
        {
            "id": ["bad-1", "r0"],  # line 3002 repeats line 1's key
            "question": ["q", "q"],
            "answer": ["a", "a"],
        }
    )
    src = write_groups(cli.tmp / "judge.parquet", good.slice(0, 2000), good.slice(2000), bad)
    # An infinite number has no JSON form: make line 3001 hold one.
    table = pq.read_table(src)
    score = pa.array([1.0] * 3000 + [float("inf"), 2.0])
    src = write_groups(cli.tmp / "judge.parquet", table.append_column("weight", score))

    report = cli.enqueue(src)
    assert (report["batch"], report["lines"], report["read"], report["added"]) == (
        "judge",
        3002,
        3001,
        3000,
    )
    assert (report["bad_lines"], report["duplicates"]) == (1, 1)
    assert report["bad"] == ["line 3001: field 'weight': a number that is not finite"]
    assert report["duplicate_lines"] == ["line 3002: duplicate key 'r0' (first at line 1)"]
    stored = cli.records("judge")
    assert [s[0] for s in stored] == list(range(1, 3001))
    assert stored[2001] == (
        2002,
        "r2001",
        {"id": "r2001", "question": "What is 2001 + 2001?", "answer": "4002", "weight": 1.0},
    )
    assert cli.bad("judge") == [(3001, "invalid_value"), (3002, "duplicate_key")]

    again = cli.enqueue(src)
    assert (again["read"], again["added"], again["already_stored"]) == (3001, 0, 3000)
    assert cli.bad("judge") == [(3001, "invalid_value"), (3002, "duplicate_key")]

    res = cli("report", "judge")
    assert res.returncode == 0 and "3001" in res.stdout, res.stdout


def test_strict_refuses_a_parquet_file_with_a_bad_row_and_stores_nothing(cli: Cli) -> None:
    table = judge_table(10).append_column("w", pa.array([1.0] * 9 + [float("-inf")]))
    src = write_groups(cli.tmp / "strict.parquet", table)
    res = cli("enqueue", str(src), "--model", "m", "--key", "id", "--strict")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "--strict: 1 bad line (10), nothing stored; first: line 10: field 'w'" in res.stderr
    assert cli.ledger.batches() == []


def test_parquet_from_standard_input_is_spooled_first(cli: Cli) -> None:
    src = write_groups(cli.tmp / "in.parquet", judge_table(5))
    with src.open("rb") as fh:
        res = vfleet_bytes(cli, fh.read(), "enqueue", "-", "--format", "parquet", "--batch", "p")
    assert res.returncode == 0, res.stderr
    assert [k for _, k, _ in cli.records("p")] == ["r0", "r1", "r2", "r3", "r4"]


def vfleet_bytes(cli: Cli, data: bytes, *args: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from tests.services import ROOT

    argv = [sys.executable, "-m", "producer", *args, "--model", "m", "--key", "id"]
    return subprocess.run(argv, input=data, env=cli.env, capture_output=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notparquet.parquet", b"PAR1 but not really", "not a readable Parquet file"),
        ("empty.parquet", b"", "not a readable Parquet file"),
        ("data.parquet.gz", b"\x1f\x8b", "compressed inside; gunzip it first"),
    ],
)
def test_a_file_that_is_not_parquet_is_one_line_and_stores_nothing(
    cli: Cli, name: str, content: bytes, needle: str
) -> None:
    src = cli.tmp / name
    src.write_bytes(content)
    res = cli("enqueue", str(src), "--model", "m")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert needle in res.stderr
    assert cli.ledger.batches() == []


def test_without_pyarrow_parquet_is_a_one_line_error_naming_the_extra(cli: Cli) -> None:
    # A pyarrow that cannot be imported, first on the path: as if it were not installed.
    shadow = cli.tmp / "no-pyarrow"
    (shadow / "pyarrow").mkdir(parents=True)
    (shadow / "pyarrow" / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    env = {**cli.env, "PYTHONPATH": str(shadow)}
    src = cli.tmp / "any.parquet"
    src.write_bytes(b"PAR1")
    res = cli("enqueue", str(src), "--model", "m", env=env)
    assert res.returncode == 1, res.stderr
    assert res.stderr == (
        "vfleet: error: reading Parquet needs pyarrow, which is not installed: "
        "pip install 'vfleet[parquet]'\n"
    )
    # Everything else works without it; writing Parquet says the same.
    lines = cli.tmp / "plain.jsonl"
    lines.write_text('{"id": "a", "question": "q", "answer": "a"}\n', encoding="utf-8")
    res = cli("enqueue", str(lines), "--model", "m", "--key", "id", env=env)
    assert res.returncode == 0, res.stderr
    res = cli("export", "plain", "-o", str(cli.tmp / "out.parquet"), env=env)
    assert res.returncode == 1
    assert res.stderr == (
        "vfleet: error: writing Parquet needs pyarrow, which is not installed: "
        "pip install 'vfleet[parquet]'\n"
    )
    assert not (cli.tmp / "out.parquet").exists()

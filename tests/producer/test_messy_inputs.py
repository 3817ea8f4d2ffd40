"""Messy input files through the real ``vfleet`` CLI: every line becomes a record or a
numbered bad (or skipped) line kept with the batch; hostile lines never give a traceback
nor a half-made batch; a failed enqueue leaves no trace or says what it stored.

Files are made in each test. Enqueues publish to a private Redis; no worker runs.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import vfleet
from tests.together import run_together
from workers.store import bad_lines
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records

pytestmark = pytest.mark.timeout(180)


def judge_line(i: int, **extra: object) -> bytes:
    row = {"id": f"r{i}", "question": f"What is {i}?", "answer": str(i), "reference": str(i)}
    return json.dumps({**row, **extra}).encode()


def file_304(path: Path) -> Path:
    """The issue's file: 300 records; line 18 invalid JSON (broken at column 56), line 121
    a JSON array, line 201 empty, line 304 with a Latin-1 byte."""
    lines = []
    for i in range(1, 305):
        if i == 18:
            lines.append(
                b'{"id": "r18", "question": "What is 18?", "answer": "x" "reference": "y"}'
            )
        elif i == 121:
            lines.append(b"[1, 2, 3]")
        elif i == 201:
            lines.append(b"")
        elif i == 304:
            lines.append(b'{"id": "r304", "question": "caf\xe9?", "answer": "a"}')
        else:
            lines.append(judge_line(i))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


class Env:
    def __init__(self, tmp: Path, redis_url: str, database_url: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.vars = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
        self.vars |= {
            "VFLEET_DATABASE_URL": database_url,
            "VFLEET_BROKER_URL": redis_url,
            "VFLEET_FLEET_FILE": str(tmp / "fleet.toml"),
        }
        self._engine = None

    def cli(self, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        res = vfleet(*args, env=self.vars, stdin=stdin)
        assert "Traceback" not in res.stderr, res.stderr
        return res

    def enqueue(self, path: Path, *args: str):  # type: ignore[no-untyped-def]
        return self.cli("enqueue", str(path), "--model", "m", "--key", "id", *args)

    @property
    def ledger(self) -> Ledger:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
            upgrade(self._engine)
        return Ledger(self._engine)

    def names(self) -> list[str]:
        return [b.name for b in self.ledger.batches()]

    def bad(self, batch: str) -> list[tuple[int, str]]:
        info = self.ledger.batch(batch)
        return [(b.line, b.code) for b in bad_lines.iter_bad_lines(self.ledger.engine, info.id)]

    def keys(self, batch: str) -> list[tuple[int, str]]:
        info = self.ledger.batch(batch)
        return [(r.seq, r.key) for r in iter_records(self.ledger.engine, info.id)]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> Iterator[Env]:
    e = Env(tmp_path, redis_url, f"sqlite:///{tmp_path / 'vfleet.db'}")
    yield e
    e.close()


@pytest.fixture
def any_env(tmp_path: Path, redis_url: str, database_url: str) -> Iterator[Env]:
    """An :class:`Env` on SQLite, then on PostgreSQL."""
    e = Env(tmp_path, redis_url, database_url)
    yield e
    e.close()


# --- the 304-line file --------------------------------------------------------------


def test_the_304_line_file_keeps_300_records_3_bad_lines_and_1_blank_one(env: Env) -> None:
    src = file_304(env.tmp / "judge304.jsonl")
    res = env.enqueue(src)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(
        "batch judge304: 304 lines: 300 records (300 added, 0 already stored, 0 reused), "
        "3 bad lines, 0 duplicate keys, 1 blank line skipped; "
    )
    assert res.stderr.splitlines() == [
        "  line 18: invalid JSON (Expecting ',' delimiter at column 56)",
        "  line 121: not a JSON object but an array",
        "  line 201: blank line (skipped)",
        "  line 304: not UTF-8 text (invalid continuation byte at column 32, byte 32)",
    ]
    assert env.bad("judge304") == [
        (18, "invalid_json_line"),
        (121, "not_an_object"),
        (201, "blank_line"),
        (304, "invalid_encoding"),
    ]
    assert len(env.keys("judge304")) == 300

    again = env.enqueue(src, "--json")
    report = json.loads(again.stdout)
    assert (report["lines"], report["read"], report["added"], report["already_stored"]) == (
        304,
        300,
        0,
        300,
    )
    assert (report["bad_lines"], report["blank_lines"], report["duplicates"]) == (3, 1, 0)
    assert len(env.bad("judge304")) == 4  # a re-run stores each line once

    status = json.loads(env.cli("status", "judge304", "--json").stdout)
    assert (status["bad_lines"], status["skipped_lines"]) == (3, 1)
    assert [(e["line"], e["code"]) for e in status["errors"]["data"]] == [
        (18, "invalid_json_line"),
        (121, "not_an_object"),
        (304, "invalid_encoding"),
    ]
    table = env.cli("status", "judge304").stdout
    assert "judge304: 3 bad input lines, 1 blank line skipped (vfleet report judge304" in table
    text = env.cli("report", "judge304").stdout
    assert "input lines not run: 4" in text
    assert "invalid_json_line        1  lines 18: invalid JSON" in text
    assert "blank_line        1  lines 201: blank line" in text
    gone = env.cli("delete", "judge304")
    assert gone.stdout == "batch judge304: deleted with its 300 records and 4 bad input lines\n"


def test_strict_names_the_first_bad_line_in_file_order_and_stores_nothing(env: Env) -> None:
    src = file_304(env.tmp / "judge304.jsonl")
    res = env.enqueue(src, "--strict")
    assert res.returncode == 1
    assert res.stderr == (
        "vfleet: error: --strict: 3 bad lines (18, 121, 304), nothing stored; "
        "first: line 18: invalid JSON (Expecting ',' delimiter at column 56)\n"
    )
    assert env.names() == []


# --- every reader, every kind of bad line ----------------------------------------------------


def test_every_kind_of_bad_jsonl_line_is_numbered_and_the_rest_is_stored(any_env: Env) -> None:
    env = any_env  # on SQLite and PostgreSQL: some values only PostgreSQL refuses
    lines = [
        judge_line(1),  # 1
        b"{broken",  # 2
        b'"a string"',  # 3
        b"",  # 4
        b'{"id": "r5", "x": "caf\xe9"}',  # 5
        b'{"id": "r6", "x": "\\ud800"}',  # 6: lone surrogate
        b"[" * 100_000 + b"]" * 100_000,  # 7: far too deep for json
        b'{"id": "r8", "x": ' + b"[" * 150 + b"]" * 150 + b"}",  # 8: deeper than 100
        b'{"id": "r9", "x": "' + b"y" * 5000 + b'"}',  # 9: over --max-record-bytes
        b'{"id": "r10", "x": NaN}',  # 10
        b'{"question": "no id"}',  # 11
        json.dumps({"id": "k" * 400}).encode(),  # 12: key over the ledger's 300 characters
        json.dumps({"id": "a\u0000b"}).encode(),  # 13: NUL in the key
        judge_line(1, question="again"),  # 14: duplicate key r1
        b'{"id": "r15", "x": "\\ud83d\\ude00"}',  # 15: a real pair: fine
        b"   \t",  # 16
        judge_line(17),  # 17
        b'{"id": "r18", "x": 1e400}',  # 18: no float holds it (stored, it would be Infinity)
        b'{"id": "r19", "x": 1e300, "y": 2.5e-300}',  # 19: fine
        b'{"id": "r20", "x": "a\\u0000b"}',  # 20: a NUL in a value is fine in JSON
    ]
    src = env.tmp / "messy.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = env.enqueue(src, "--max-record-bytes", "300000", "--json")
    assert res.returncode == 0, res.stderr
    assert env.bad("messy") == [
        (2, "invalid_json_line"),
        (3, "not_an_object"),
        (4, "blank_line"),
        (5, "invalid_encoding"),
        (6, "invalid_unicode"),
        (7, "too_deeply_nested"),
        (8, "too_deeply_nested"),
        (10, "invalid_json_line"),
        (11, "missing_key"),
        (12, "invalid_key"),
        (13, "invalid_key"),
        (14, "duplicate_key"),
        (16, "blank_line"),
        (18, "invalid_json_line"),
    ]
    assert env.keys("messy") == [
        (1, "r1"),
        (9, "r9"),
        (15, "r15"),
        (17, "r17"),
        (19, "r19"),
        (20, "r20"),
    ]
    info = env.ledger.batch("messy")
    inputs = {r.key: r.input for r in iter_records(env.ledger.engine, info.id)}
    assert inputs["r20"]["x"] == "a\x00b" and inputs["r15"]["x"] == "\U0001f600"
    report = json.loads(res.stdout)
    assert (report["lines"], report["bad_lines"], report["duplicates"]) == (20, 11, 1)
    assert report["blank_lines"] == 2
    messages = {p["line"]: p["message"] for p in report["problems"]}
    assert messages[12] == "key field 'id' is 400 characters, over the ledger's 300"
    assert messages[14] == "duplicate key 'r1' (first at line 1)"  # said once, no "skipped"
    assert messages[18] == "invalid JSON (number 1e400 is too large)"
    too_big = env.enqueue(src, "--max-record-bytes", "1000", "--batch", "small", "--json")
    # r1, r15, r17, r19, r20 and the duplicate r1 of line 14 are read; line 9 is too long
    assert (9, "line_too_large") in env.bad("small") and json.loads(too_big.stdout)["read"] == 6


@pytest.mark.parametrize("suffix", ["csv", "tsv"])
def test_csv_and_tsv_with_bom_crlf_and_quoted_newlines_keep_their_line_numbers(
    env: Env, suffix: str
) -> None:
    sep = "," if suffix == "csv" else "\t"
    rows = [
        f"id{sep}question{sep}answer",  # 1 (after a BOM)
        f'1{sep}"What is\r\n2+2?"{sep}4',  # 2-3: a quoted newline
        "",  # 4
        f"2{sep}caf\udce9{sep}x",  # 5: a Latin-1 byte (written as such below)
        f"3{sep}too few",  # 6
        f'4{sep}"multi\r\nline\r\nfield"{sep}"a{sep}b"',  # 7-9
        f"5{sep}last{sep}ok",  # 10
    ]
    data = b"\xef\xbb\xbf" + "\r\n".join(rows).encode("utf-8", "surrogateescape") + b"\r\n"
    src = env.tmp / f"messy.{suffix}"
    src.write_bytes(data)
    res = env.enqueue(src, "--json")
    assert res.returncode == 0, res.stderr
    assert env.keys("messy") == [(2, "1"), (7, "4"), (10, "5")]
    assert env.bad("messy") == [
        (4, "blank_line"),
        (5, "invalid_encoding"),
        (6, "wrong_field_count"),
    ]
    info = env.ledger.batch("messy")
    stored = {r.key: r.input for r in iter_records(env.ledger.engine, info.id)}
    assert stored["1"] == {"id": "1", "question": "What is\r\n2+2?", "answer": "4"}
    assert stored["4"]["answer"] == f"a{sep}b"
    [bad5] = [b for b in bad_lines.iter_bad_lines(env.ledger.engine, info.id) if b.line == 5]
    assert bad5.raw == f"2{sep}caf\\xe9{sep}x"


def batch_request(i: int, prompt: str = "p") -> bytes:
    body = {"model": "m", "prompt": f"{prompt}{i}"}
    line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions", "body": body}
    return json.dumps(line).encode()


@pytest.mark.parametrize(
    ("name", "lines", "bad_at"),
    [
        ("in.jsonl", [judge_line(1), b'{"id": "r2", "x": "\xff"}', judge_line(3)], 2),
        ("in.jsonl.gz", [judge_line(1), b'{"id": "r2", "x": "\xff"}', judge_line(3)], 2),
        ("in.csv", [b"id,text", b"1,a", b"2,\xff", b"3,c"], 3),
        ("in.tsv", [b"id\ttext", b"1\ta", b"2\t\xff", b"3\tc"], 3),
        (
            "requests.jsonl",
            [batch_request(0), batch_request(1).replace(b'"p1"', b'"p\xff"'), batch_request(2)],
            2,
        ),
    ],
    ids=["jsonl", "gzip", "csv", "tsv", "openai"],
)
def test_a_non_utf8_line_is_a_bad_line_in_every_reader(
    env: Env, name: str, lines: list[bytes], bad_at: int
) -> None:
    data = b"\n".join(lines) + b"\n"
    src = env.tmp / name
    src.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    key = [] if name.startswith("requests") else ["--key", "id"]
    res = env.cli("enqueue", str(src), "--model", "m", *key, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["read"], report["bad_lines"]) == (2, 1)
    assert env.bad(src.stem) == [(bad_at, "invalid_encoding")]


# --- hostile lines, --strict, and what a failure leaves -------------------------------------


def hostile_file(path: Path) -> Path:
    lines = [judge_line(i) for i in range(1, 4001)]
    lines[1999] = b'{"id": "r2000", "question": "\\ud800", "answer": "a", "reference": "r"}'
    lines[2999] = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_hostile_lines_are_bad_lines_and_the_batch_is_whole(env: Env) -> None:
    src = hostile_file(env.tmp / "hostile.jsonl")
    res = env.enqueue(src, "--max-record-bytes", "300000", "--json")
    assert res.returncode == 0, res.stderr
    assert env.bad("hostile") == [(2000, "invalid_unicode"), (3000, "too_deeply_nested")]
    info = env.ledger.batch("hostile")
    assert env.ledger.counts(info.id)["queued"] == 3998
    assert next(b for b in env.ledger.batches() if b.name == "hostile").total == 3998


def test_hostile_lines_with_strict_give_one_line_and_store_nothing(env: Env) -> None:
    src = hostile_file(env.tmp / "hostile.jsonl")
    res = env.enqueue(src, "--strict", "--max-record-bytes", "300000")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1
    assert "--strict: 2 bad lines (2000, 3000), nothing stored; first: line 2000: " in res.stderr
    assert "text holds a lone surrogate \\ud800" in res.stderr
    assert env.names() == []


def test_a_template_that_never_ends_fails_strict_quickly(env: Env) -> None:
    spec = env.tmp / "loop.toml"
    spec.write_text(
        'template = """{% for i in range(100000) %}{% for j in range(100000) %}'
        '{% endfor %}{% endfor %}{{ question }}"""\n',
        encoding="utf-8",
    )
    src = env.tmp / "few.jsonl"
    src.write_bytes(b"\n".join(judge_line(i) for i in range(3)) + b"\n")
    res = env.enqueue(src, "--spec", str(spec), "--strict")
    assert res.returncode == 1
    assert "--strict: 3 bad lines (1, 2, 3), nothing stored; first: line 1: " in res.stderr
    assert "template: rendering ran over" in res.stderr
    assert env.names() == []


def truncated_gzip(path: Path, n: int, keep: float) -> Path:
    data = gzip.compress(b"\n".join(judge_line(i) for i in range(1, n + 1)) + b"\n")
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_a_failed_enqueue_into_an_existing_batch_says_what_it_stored_and_resumes(
    env: Env,
) -> None:
    first = env.tmp / "first.jsonl"
    first.write_bytes(b"\n".join(judge_line(i) for i in range(100_001, 100_301)) + b"\n")
    assert env.enqueue(first, "--batch", "b").returncode == 0
    broken = truncated_gzip(env.tmp / "more.jsonl.gz", 6000, 0.8)
    res = env.enqueue(broken, "--batch", "b")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    stored = len(env.keys("b")) - 300
    assert stored > 0
    assert (
        f"vfleet: error: batch b: {stored} new records of {broken} stored (to line " in res.stderr
    )
    assert "re-run the same command to resume: " in res.stderr and "corrupt gzip" in res.stderr
    assert next(x for x in env.ledger.batches() if x.name == "b").total == 300 + stored
    whole = env.tmp / "more.jsonl.gz"
    whole.write_bytes(gzip.compress(b"\n".join(judge_line(i) for i in range(1, 6001)) + b"\n"))
    again = env.enqueue(whole, "--batch", "b", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["added"] == 6000 - stored
    assert len(env.keys("b")) == 6300


def test_a_failed_enqueue_of_a_new_batch_leaves_no_trace(env: Env) -> None:
    broken = truncated_gzip(env.tmp / "new.jsonl.gz", 6000, 0.8)
    res = env.enqueue(broken)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "corrupt gzip" in res.stderr
    assert env.names() == []


# --- the ledger's limits, the same on SQLite and PostgreSQL ---------------------------------


def test_names_and_keys_over_the_ledgers_limits_are_clear_on_every_store(any_env: Env) -> None:
    src = any_env.tmp / "in.jsonl"
    src.write_bytes(judge_line(1) + b"\n" + json.dumps({"id": "k" * 400}).encode() + b"\n")
    res = any_env.enqueue(src, "--batch", "n" * 500)
    assert res.returncode == 1
    assert res.stderr == "vfleet: error: batch name is 500 characters, over the ledger's 200\n"
    assert any_env.names() == []
    res = any_env.enqueue(src, "--batch", "keys", "--json")
    assert res.returncode == 0, res.stderr
    assert any_env.bad("keys") == [(2, "invalid_key")] and any_env.keys("keys") == [(1, "r1")]
    res = any_env.cli("enqueue", str(src), "--model", "m" * 400, "--key", "id")
    assert res.returncode == 1 and "--model is 400 characters, over the ledger's 300" in res.stderr


def test_concurrent_enqueues_of_one_new_batch_give_one_exact_batch(any_env: Env) -> None:
    src = file_304(any_env.tmp / "judge304.jsonl")
    assert any_env.names() == []  # the schema first: this test is about the batch
    for attempt in range(3):
        argv = ["enqueue", str(src), "--model", "m", "--key", "id", "--batch", f"b{attempt}"]
        results = run_together(any_env.tmp, any_env.vars, [argv] * 4)
        for res in results:
            assert res.returncode == 0, res.stderr
            assert "Traceback" not in res.stderr
        added = [int(r.stdout.split(" added")[0].rsplit("(", 1)[1]) for r in results]
        assert sum(added) == 300
        assert len(any_env.keys(f"b{attempt}")) == 300
        assert [c for _, c in any_env.bad(f"b{attempt}")] == [
            "invalid_json_line",
            "not_an_object",
            "blank_line",
            "invalid_encoding",
        ]
    assert sorted(any_env.names()) == ["b0", "b1", "b2"]


# --- the smaller points -------------------------------------------------------------------------


def test_messages_come_in_line_order_and_say_skipped_once(env: Env) -> None:
    lines = [judge_line(i) for i in range(1, 55)]
    lines[50] = b"{bad"  # line 51
    lines[51] = judge_line(7)  # line 52: duplicate of line 7
    lines[52] = b"[53]"  # line 53
    src = env.tmp / "order.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    res = env.enqueue(src)
    assert res.stderr.splitlines() == [
        "  line 51: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        "  line 52: duplicate key 'r7' (first at line 7)",
        "  line 53: not a JSON object but an array",
    ]


def test_published_counts_what_went_to_the_fleet_while_a_worker_feeds(env: Env) -> None:
    import redis

    from workers.keys import FEED_LOCK

    src = env.tmp / "many.jsonl"
    src.write_bytes(b"\n".join(judge_line(i) for i in range(200)) + b"\n")
    client = redis.Redis.from_url(env.vars["VFLEET_BROKER_URL"])
    lock = client.lock(FEED_LOCK, timeout=60)
    assert lock.acquire(blocking=False)  # a worker's feeder holds it
    try:
        held = json.loads(env.enqueue(src, "--json").stdout)
    finally:
        lock.release()
        client.close()
    # Nothing was published by this process, and it says so: all 200 wait in the ledger
    # for the feeder that holds the lock; then a free run publishes a window.
    assert (held["published"], held["waiting"]) == (0, 200)
    free = json.loads(env.enqueue(src, "--json").stdout)
    assert free["published"] > 0 and free["published"] + free["waiting"] == 200

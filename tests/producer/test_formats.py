"""Input formats and bad input: OpenAI batch lines, size limits, duplicate keys, --strict
template checks, empty and non-UTF-8 files, and OpenAI batch output lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.export import export_openai
from producer.readers import BadRow, Row, read_records, sniff_format
from producer.sources import file_source
from producer.storing import check_source, store_source
from tests.services import vfleet
from workers.spec import load_spec
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import BatchInfo, Claim, Outcome

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"


def batch_line(cid: str, url: str = CHAT, **body: object) -> dict[str, object]:
    if not body:
        body = (
            {"model": "gpt-x", "messages": [{"role": "user", "content": f"hi {cid}"}]}
            if url == CHAT
            else {"model": "gpt-x", "prompt": f"hi {cid}", "max_tokens": 5}
        )
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    engine = make_engine(f"sqlite:///{tmp_path / 'vfleet.db'}")
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def make_batch(ledger: Ledger, spec: str = "judge", name: str = "b") -> BatchInfo:
    info, _ = ledger.create_batch(
        name=name,
        spec_name=spec,
        spec=load_spec(spec).model_dump(mode="json"),
        model="m",
        route="shared",
    )
    return info


# --- OpenAI batch input ---------------------------------------------------------------------


def test_openai_batch_file_is_sniffed_and_bad_urls_are_bad_lines(tmp_path: Path) -> None:
    src = write_lines(
        tmp_path / "requests.jsonl",
        [
            batch_line("a"),
            batch_line("b", "/v1/completions"),
            batch_line("c", "/v1/embeddings", model="e", input="x"),
            {"custom_id": "d", "method": "POST", "url": CHAT, "body": "not an object"},
            {"custom_id": "e", "method": "GET", "url": CHAT, "body": {"messages": []}},
            {"custom_id": "f", "method": "POST", "url": CHAT, "body": {"model": "x"}},
        ],
    )
    assert sniff_format(src).name == "openai"
    items = list(read_records(src, "openai"))
    assert [i.data["custom_id"] for i in items if isinstance(i, Row)] == ["a", "b"]
    errors = {i.line: i.error for i in items if isinstance(i, BadRow)}
    assert "unsupported url '/v1/embeddings'" in errors[3] and CHAT in errors[3]
    assert "body must be a JSON object" in errors[4]
    assert "unsupported method 'GET'" in errors[5]
    assert "no 'messages'" in errors[6]


def test_plain_jsonl_is_not_taken_for_an_openai_batch_file(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "r.jsonl", [batch_line("a"), {"id": 1, "question": "q"}])
    assert sniff_format(src).name == "jsonl"
    assert sniff_format(src, "openai").name == "openai"


# --- size limit, duplicates, --strict template check -------------------------------------------


def test_records_over_the_size_limit_are_bad_lines_in_jsonl_and_csv(tmp_path: Path) -> None:
    big = "x" * 2000
    src = write_lines(tmp_path / "r.jsonl", [{"id": 1}, {"id": 2, "text": big}, {"id": 3}])
    items = list(read_records(src, max_record_bytes=1000))
    assert [i.line for i in items if isinstance(i, Row)] == [1, 3]
    bad = [i for i in items if isinstance(i, BadRow)]
    assert bad[0].line == 2 and "over the 1000-byte limit" in bad[0].error
    csv_src = tmp_path / "r.csv"
    csv_src.write_text(f"id,text\n1,a\n2,{big}\n", encoding="utf-8")
    items = list(read_records(csv_src, max_record_bytes=1000))
    assert [type(i).__name__ for i in items] == ["Row", "BadRow"]


def test_strict_check_names_duplicates_and_missing_template_fields(tmp_path: Path) -> None:
    rows: list[object] = [
        {"id": "a", "question": "q", "answer": "x"},
        {"id": "b", "question": "q"},  # no answer: the judge template cannot render
        {"id": "a", "question": "q2", "answer": "y"},  # duplicate of line 1
        "{broken",
    ]
    src = write_lines(tmp_path / "r.jsonl", rows)
    bad = check_source(file_source(src), "id", spec=load_spec("judge"))
    assert [b.line for b in bad] == [2, 3, 4]
    assert "'answer' is undefined" in bad[0].error
    assert "duplicate key 'a' (first at line 1)" in bad[1].error


def test_duplicate_keys_keep_the_first_and_report_both_lines(
    ledger: Ledger, tmp_path: Path
) -> None:
    rows = [{"id": f"k{i % 4}", "question": f"q{i}", "answer": "a"} for i in range(6)]
    src = write_lines(tmp_path / "r.jsonl", rows)
    info = make_batch(ledger)
    report = store_source(ledger, info, file_source(src), key_field="id")
    assert (report.read, report.added, report.duplicate_count) == (6, 4, 2)
    assert report.duplicates == [
        "line 5: duplicate key 'k0' (first at line 1)",
        "line 6: duplicate key 'k1' (first at line 2)",
    ]
    stored = {r.key: r.input["question"] for r in iter_records(ledger.engine, info.id)}
    assert stored == {"k0": "q0", "k1": "q1", "k2": "q2", "k3": "q3"}
    again = store_source(ledger, info, file_source(src), key_field="id")
    # A re-run finds its own rows already stored: still only the real duplicates.
    assert (again.added, again.duplicate_count) == (0, 2)


# --- whole-file problems through the CLI ----------------------------------------------------


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    env["VFLEET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    env["VFLEET_BROKER_URL"] = "redis://127.0.0.1:1/0"  # never reached: these runs fail first
    env["VFLEET_FLEET_FILE"] = str(tmp_path / "none.toml")
    return env


def batch_names(tmp_path: Path) -> list[str]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    upgrade(engine)
    names = [b.name for b in Ledger(engine).batches()]
    engine.dispose()
    return names


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no records (the file is empty)"),
        (b"\n  \n", "no records (the file is empty)"),
        (b"{bad\n[1]\n", "no valid records (2 bad lines, nothing stored); first: line 1"),
        (b'{"id": "caf\xe9"}\n{bad\n', "(2 bad lines, nothing stored); first: line 1: not UTF-8"),
    ],
    ids=["empty", "blank", "all-bad", "not-utf8"],
)
def test_unusable_files_fail_in_one_line_and_store_nothing(
    tmp_path: Path, content: bytes, message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    res = vfleet("enqueue", str(src), "--model", "m", "--key", "id", env=cli_env(tmp_path))
    assert res.returncode == 1
    assert res.stderr.startswith("vfleet: error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert batch_names(tmp_path) == []


def test_strict_lists_the_bad_line_numbers(tmp_path: Path) -> None:
    rows = [{"id": i, "question": "q", "answer": "a"} for i in range(5)]
    del rows[1]["answer"]
    del rows[3]["question"]
    src = write_lines(tmp_path / "in.jsonl", rows)
    args = ("enqueue", str(src), "--model", "m", "--key", "id", "--strict")
    res = vfleet(*args, env=cli_env(tmp_path))
    assert res.returncode == 1
    assert "--strict: 2 bad lines (2, 4), nothing stored" in res.stderr
    assert batch_names(tmp_path) == []


def test_an_openai_file_with_a_template_spec_is_refused(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "req.jsonl", [batch_line("a")])
    res = vfleet("enqueue", str(src), "--model", "m", "--spec", "judge", env=cli_env(tmp_path))
    assert res.returncode == 1 and "does not fit format 'openai'" in res.stderr


# --- OpenAI batch output --------------------------------------------------------------------


def test_openai_export_writes_responses_in_order_and_errors_apart(
    ledger: Ledger, tmp_path: Path
) -> None:
    src = write_lines(tmp_path / "req.jsonl", [batch_line(c) for c in "abc"])
    info = make_batch(ledger, "openai")
    store_source(ledger, info, file_source(src, "openai"), key_field="custom_id")
    ids = {r.key: r.id for r in iter_records(ledger.engine, info.id)}
    body = {"id": "cmpl-1", "object": "chat.completion", "choices": []}
    for key in ("a", "c"):
        claim = ledger.claim(ids[key], worker="w", instance="i", task_id=None, lease_seconds=30)
        assert isinstance(claim, Claim)
        if key == "a":
            out = {"status_code": 200, "request_id": "req-1", "body": body}
            ledger.succeed(claim, Outcome("", out, 1, 2, 3.0))
        else:
            ledger.fail(claim, kind="bad_request", message="400: nope")
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    counts = export_openai(ledger, info, out, err)
    assert (counts.succeeded, counts.errors, counts.pending) == (1, 1, 1)
    [ok] = map(json.loads, out.read_text().splitlines())
    assert ok == {
        "id": f"batch_req_{ids['a']}",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "req-1", "body": body},
        "error": None,
    }
    [bad] = map(json.loads, err.read_text().splitlines())
    assert bad["custom_id"] == "c" and bad["response"] is None
    assert bad["error"] == {"code": "bad_request", "message": "400: nope"}
    assert not list(tmp_path.glob(".*.part"))

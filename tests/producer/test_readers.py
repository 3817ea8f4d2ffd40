from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from producer.readers import (
    BadRow,
    MissingKeyError,
    ReaderError,
    Row,
    detect_format,
    read_records,
    record_key,
)
from workers.spec import load_spec, plan_requests


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def rows(items: list[Row | BadRow]) -> list[tuple[int, dict[str, Any]]]:
    return [(r.line, r.data) for r in items if isinstance(r, Row)]


def bad(items: list[Row | BadRow]) -> list[tuple[int, str]]:
    """Bad lines (blank ones aside): ``(line, "line N: message")``."""
    return [(r.line, r.error) for r in items if isinstance(r, BadRow) and not r.skipped]


def blank(items: list[Row | BadRow]) -> list[int]:
    return [r.line for r in items if isinstance(r, BadRow) and r.skipped]


# --- format detection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("a.jsonlines", "jsonl"),
        ("a.csv", "csv"),
        ("a.tsv", "tsv"),
        ("a.jsonl.gz", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.PQ", "parquet"),
        ("-", "jsonl"),
    ],
)
def test_format_from_suffix(name: str, fmt: str) -> None:
    assert detect_format(Path(name)).name == fmt


def test_format_flag_wins_over_suffix() -> None:
    assert detect_format(Path("data.txt"), "CSV").name == "csv"
    assert detect_format(Path("data.csv"), "ndjson").name == "jsonl"


@pytest.mark.parametrize(("name", "fmt"), [("data.json", None), ("data", None), ("a.csv", "xml")])
def test_unknown_format_is_a_reader_error(name: str, fmt: str | None) -> None:
    with pytest.raises(ReaderError) as info:
        detect_format(Path(name), fmt)
    assert "format" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_fails_at_once_not_on_first_next(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match="no such file"):
        read_records(tmp_path / "absent.jsonl")


# --- JSONL --------------------------------------------------------------------------------


def test_jsonl_good_blank_and_bad_lines_with_line_numbers(tmp_path: Path) -> None:
    text = (
        '{"id": 1}\n'
        "\n"
        "   \n"
        '{"id": 2, "text": "caf\u00e9"}\r\n'
        '{"id": 3,, "x": 1}\n'
        "[1, 2]\n"
        '"just a string"\n'
        '{"id": NaN}\n'
        '{"id": 4}'  # no final newline
    )
    items = list(read_records(write_bytes(tmp_path, "r.jsonl", text.encode())))
    assert rows(items) == [(1, {"id": 1}), (4, {"id": 2, "text": "caf\u00e9"}), (9, {"id": 4})]
    assert bad(items) == [
        (
            5,
            "line 5: invalid JSON (Expecting property name enclosed in double quotes at column 10)",
        ),
        (6, "line 6: not a JSON object but an array"),
        (7, "line 7: not a JSON object but a string"),
        (8, "line 8: invalid JSON (NaN is not allowed)"),
    ]
    assert blank(items) == [2, 3]


def test_jsonl_tolerates_a_utf8_bom(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert rows(list(read_records(path))) == [(1, {"a": 1}), (2, {"a": 2})]


def test_jsonl_not_utf8_is_a_bad_line_naming_the_column_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    path = write_bytes(tmp_path, "latin.jsonl", b'{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')
    items = list(read_records(path))
    assert rows(items) == [(1, {"a": 1}), (3, {"a": 3})]
    [(line, code, raw)] = [(b.line, b.code, b.raw) for b in items if isinstance(b, BadRow)]
    assert (line, code) == (2, "invalid_encoding")
    assert raw == '{"a": "caf\\xe9"}'  # the bad byte kept visible, as an escape
    assert bad(items) == [
        (2, "line 2: not UTF-8 text (invalid continuation byte at column 11, byte 11)")
    ]


def test_gzipped_jsonl_is_read(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert rows(list(read_records(path))) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    ("name", "head", "tail"),
    [
        ("pipe.jsonl", b'{"id": 1}\n', b'{"id": 2}\n'),
        ("pipe.csv", b"id,text\n1,a\n", b"2,b\n"),
    ],
)
def test_records_stream_before_the_file_is_complete(
    tmp_path: Path, name: str, head: bytes, tail: bytes
) -> None:
    # A named pipe whose writer holds back the rest until the first record arrived: a
    # reader that loaded the whole file first would never yield it.
    path = tmp_path / name
    os.mkfifo(path)
    first_seen = threading.Event()
    received: queue.Queue[Row | BadRow] = queue.Queue()

    def writer() -> None:
        with path.open("wb") as f:
            f.write(head)
            f.flush()
            first_seen.wait(timeout=10)
            f.write(tail)

    def consumer() -> None:
        for item in read_records(path):
            received.put(item)

    threads = [threading.Thread(target=writer), threading.Thread(target=consumer)]
    for thread in threads:
        thread.start()
    try:
        first = received.get(timeout=5)
    finally:
        first_seen.set()
        for thread in threads:
            thread.join(timeout=10)
    assert isinstance(first, Row)
    assert first.data["id"] in (1, "1")
    second = received.get(timeout=5)
    assert isinstance(second, Row)
    assert second.data["id"] in (2, "2")


def test_big_jsonl_reads_its_first_row_without_reading_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"id": 0, "text": "x" * 1000}) + "\n"
    with path.open("w", encoding="utf-8") as f:
        f.write(line)
        f.write("not json\n" * 50_000)
        f.write(line * 20_000)  # ~20 MB behind the first row
    records = read_records(path)
    assert next(records) == Row(1, {"id": 0, "text": "x" * 1000})
    second = next(records)
    assert isinstance(second, BadRow)
    assert second.error == "line 2: invalid JSON (Expecting value at column 1)"
    records.close()  # type: ignore[attr-defined]


# --- CSV and TSV --------------------------------------------------------------------------


def test_csv_with_header_multiline_field_blank_line_and_bad_row(tmp_path: Path) -> None:
    text = (
        "id,question,answer\r\n"
        '1,"What is 2+2?",4\r\n'
        '2,"Name a\r\nmulti-line answer","one, two"\r\n'
        "\r\n"
        "3,too,many,fields\r\n"
        "4,too few\r\n"
        '5,"quoted ""inner""",ok\r\n'
    )
    items = list(read_records(write_bytes(tmp_path, "r.csv", text.encode())))
    assert rows(items) == [
        (2, {"id": "1", "question": "What is 2+2?", "answer": "4"}),
        (3, {"id": "2", "question": "Name a\r\nmulti-line answer", "answer": "one, two"}),
        (8, {"id": "5", "question": 'quoted "inner"', "answer": "ok"}),
    ]
    assert bad(items) == [
        (6, "line 6: expected 3 fields, got 4"),
        (7, "line 7: expected 3 fields, got 2"),
    ]
    assert blank(items) == [5]


def test_tsv_uses_tabs_and_keeps_commas(tmp_path: Path) -> None:
    text = "id\ttext\n1\thello, world\n2\tsecond\n"
    items = list(read_records(write_bytes(tmp_path, "r.tsv", text.encode())))
    assert rows(items) == [
        (2, {"id": "1", "text": "hello, world"}),
        (3, {"id": "2", "text": "second"}),
    ]


def test_csv_with_bom_has_a_clean_first_column(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "bom.csv", "\ufeffid,text\n1,a\n".encode())
    assert rows(list(read_records(path))) == [(2, {"id": "1", "text": "a"})]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "no header"),
        (b"\n\n", "no header"),
        (b"id,,x\n1,2,3\n", "no name"),
        (b"a,a\n", "duplicate"),
    ],
)
def test_csv_header_problems_are_reader_errors(tmp_path: Path, content: bytes, needle: str) -> None:
    with pytest.raises(ReaderError, match=needle):
        list(read_records(write_bytes(tmp_path, "h.csv", content)))


def test_csv_field_over_the_default_csv_limit_is_read(tmp_path: Path) -> None:
    big = "y" * 300_000
    path = write_bytes(tmp_path, "big.csv", f"id,text\n1,{big}\n".encode())
    assert rows(list(read_records(path))) == [(2, {"id": "1", "text": big})]


# --- keys ---------------------------------------------------------------------------------


def test_record_key_uses_the_key_field() -> None:
    assert record_key({"id": 17, "x": "a"}, "id") == "17"
    assert record_key({"id": "q1"}, "id") == "q1"


@pytest.mark.parametrize("data", [{"x": 1}, {"id": None}, {"id": ""}, {"id": "  "}, {"id": [1]}])
def test_record_key_missing_or_unusable_key_field(data: dict[str, Any]) -> None:
    with pytest.raises(MissingKeyError, match="'id'"):
        record_key(data, "id")
    assert issubclass(MissingKeyError, ReaderError)


def test_record_key_prefers_custom_id_without_key_field() -> None:
    assert record_key({"custom_id": "req-1", "body": {}}, None) == "req-1"


def test_record_key_hash_is_stable_and_order_independent() -> None:
    a = record_key({"question": "Q", "answer": "caf\u00e9"}, None)
    b = record_key({"answer": "caf\u00e9", "question": "Q"}, None)
    assert a == b
    assert len(a) == 32
    assert int(a, 16) >= 0
    # the documented canonical form, pinned so keys survive refactors
    canonical = '{"answer":"caf\u00e9","question":"Q"}'.encode()
    assert a == hashlib.sha256(canonical).hexdigest()[:32]
    assert record_key({"question": "Q", "answer": "cafe"}, None) != a
    assert record_key({"custom_id": "", "x": 1}, None) == record_key(
        {"custom_id": "", "x": 1}, None
    )


# --- bundled sample dataset ---------------------------------------------------------------


def sample_path() -> Path:
    return Path(str(importlib.resources.files("producer") / "data" / "sample_records.jsonl"))


def test_sample_dataset_has_500_rows_with_unique_ids_and_no_bad_lines() -> None:
    items = list(read_records(sample_path()))
    assert bad(items) == []
    data = [r.data for r in items if isinstance(r, Row)]
    assert len(data) >= 500
    ids = [record_key(d, "id") for d in data]
    assert len(set(ids)) == len(ids)
    assert len({d["topic"] for d in data}) >= 8
    assert sum("reference" in d for d in data) > len(data) // 2
    assert sample_path().stat().st_size < 400 * 1024


def test_every_sample_row_renders_under_the_judge_spec() -> None:
    spec = load_spec("judge")
    for item in read_records(sample_path()):
        assert isinstance(item, Row)
        [messages] = plan_requests(spec, item.data)
        assert item.data["answer"] in messages[-1]["content"]


# --- hostile lines ------------------------------------------------------------------------


def test_a_huge_line_is_read_in_chunks_and_kept_cut(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "huge.jsonl"
    with path.open("wb") as f:
        f.write(b'{"id": 1}\n{"text": "')
        for _ in range(16):
            f.write(b"y" * (1024 * 1024))  # one line of 16 MiB
        f.write(b'"}\n{"id": 3}\n')
    tracemalloc.start()
    try:
        items = list(read_records(path, max_record_bytes=1024 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows(items) == [(1, {"id": 1}), (3, {"id": 3})]
    [big] = [b for b in items if isinstance(b, BadRow)]
    assert (
        big.code == "line_too_large" and f"record is {16 * 1024 * 1024 + 12} bytes" in big.message
    )
    assert big.raw is not None and len(big.raw) <= 4096
    assert peak < 6 * 1024 * 1024  # never the whole line in memory


def test_an_openai_batch_file_is_sniffed_past_bad_first_lines(tmp_path: Path) -> None:
    from producer.readers import sniff_format

    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "p"}}
    path = write_bytes(tmp_path, "b.jsonl", b"{broken\n\xff\xfe\n\n" + json.dumps(line).encode())
    assert sniff_format(path).name == "openai"

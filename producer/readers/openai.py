"""OpenAI batch files: JSONL lines ``{"custom_id", "method", "url", "body"}``.

Each line is checked as it is read: a line for a URL the fleet does not serve, without a
``custom_id`` or whose body is not an object is a :class:`BadRow`; the rest are records
whose key is their ``custom_id`` and whose body the worker sends as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from producer.readers.base import STDIN, BadRow, Row, open_binary
from producer.readers.jsonl import read_jsonl
from workers.spec import OPENAI_PATHS

BATCH_FIELDS = ("custom_id", "method", "url", "body")
"""The fields of every OpenAI batch line."""

SNIFF_LINES = 20
"""Lines looked at to tell an OpenAI batch file from plain JSONL."""


def read_openai(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per valid batch line and a :class:`BadRow` per bad one."""
    for item in read_jsonl(path, max_record_bytes=max_record_bytes):
        yield item if isinstance(item, BadRow) else check_batch_line(item)


def check_batch_line(row: Row) -> Row | BadRow:
    """Return ``row`` if it is a batch line the fleet can run, else a :class:`BadRow`."""
    data, n = row.data, row.line
    missing = [f for f in BATCH_FIELDS if f not in data]
    if missing:
        return BadRow(n, f"line {n}: not an OpenAI batch line (missing {', '.join(missing)})")
    custom_id = data["custom_id"]
    if not isinstance(custom_id, str | int) or not str(custom_id).strip():
        return BadRow(n, f"line {n}: custom_id must be a non-empty string")
    if str(data["method"]).upper() != "POST":
        return BadRow(n, f"line {n}: unsupported method {data['method']!r} (only POST)")
    if data["url"] not in OPENAI_PATHS:
        served = ", ".join(OPENAI_PATHS)
        return BadRow(n, f"line {n}: unsupported url {data['url']!r} (the fleet serves {served})")
    body = data["body"]
    if not isinstance(body, dict):
        return BadRow(n, f"line {n}: body must be a JSON object")
    need = "messages" if data["url"] == "/v1/chat/completions" else "prompt"
    if need not in body:
        return BadRow(n, f"line {n}: body has no {need!r} (required by {data['url']})")
    return row


def looks_like_batch_file(path: Path) -> bool:
    """True if the first non-blank lines of the JSONL file are all OpenAI batch lines."""
    if str(path) == STDIN or not path.is_file():
        return False
    seen = 0
    with open_binary(path) as stream:
        for raw in stream:
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8-sig"))
            except (ValueError, UnicodeDecodeError):
                return False
            if not isinstance(data, dict) or any(f not in data for f in BATCH_FIELDS):
                return False
            seen += 1
            if seen >= SNIFF_LINES:
                break
    return seen > 0

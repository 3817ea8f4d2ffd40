"""OpenAI batch files: JSONL lines ``{"custom_id", "method", "url", "body"}``.

Each line is checked as it is read: a line for a URL the fleet does not serve, without a
``custom_id`` or whose body is not an object is a :class:`BadRow` (with its ``custom_id``
when it has one); the rest are records whose key is their ``custom_id`` and whose body
the worker sends as it is, on an instance serving the batch's model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from producer.readers import codes
from producer.readers.base import STDIN, BadRow, Row, open_binary, read_lines
from producer.readers.jsonl import read_jsonl
from workers.spec import OPENAI_PATHS

BATCH_FIELDS = ("custom_id", "method", "url", "body")
"""The fields of every OpenAI batch line."""

SNIFF_LINES = 20
"""JSON object lines looked at to tell an OpenAI batch file from plain JSONL."""

SNIFF_MAX_LINES = 1000
SNIFF_MAX_BYTES = 1024 * 1024


def read_openai(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per valid batch line and a :class:`BadRow` per other line."""
    for item in read_jsonl(path, max_record_bytes=max_record_bytes):
        yield item if isinstance(item, BadRow) else check_batch_line(item)


def custom_id_of(data: dict[str, Any]) -> str | None:
    """The line's ``custom_id`` as text, when it has a usable one."""
    value = data.get("custom_id")
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return None


def check_batch_line(row: Row) -> Row | BadRow:
    """Return ``row`` if it is a batch line the fleet can run, else a :class:`BadRow`."""
    data, n = row.data, row.line
    cid = custom_id_of(data)

    def bad(code: str, message: str) -> BadRow:
        return BadRow(n, code, message, raw=_compact(data), custom_id=cid)

    missing = [f for f in BATCH_FIELDS if f not in data]
    if missing:
        return bad(
            codes.NOT_A_BATCH_LINE, f"not an OpenAI batch line (missing {', '.join(missing)})"
        )
    if cid is None:
        return bad(codes.INVALID_KEY, "custom_id must be a non-empty string")
    if str(data["method"]).upper() != "POST":
        return bad(codes.UNSUPPORTED_METHOD, f"unsupported method {data['method']!r} (only POST)")
    if data["url"] not in OPENAI_PATHS:
        served = ", ".join(OPENAI_PATHS)
        return bad(
            codes.UNSUPPORTED_URL, f"unsupported url {data['url']!r} (the fleet serves {served})"
        )
    body = data["body"]
    if not isinstance(body, dict):
        return bad(codes.INVALID_REQUEST, "body must be a JSON object")
    need = "messages" if data["url"] == "/v1/chat/completions" else "prompt"
    if need not in body:
        return bad(codes.INVALID_REQUEST, f"body has no {need!r} (required by {data['url']})")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        return bad(codes.INVALID_REQUEST, "body.model must be a non-empty string")
    return row


def body_model(data: dict[str, Any]) -> str | None:
    """The ``body.model`` a checked batch line asks for, if it names one."""
    body = data.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def looks_like_batch_file(path: Path) -> bool:
    """True if the first JSON object lines of the JSONL file are all OpenAI batch lines
    (lines that are not JSON objects are passed over: they are bad either way)."""
    if str(path) == STDIN or not path.is_file():
        return False
    seen = looked = 0
    with open_binary(path) as stream:
        for line in read_lines(stream, SNIFF_MAX_BYTES):
            looked += 1
            if looked > SNIFF_MAX_LINES or line.cut:
                break
            try:
                data = json.loads(line.data.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            if not isinstance(data, dict):
                continue
            if any(f not in data for f in BATCH_FIELDS):
                return False
            seen += 1
            if seen >= SNIFF_LINES:
                break
    return seen > 0

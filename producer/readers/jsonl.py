"""JSON Lines: one JSON object per line."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from producer.readers.base import BadRow, ReaderError, Row, open_binary


def read_jsonl(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per JSON object line and a :class:`BadRow` per bad line.

    Reads one line at a time. Blank lines are skipped; a UTF-8 byte-order mark is dropped;
    a line longer than ``max_record_bytes`` is a :class:`BadRow`, not parsed.
    Raises :class:`ReaderError` for bytes that are not UTF-8 or corrupt gzip data.
    """
    with open_binary(path) as stream:
        for number, raw in enumerate(stream, start=1):
            if max_record_bytes is not None and len(raw.rstrip(b"\r\n")) > max_record_bytes:
                yield too_big(number, len(raw.rstrip(b"\r\n")), max_record_bytes)
                continue
            text = _decode(path, number, raw)
            if text.strip():
                yield parse_line(number, text)


def parse_line(number: int, text: str) -> Row | BadRow:
    """Return the line's object as a :class:`Row`, or a :class:`BadRow` saying what is wrong.

    ``NaN`` and ``Infinity`` are refused: they are not JSON and would not survive storage.
    """
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        return BadRow(number, f"line {number}: invalid JSON ({e.msg}: column {e.colno})")
    except ValueError as e:
        return BadRow(number, f"line {number}: invalid JSON ({e})")
    if not isinstance(data, dict):
        return BadRow(number, f"line {number}: not a JSON object")
    return Row(number, data)


def too_big(number: int, size: int, limit: int) -> BadRow:
    """The :class:`BadRow` of a record over the size limit."""
    return BadRow(number, f"line {number}: record is {size} bytes, over the {limit}-byte limit")


def _decode(path: Path, number: int, raw: bytes) -> str:
    if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReaderError(f"{path}: line {number}: not UTF-8 text ({e.reason})") from e


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")

"""CSV and TSV with a header row; each row becomes a dict of strings keyed by the header."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from producer.readers.base import BadRow, ReaderError, Row, open_binary
from producer.readers.jsonl import too_big

if TYPE_CHECKING:
    from _csv import Reader

MAX_FIELD_CHARS = 64 * 1024 * 1024
"""Largest field accepted; the csv module's default (128 KiB) is too small for documents."""


def read_csv(
    path: Path, *, delimiter: str = ",", max_record_bytes: int | None = None
) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per data row and a :class:`BadRow` per malformed row.

    The first non-blank row is the header. ``Row.line`` is the physical line where the row
    starts (a quoted field may span lines). Blank lines are skipped; a row with the wrong
    number of fields, or more than ``max_record_bytes`` of field text, is a :class:`BadRow`.
    TSV uses the same quoting rules as CSV.
    Raises :class:`ReaderError` for a file without a header, a bad header or text that is
    not UTF-8.
    """
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    with open_binary(path) as raw:
        text = io.TextIOWrapper(cast(BinaryIO, raw), encoding="utf-8-sig", newline="")
        try:
            for item in _rows(path, csv.reader(text, delimiter=delimiter)):
                yield _limited(item, max_record_bytes)
        except UnicodeDecodeError as e:
            raise ReaderError(f"{path}: not UTF-8 text ({e.reason})") from e
        finally:
            text.detach()  # leave closing (or not, for stdin) to open_binary


def _rows(path: Path, reader: Reader) -> Iterator[Row | BadRow]:
    header = _header(path, reader)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield BadRow(start, f"line {start}: bad CSV ({e})")
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            yield BadRow(start, f"line {start}: expected {len(header)} fields, got {len(fields)}")
            continue
        yield Row(start, dict(zip(header, fields, strict=True)))


def _limited(item: Row | BadRow, limit: int | None) -> Row | BadRow:
    if limit is None or isinstance(item, BadRow):
        return item
    size = sum(len(v.encode("utf-8")) for v in item.data.values())
    return too_big(item.line, size, limit) if size > limit else item


def _header(path: Path, reader: Reader) -> list[str]:
    try:
        header = next((row for row in reader if row), None)
    except csv.Error as e:
        raise ReaderError(f"{path}: bad CSV header ({e})") from e
    if header is None:
        raise ReaderError(f"{path}: no header row (the file is empty)")
    names = [name.strip() for name in header]
    for column, name in enumerate(names, start=1):
        if not name:
            raise ReaderError(f"{path}: header column {column} has no name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReaderError(f"{path}: duplicate column names in header: {', '.join(duplicates)}")
    return names

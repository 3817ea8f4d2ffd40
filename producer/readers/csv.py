"""CSV and TSV with a header row; each row becomes a dict of strings keyed by the header.

Lines are decoded one at a time and handed to the csv module with their endings, so
``\\r\\n`` files, a byte-order mark and quoted fields spanning lines all read right and
every row knows the physical line it starts on. A row one of whose lines is not UTF-8
(or too long) is a :class:`BadRow`; the rows after it read as usual.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from producer.readers import codes
from producer.readers.base import (
    BadRow,
    Line,
    ReaderError,
    Row,
    decode,
    open_binary,
    raw_text,
    read_lines,
)
from producer.readers.jsonl import too_big
from workers.store.bad_lines import BLANK_LINE

if TYPE_CHECKING:
    import io
    from _csv import Reader

MAX_FIELD_CHARS = 64 * 1024 * 1024
"""Largest field accepted; the csv module's default (128 KiB) is too small for documents."""

_RAW_KEPT_CHARS = 4096


class _Lines:
    """Feeds decoded lines to ``csv.reader`` and remembers, for the row being read, its
    text and the first problem of its lines (not UTF-8, too long)."""

    def __init__(self, stream: io.BufferedIOBase, limit: int | None) -> None:
        self._lines = read_lines(stream, limit)
        self._limit = limit
        self.problem: BadRow | None = None
        self._raw: list[str] = []
        self._raw_chars = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            text = self._text(line)
            if self._raw_chars < _RAW_KEPT_CHARS:
                self._raw.append(text)
                self._raw_chars += len(text) + 1
            yield text + line.ending.decode("ascii")

    def _text(self, line: Line) -> str:
        if self._limit is not None and line.size > self._limit:
            self._note(too_big(line.number, line.size, self._limit))
            return raw_text(line)
        text = decode(line)
        if isinstance(text, BadRow):
            self._note(text)
            return raw_text(line)
        return text

    def _note(self, bad: BadRow) -> None:
        if self.problem is None:
            self.problem = bad

    def take(self) -> tuple[str, BadRow | None]:
        """The text and the first problem of the lines read since the last call."""
        raw, problem = "\n".join(self._raw), self.problem
        self._raw, self._raw_chars, self.problem = [], 0, None
        return raw, problem


def read_csv(
    path: Path, *, delimiter: str = ",", max_record_bytes: int | None = None
) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per data row and a :class:`BadRow` per other row, in order.

    The first non-blank row is the header. ``Row.line`` is the physical line where the row
    starts. Blank lines are skipped (a BadRow coded ``blank_line``); a row with the wrong
    number of fields, lines that are not UTF-8 or more than ``max_record_bytes`` of text is
    a BadRow. TSV uses the same quoting rules as CSV.
    Raises :class:`ReaderError` for a file without a header, a bad header or corrupt gzip.
    """
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    with open_binary(path) as raw:
        lines = _Lines(raw, max_record_bytes)
        reader = csv.reader(lines, delimiter=delimiter)
        yield from _rows(path, reader, lines, max_record_bytes)


def read_tsv(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """:func:`read_csv` with a tab delimiter."""
    return read_csv(path, delimiter="\t", max_record_bytes=max_record_bytes)


def _rows(path: Path, reader: Reader, lines: _Lines, limit: int | None) -> Iterator[Row | BadRow]:
    header, blanks = _header(path, reader, lines)
    yield from blanks
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raw, _ = lines.take()
            yield BadRow(start, codes.INVALID_CSV, f"bad CSV ({e})", raw=raw)
            continue
        yield _row(start, header, fields, lines, limit)


def _row(
    start: int, header: list[str], fields: list[str], lines: _Lines, limit: int | None
) -> Row | BadRow:
    raw, problem = lines.take()
    if problem is not None:
        return BadRow(start, problem.code, problem.message, raw=raw)
    if _blank(fields):
        return BadRow(start, BLANK_LINE, "blank line (skipped)", raw=raw)
    if len(fields) != len(header):
        message = f"expected {len(header)} fields, got {len(fields)}"
        return BadRow(start, codes.FIELD_COUNT, message, raw=raw)
    if limit is not None:
        size = sum(len(v.encode("utf-8")) for v in fields)
        if size > limit:
            return too_big(start, size, limit, raw)
    return Row(start, dict(zip(header, fields, strict=True)))


def _blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _header(path: Path, reader: Reader, lines: _Lines) -> tuple[list[str], list[BadRow]]:
    blanks: list[BadRow] = []
    while True:
        start = reader.line_num + 1
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise ReaderError(f"{path}: bad CSV header ({e})") from e
        raw, problem = lines.take()
        if problem is not None:
            raise ReaderError(f"{path}: header (line {start}): {problem.message}")
        if header is None:
            raise ReaderError(f"{path}: no header row (the file is empty)")
        if not _blank(header):
            break
        blanks.append(BadRow(start, BLANK_LINE, "blank line (skipped)", raw=raw))
    names = [name.strip() for name in header]
    for column, name in enumerate(names, start=1):
        if not name:
            raise ReaderError(f"{path}: header column {column} has no name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReaderError(f"{path}: duplicate column names in header: {', '.join(duplicates)}")
    return names, blanks

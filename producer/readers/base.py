"""What every reader yields and raises, and how readers open files."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from producer.readers import codes
from workers.errors import ConfigError
from workers.store.bad_lines import SKIPPED_CODES

STDIN = "-"
"""The path that means standard input."""

# A record longer than this (bytes of its line) is refused as a bad line.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024

RAW_KEPT_BYTES = 4096
"""Bytes of an oversized line kept for its bad-line text (the rest is read and dropped)."""

_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One record; ``line`` is the 1-based line where it starts in the file."""

    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class BadRow:
    """A line that is not a record: why (``code``, :mod:`producer.readers.codes`, and a
    one-line ``message``), what it said (``raw``, maybe cut) and its ``custom_id`` when
    one could be read. A blank line is a BadRow whose code is ``blank_line``
    (:attr:`skipped`)."""

    line: int
    code: str
    message: str
    raw: str | None = None
    custom_id: str | None = None

    @property
    def error(self) -> str:
        """``line N: message``."""
        return f"line {self.line}: {self.message}"

    @property
    def skipped(self) -> bool:
        """A line that held nothing (blank), rather than a bad one."""
        return self.code in SKIPPED_CODES


@dataclass(frozen=True)
class Line:
    """One physical line, its ending (``\n`` or ``\r\n``) removed.

    ``data`` is the whole line unless it was longer than the reader's limit: then it is
    the first :data:`RAW_KEPT_BYTES` bytes and ``size`` says how long the line was.
    """

    number: int
    data: bytes
    size: int
    ending: bytes

    @property
    def cut(self) -> bool:
        return self.size > len(self.data)


class ReaderError(ConfigError):
    """The file as a whole cannot be read: missing, unknown format, corrupt, no header."""


def read_lines(stream: io.BufferedIOBase, limit: int | None = None) -> Iterator[Line]:
    """The stream's lines, numbered from 1, a UTF-8 byte-order mark dropped.

    A line longer than ``limit`` bytes is read to its end in chunks and kept cut
    (:class:`Line`), so one huge line never sits in memory.
    """
    number = 0
    while True:
        # limit + 2: a line of exactly ``limit`` bytes still fits with its "\r\n".
        chunk = stream.readline() if limit is None else stream.readline(limit + 2)
        if not chunk:
            return
        number += 1
        if number == 1 and chunk.startswith(codecs.BOM_UTF8):
            chunk = chunk[len(codecs.BOM_UTF8) :]
        if limit is not None and len(chunk) > limit and not chunk.endswith(b"\n"):
            size = len(chunk) + _drain_line(stream)
            yield Line(number, chunk[:RAW_KEPT_BYTES], size, b"\n")
            continue
        body = chunk.rstrip(b"\r\n")
        yield Line(number, body, len(body), chunk[len(body) :])


def _drain_line(stream: io.BufferedIOBase) -> int:
    """Read up to the end of the current line; returns how many bytes were dropped, its
    ending not counted."""
    dropped = 0
    while True:
        chunk = stream.readline(_READ_CHUNK)
        dropped += len(chunk.rstrip(b"\r\n"))
        if not chunk or chunk.endswith(b"\n"):
            return dropped


def decode(line: Line) -> str | BadRow:
    """The line as text, or the :class:`BadRow` of bytes that are not UTF-8."""
    try:
        return line.data.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(line.data[: e.start].decode("utf-8", "replace")) + 1
        return BadRow(
            line.number,
            codes.NOT_UTF8,
            f"not UTF-8 text ({e.reason} at column {column}, byte {e.start + 1})",
            raw=raw_text(line),
        )


def raw_text(line: Line) -> str:
    """The line's bytes as text for a bad-line record: bad bytes as ``\\xNN`` escapes."""
    return line.data.decode("utf-8", "backslashreplace")


@contextlib.contextmanager
def open_binary(path: Path) -> Iterator[io.BufferedIOBase]:
    """Open the file (standard input for ``-``, left open) for reading bytes.

    A ``.gz`` file is decompressed as it is read.
    Raises :class:`ReaderError` if it cannot be opened or its gzip data is corrupt.
    """
    if str(path) == STDIN:
        yield cast(io.BufferedIOBase, sys.stdin.buffer)
        return
    try:
        stream = _open(path)
    except OSError as e:
        raise ReaderError(f"{path}: cannot open: {e.strerror or e}") from e
    with stream:
        try:
            yield stream
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise ReaderError(f"{path}: corrupt gzip data: {e}") from e


def _open(path: Path) -> io.BufferedIOBase:
    # Closed by open_binary's with block.
    if path.suffix.lower() == ".gz":
        return gzip.GzipFile(path, "rb")
    return path.open("rb")

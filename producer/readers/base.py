"""What every reader yields and raises, and how readers open files."""

from __future__ import annotations

import contextlib
import gzip
import io
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from workers.errors import ConfigError

STDIN = "-"
"""The path that means standard input."""

# A record longer than this (bytes of its line) is refused as a bad line.
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Row:
    """One record; ``line`` is the 1-based line where it starts in the file."""

    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class BadRow:
    """A line that is not a record; ``error`` is one line starting with ``line N:``."""

    line: int
    error: str


class ReaderError(ConfigError):
    """The file as a whole cannot be read: missing, unknown format, not UTF-8, no header."""


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

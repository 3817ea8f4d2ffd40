"""Readers: stream records from input files with constant memory.

:func:`read_records` yields, in file order, a :class:`Row` for each record and a
:class:`BadRow` for each line that cannot be one (not UTF-8, malformed, oversized, hostile,
unsupported; blank lines too, as *skipped*), each with its line number and a reason code
(:mod:`producer.readers.codes`), so the caller can keep them and go on. Only whole-file
problems (missing file, unknown format, corrupt gzip, CSV without a usable header, a file
that is not Parquet) raise :class:`ReaderError`.

The formats are entries of :mod:`producer.readers.formats`: ``jsonl`` (``.jsonl``,
``.ndjson``, ``.jsonlines``), ``csv`` (``.csv``), ``tsv`` (``.tsv``, read as CSV with a tab
delimiter), any of them maybe gzipped (``.jsonl.gz``); ``openai``, JSONL whose lines are
OpenAI batch requests (:mod:`producer.readers.openai`), which :func:`sniff_format` picks for
a JSONL file whose first lines all look like them; and ``parquet`` (``.parquet``, ``.pq``;
rows numbered from 1, :mod:`producer.readers.parquet`). ``-`` reads standard input (JSONL
unless a format is given). Text files are UTF-8, with or without a byte-order mark, with
``\n`` or ``\r\n`` line endings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from producer.readers.base import STDIN, BadRow, ReaderError, Row
from producer.readers.formats import FORMATS, Format, detect_format, lookup, sniff_format
from producer.readers.keys import MissingKeyError, record_key

__all__ = [
    "FORMATS",
    "BadRow",
    "Format",
    "MissingKeyError",
    "ReaderError",
    "Row",
    "detect_format",
    "lookup",
    "read_records",
    "record_key",
    "sniff_format",
]


def read_records(
    path: Path, fmt: str | Format | None = None, *, max_record_bytes: int | None = None
) -> Iterator[Row | BadRow]:
    """Return an iterator over the records of ``path`` (``-`` for standard input).

    The file is checked at once; it is read lazily, one line, CSV row or batch of Parquet
    rows at a time, so a named pipe (``<(zcat big.jsonl.gz)``) works for text formats.
    Yields :class:`Row` for each record and :class:`BadRow` for each line that is not one
    (or is longer than ``max_record_bytes``), blank lines included (``BadRow.skipped``).
    Raises :class:`ReaderError` at once for an unknown format or a missing or unreadable
    file, and while iterating for corrupt data or a CSV file without a header.
    """
    kind = detect_format(path, fmt)
    if str(path) == STDIN:
        if kind.seekable:
            raise ReaderError(f"{kind.name} is not read from standard input: name a file")
    elif not path.exists():
        raise ReaderError(f"{path}: no such file")
    elif path.is_dir():
        raise ReaderError(f"{path}: is a directory")
    return kind.read(path, max_record_bytes=max_record_bytes)

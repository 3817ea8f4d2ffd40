"""Readers: stream records from JSONL and CSV/TSV files with constant memory.

:func:`read_records` yields, in file order, a :class:`Row` for each record and a
:class:`BadRow` for each line that cannot be one (not UTF-8, malformed, oversized, hostile,
unsupported; blank lines too, as *skipped*), each with its line number and a reason code
(:mod:`producer.readers.codes`), so the caller can keep them and go on. Only whole-file
problems (missing file, unknown format, corrupt gzip, CSV without a usable header) raise
:class:`ReaderError`.

Formats (:func:`detect_format`): ``jsonl`` (``.jsonl``, ``.ndjson``, ``.jsonlines``),
``csv`` (``.csv``) and ``tsv`` (``.tsv``, read as CSV with a tab delimiter); any of them may
be gzipped (``.jsonl.gz``). ``-`` reads standard input (JSONL unless a format is given).
``openai`` is JSONL whose lines are OpenAI batch requests (:mod:`producer.readers.openai`);
:func:`sniff_format` picks it for a JSONL file whose first lines all look like them.
Files are UTF-8, with or without a byte-order mark, with ``\n`` or ``\r\n`` line endings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from producer.readers import csv as csv_reader
from producer.readers import jsonl as jsonl_reader
from producer.readers import openai as openai_reader
from producer.readers.base import STDIN, BadRow, ReaderError, Row
from producer.readers.keys import MissingKeyError, record_key

__all__ = [
    "FORMATS",
    "BadRow",
    "MissingKeyError",
    "ReaderError",
    "Row",
    "detect_format",
    "read_records",
    "record_key",
    "sniff_format",
]

FORMATS = ("jsonl", "csv", "tsv", "openai")
"""The formats :func:`detect_format` returns."""

_ALIASES = {
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "jsonlines": "jsonl",
    "json-lines": "jsonl",
    "csv": "csv",
    "tsv": "tsv",
    "openai": "openai",
    "openai-batch": "openai",
}
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonlines": "jsonl", ".csv": "csv"}
_SUFFIXES[".tsv"] = "tsv"


def detect_format(path: Path, fmt: str | None = None) -> str:
    """Return the file's format, ``'jsonl'``, ``'csv'`` or ``'tsv'``.

    ``fmt`` (e.g. from ``--format``) wins over the suffix; ``.gz`` is looked through.
    Raises :class:`ReaderError` for an unknown ``fmt`` or a suffix that names no format.
    """
    if fmt is not None:
        known = _ALIASES.get(fmt.strip().lower())
        if known is None:
            raise ReaderError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")
        return known
    if str(path) == STDIN:
        return "jsonl"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    known = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if known is None:
        raise ReaderError(
            f"{path}: cannot tell the format from the name; "
            f"use .jsonl, .csv or .tsv, or pass --format ({', '.join(FORMATS)})"
        )
    return known


def sniff_format(path: Path, fmt: str | None = None) -> str:
    """:func:`detect_format`, except that a JSONL file (no ``fmt`` given) whose first
    lines are all OpenAI batch lines is ``'openai'``."""
    kind = detect_format(path, fmt)
    if fmt is None and kind == "jsonl" and openai_reader.looks_like_batch_file(path):
        return "openai"
    return kind


def read_records(
    path: Path, fmt: str | None = None, *, max_record_bytes: int | None = None
) -> Iterator[Row | BadRow]:
    """Return an iterator over the records of ``path`` (``-`` for standard input).

    The file is checked at once; it is read lazily, one line or CSV row at a time, so a
    named pipe (``<(zcat big.jsonl.gz)``) works too.
    Yields :class:`Row` for each record and :class:`BadRow` for each line that is not one
    (or is longer than ``max_record_bytes``), blank lines included (``BadRow.skipped``).
    Raises :class:`ReaderError` at once for an unknown format or a missing or unreadable
    file, and while iterating for corrupt gzip data or a CSV file without a header.
    """
    kind = detect_format(path, fmt)
    if str(path) != STDIN:
        if not path.exists():
            raise ReaderError(f"{path}: no such file")
        if path.is_dir():
            raise ReaderError(f"{path}: is a directory")
    limit = max_record_bytes
    if kind == "jsonl":
        return jsonl_reader.read_jsonl(path, max_record_bytes=limit)
    if kind == "openai":
        return openai_reader.read_openai(path, max_record_bytes=limit)
    delimiter = "\t" if kind == "tsv" else ","
    return csv_reader.read_csv(path, delimiter=delimiter, max_record_bytes=limit)

"""The input formats: one :class:`Format` entry each, and how a file's format is told.

Everything that differs between formats is in its entry: the names ``--format`` takes, the
suffixes that name it, its reader, the key field and spec a batch of it gets by default,
whether its lines are OpenAI batch requests, whether it needs a seekable file (standard
input is copied to a temporary file first) and how it is sniffed inside a file whose suffix
names another format. A new format is a reader module and one :func:`register` call below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from producer.readers import csv as csv_reader
from producer.readers import jsonl as jsonl_reader
from producer.readers import openai as openai_reader
from producer.readers import parquet as parquet_reader
from producer.readers.base import STDIN, BadRow, ReaderError, Row
from producer.readers.keys import CUSTOM_ID_FIELD
from workers.spec import OPENAI_SPEC_NAME

DEFAULT_SPEC = "judge"
"""The spec of a batch whose format names none of its own."""

GZIP_SUFFIX = ".gz"


class Reader(Protocol):
    def __call__(
        self, path: Path, *, max_record_bytes: int | None = None
    ) -> Iterator[Row | BadRow]: ...


@dataclass(frozen=True)
class Format:
    """One input format.

    ``key_field``: the field that keys records when ``--key`` names none (None: a record's
    ``custom_id``, else a hash of its content). ``requests``: lines are OpenAI batch
    requests, always keyed by ``custom_id``, run as they are by the ``openai`` spec, their
    ``body.model`` mapped onto the fleet's. ``seekable``: the reader needs a real file it can
    seek in (no gzip; standard input is spooled). ``refines`` and ``sniff``: a file named
    like format ``refines`` is of this format when ``sniff(path)`` says so.
    """

    name: str
    read: Reader
    suffixes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    key_field: str | None = None
    spec: str = DEFAULT_SPEC
    requests: bool = False
    seekable: bool = False
    refines: str | None = None
    sniff: Callable[[Path], bool] | None = None

    def key_for(self, asked: str | None) -> str | None:
        """The key field of a batch of this format when ``--key`` says ``asked``."""
        if self.requests:
            return self.key_field
        return asked if asked is not None else self.key_field


FORMATS: dict[str, Format] = {}
"""Every format by name, in the order they were registered."""

_NAMES: dict[str, Format] = {}
_SUFFIXES: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the registry; returns it. Raises ``ValueError`` for a name or suffix
    another format has."""
    for name in (fmt.name, *fmt.aliases):
        if name in _NAMES:
            raise ValueError(f"format name {name!r} is taken by {_NAMES[name].name!r}")
    for suffix in fmt.suffixes:
        if suffix in _SUFFIXES:
            raise ValueError(f"suffix {suffix!r} is taken by {_SUFFIXES[suffix].name!r}")
    FORMATS[fmt.name] = fmt
    _NAMES.update(dict.fromkeys((fmt.name, *fmt.aliases), fmt))
    _SUFFIXES.update(dict.fromkeys(fmt.suffixes, fmt))
    return fmt


JSONL = register(
    Format(
        "jsonl",
        jsonl_reader.read_jsonl,
        suffixes=(".jsonl", ".ndjson", ".jsonlines"),
        aliases=("ndjson", "jsonlines", "json-lines"),
    )
)
CSV = register(Format("csv", csv_reader.read_csv, suffixes=(".csv",)))
TSV = register(Format("tsv", csv_reader.read_tsv, suffixes=(".tsv",)))
OPENAI = register(
    Format(
        "openai",
        openai_reader.read_openai,
        aliases=("openai-batch",),
        key_field=CUSTOM_ID_FIELD,
        spec=OPENAI_SPEC_NAME,
        requests=True,
        refines="jsonl",
        sniff=openai_reader.looks_like_batch_file,
    )
)
PARQUET = register(
    Format(
        "parquet",
        parquet_reader.read_parquet,
        suffixes=(".parquet", ".pq"),
        aliases=("pq",),
        seekable=True,
    )
)

STDIN_FORMAT = JSONL
"""What standard input is read as unless ``--format`` says otherwise."""


def lookup(name: str) -> Format:
    """The format ``--format NAME`` means (names and aliases, any case).

    Raises :class:`ReaderError` naming the known formats.
    """
    known = _NAMES.get(name.strip().lower())
    if known is None:
        raise ReaderError(f"unknown format {name!r} (use one of: {', '.join(FORMATS)})")
    return known


def detect_format(path: Path, fmt: str | Format | None = None) -> Format:
    """The file's format: ``fmt`` (e.g. from ``--format``) if given, else its suffix
    (``.gz`` looked through for formats that are not seekable).

    Raises :class:`ReaderError` for an unknown ``fmt``, a suffix that names no format and a
    gzipped seekable format.
    """
    if isinstance(fmt, Format):
        return fmt
    if fmt is not None:
        return lookup(fmt)
    if str(path) == STDIN:
        return STDIN_FORMAT
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == GZIP_SUFFIX
    if gzipped:
        suffixes.pop()
    known = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if known is None:
        named = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
        raise ReaderError(
            f"{path}: cannot tell the format from the name; "
            f"use {named}, or pass --format ({', '.join(FORMATS)})"
        )
    if gzipped and known.seekable:
        raise ReaderError(f"{path}: {known.name} files are compressed inside; gunzip it first")
    return known


def sniff_format(path: Path, fmt: str | Format | None = None) -> Format:
    """:func:`detect_format`, except that, with no ``fmt`` given, a file whose contents a
    refining format recognises (an OpenAI batch file among JSONL files) is of that one."""
    kind = detect_format(path, fmt)
    if fmt is not None:
        return kind
    for other in FORMATS.values():
        if other.refines == kind.name and other.sniff is not None and other.sniff(path):
            return other
    return kind

"""What an enqueue reads: a file of a registered format, or records already in memory
(dicts, a pandas DataFrame, a ``datasets.Dataset``), as one :class:`Source`.

Every source yields the same rows (:class:`~producer.readers.base.Row` and
:class:`~producer.readers.base.BadRow`, numbered from 1 in input order) and has a
:class:`~producer.readers.formats.Format` whose defaults (key field, spec) the batch
takes: files their own; dicts those of JSONL (they are what a JSONL line holds), unless
``fmt="openai"`` says they are OpenAI batch requests; DataFrames and datasets those of
Parquet (they are Arrow tables). Enqueue reads some sources twice (``--strict``, the first
request's model); :func:`rereadable` copies standard input and one-shot iterators first.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from producer import extras
from producer.readers import formats, openai
from producer.readers.arrow import check_names, read_batches
from producer.readers.base import STDIN, BadRow, Row
from producer.readers.formats import Format
from producer.readers.objects import read_objects
from workers.errors import ConfigError
from workers.store.limits import SOURCE_CHARS, check_text

Rows = Callable[[int | None], Iterator[Row | BadRow]]
"""``rows(max_record_bytes)``: the source's rows from the start."""

ARROW_BATCH_ROWS = 4096
"""Rows of a DataFrame or dataset converted at a time."""


@dataclass(frozen=True)
class Source:
    """Rows to enqueue. ``name`` is what the batch and its bad lines record as their source
    (a file's absolute path, ``-``, ``<DataFrame>``); ``label`` is how messages name it (a
    path as given); ``stem`` names a batch by default (None: the caller must name it)."""

    name: str
    label: str
    fmt: Format
    rows: Rows
    stem: str | None = None
    once: bool = False
    """The rows can be read only once (standard input, a generator)."""
    stdin: bool = False


def file_source(path: Path, fmt: str | Format | None = None) -> Source:
    """The file at ``path`` (``-``: standard input) in format ``fmt`` (default: told from
    its suffix and contents, :func:`~producer.readers.formats.sniff_format`).

    Raises :class:`ConfigError` for a missing file and
    :class:`~producer.readers.base.ReaderError` for a format it cannot tell.
    """
    stdin = str(path) == STDIN
    if not stdin and not path.exists():
        raise ConfigError(f"{path}: no such file")
    kind = formats.sniff_format(path, fmt)
    name = STDIN if stdin else check_text("input path", str(path.resolve()), SOURCE_CHARS)
    return Source(
        name=name,
        label=str(path),
        fmt=kind,
        rows=_file_rows(path, kind),
        stem=path.stem,
        once=stdin,
        stdin=stdin,
    )


def _file_rows(path: Path, kind: Format) -> Rows:
    from producer.readers import read_records

    return lambda limit: read_records(path, kind, max_record_bytes=limit)


def records_source(
    records: Iterable[Mapping[str, Any]], fmt: str | Format | None = None, *, name: str = ""
) -> Source:
    """Dicts, in order (a list, or any iterable: a generator is read once, spooled when it
    must be read twice). ``fmt`` ``openai``: each dict is an OpenAI batch request."""
    kind = formats.lookup(fmt) if isinstance(fmt, str) else (fmt or formats.JSONL)
    check = openai.check_batch_line if kind.requests else None

    def rows(limit: int | None) -> Iterator[Row | BadRow]:
        for item in read_objects(records, max_record_bytes=limit):
            yield check(item) if check is not None and isinstance(item, Row) else item

    once = not isinstance(records, Sequence)
    return Source(name or "<records>", name or "records", kind, rows, once=once)


def frame_source(frame: Any, *, name: str = "<DataFrame>") -> Source:
    """The rows of a pandas DataFrame (its index left out), converted a few thousand at a
    time through Arrow; a slice whose columns Arrow cannot type (ints and strings mixed in
    one column) is converted value by value instead. Raises
    :class:`~producer.errors.MissingExtraError` without pyarrow."""
    pa = extras.require("pyarrow", extra=extras.PANDAS, what="enqueueing a DataFrame")
    untyped = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)

    def rows(limit: int | None) -> Iterator[Row | BadRow]:
        for start in range(0, len(frame), ARROW_BATCH_ROWS):
            chunk = frame.iloc[start : start + ARROW_BATCH_ROWS]
            try:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
            except untyped:
                records = chunk.to_dict("records")
                yield from read_objects(records, max_record_bytes=limit, first=start + 1)
                continue
            yield from read_batches(table.to_batches(), max_record_bytes=limit, first=start + 1)

    check_names([str(c) for c in frame.columns], name)
    return Source(name, "DataFrame", formats.PARQUET, rows)


def dataset_source(dataset: Any, *, name: str = "<Dataset>") -> Source:
    """The rows of a Hugging Face ``datasets.Dataset`` (selections and shuffles honoured),
    read as Arrow tables a few thousand rows at a time."""

    def rows(limit: int | None) -> Iterator[Row | BadRow]:
        tables = dataset.with_format("arrow").iter(batch_size=ARROW_BATCH_ROWS)
        batches = (b for t in tables for b in t.to_batches())
        return read_batches(batches, max_record_bytes=limit)

    check_names([str(c) for c in dataset.column_names], name)
    return Source(name, "Dataset", formats.PARQUET, rows)


def source_of(records: object, fmt: str | Format | None = None) -> Source:
    """The :class:`Source` for what the Python API was given: a path (``str`` or ``Path``),
    a pandas DataFrame, a ``datasets.Dataset``, or an iterable of dicts.

    Raises :class:`ConfigError` for anything else.
    """
    if isinstance(records, str | Path):
        return file_source(Path(records), fmt)
    module = type(records).__module__.partition(".")[0]
    if module == "pandas" and hasattr(records, "columns") and hasattr(records, "iloc"):
        return frame_source(records)
    if module == "datasets" and hasattr(records, "with_format"):
        return dataset_source(records)
    if isinstance(records, Mapping) or not isinstance(records, Iterable):
        raise ConfigError(
            f"records must be a path, a DataFrame, a datasets.Dataset or an iterable of "
            f"dicts, not a {type(records).__name__}"
        )
    return records_source(records, fmt)


@contextlib.contextmanager
def rereadable(source: Source) -> Iterator[Source]:
    """``source``, or a copy that can be read more than once: standard input spooled to a
    temporary file, a one-shot iterator's rows kept in memory."""
    if not source.once:
        yield source
        return
    if source.stdin:
        with tempfile.TemporaryDirectory(prefix="vfleet-stdin-") as tmp:
            path = Path(tmp) / "stdin"
            with path.open("wb") as fh:
                shutil.copyfileobj(sys.stdin.buffer, fh)
            yield replace(source, rows=_file_rows(path, source.fmt), once=False, stdin=False)
        return
    kept: dict[int | None, list[Row | BadRow]] = {}

    def rows(limit: int | None) -> Iterator[Row | BadRow]:
        if limit not in kept:
            kept[limit] = list(source.rows(limit))
        return iter(kept[limit])

    yield replace(source, rows=rows, once=False)

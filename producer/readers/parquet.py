"""Parquet files: each row a record, read a batch of rows at a time within each row group.

Needs pyarrow (``pip install 'vfleet[parquet]'``). Memory holds one batch of
:data:`BATCH_ROWS` decoded rows and a :data:`READ_BUFFER` of each column, whatever the
length of the file or of its row groups. Rows are numbered from 1 in file order, and a row
that cannot be a record is a :class:`BadRow` by that number (:mod:`producer.readers.arrow`).
A file that is not Parquet, or whose data is corrupt, is a :class:`ReaderError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from producer import extras
from producer.readers.arrow import check_names, read_batches
from producer.readers.base import BadRow, ReaderError, Row

BATCH_ROWS = 4096
"""Rows decoded at a time."""

READ_BUFFER = 1024 * 1024
"""Bytes of a column chunk read at a time: a row group's pages are never all in memory."""


def read_parquet(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """Return an iterator over the rows of the Parquet file as :class:`Row` (or
    :class:`BadRow`), in order.

    Raises :class:`~producer.errors.MissingExtraError` without pyarrow and
    :class:`ReaderError` for a file that is not Parquet, at once; :class:`ReaderError` while
    iterating for corrupt data.
    """
    pq = extras.require("pyarrow.parquet", extra=extras.PARQUET, what="reading Parquet")
    pa = extras.require("pyarrow", extra=extras.PARQUET, what="reading Parquet")
    try:
        file = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        raise ReaderError(f"{path}: not a readable Parquet file ({_first_line(e)})") from e
    try:
        check_names([str(n) for n in file.schema_arrow.names], str(path))
    except ReaderError:
        file.close()
        raise
    return _rows(file, path, max_record_bytes)


def _rows(file: Any, path: Path, limit: int | None) -> Iterator[Row | BadRow]:
    with file:
        yield from read_batches(_batches(file, path), max_record_bytes=limit)


def _batches(file: Any, path: Path) -> Iterator[Any]:
    import pyarrow as pa

    batches = file.iter_batches(batch_size=BATCH_ROWS, use_threads=False)
    pool = pa.default_memory_pool()
    while True:
        pool.release_unused()  # Arrow's pool keeps what it freed unless asked
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:  # corrupt pages surface while reading
            raise ReaderError(f"{path}: corrupt Parquet data ({_first_line(e)})") from e
        yield batch


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]

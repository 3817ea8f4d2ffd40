"""Rows of Arrow record batches (a Parquet file's row groups, a DataFrame, a ``datasets``
table) as records, one batch at a time: memory holds one batch, never the whole table.

Columns are converted a column at a time: strings, integers, booleans and nulls are JSON
as they are, floats only lose NaN (null), and the rest (timestamps, decimals, binary,
nested lists and structs) go through :func:`~producer.readers.objects.jsonable` value by
value. A row whose values cannot be JSON is a :class:`BadRow` numbered by its position
(the first row is 1), like a bad line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from producer.readers.base import BadRow, ReaderError, Row
from producer.readers.objects import Unfit, finish_row, jsonable, raw_of

if TYPE_CHECKING:
    import pyarrow as pa

_Values = list[Any]


class _BadValue:
    """Stands for a value that has no JSON form, in a converted column."""

    __slots__ = ("error",)

    def __init__(self, error: Unfit) -> None:
        self.error = error


def check_names(names: list[str], where: str) -> None:
    """Raise :class:`ReaderError` for columns that cannot be record fields (repeated)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ReaderError(f"{where}: duplicate column names: {', '.join(map(str, repeated))}")


def read_batches(
    batches: Iterable[pa.RecordBatch], *, max_record_bytes: int | None = None, first: int = 1
) -> Iterator[Row | BadRow]:
    """A :class:`Row` per row of ``batches`` (or a :class:`BadRow`), numbered from ``first``."""
    n = first
    for batch in batches:
        names = [str(name) for name in batch.schema.names]
        columns = [_convert(batch.column(i)) for i in range(batch.num_columns)]
        for values in zip(*columns, strict=True) if columns else [()] * batch.num_rows:
            yield _row(n, names, values, max_record_bytes)
            n += 1


def _row(n: int, names: list[str], values: tuple[Any, ...], limit: int | None) -> Row | BadRow:
    data = dict(zip(names, values, strict=True))
    for name, value in data.items():
        if isinstance(value, _BadValue):
            shown = {k: (None if isinstance(v, _BadValue) else v) for k, v in data.items()}
            message = f"field {name!r}: {value.error}"
            return BadRow(n, value.error.code, message, raw=raw_of(shown))
    return finish_row(n, data, limit)


def _convert(column: pa.Array) -> _Values:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    values: _Values = column.to_pylist()
    if _plain(kind):
        return values
    if pa.types.is_floating(kind):
        return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return [_safe(jsonable, v) for v in values]


def _plain(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_integer(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _safe(convert: Callable[[Any], Any], value: Any) -> Any:
    try:
        return convert(value)
    except Unfit as e:
        return _BadValue(e)

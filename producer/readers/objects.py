"""Records that are Python objects (dicts handed to the Python API, rows of Arrow tables from
Parquet files, DataFrames and datasets) made into JSON records, as a JSONL line would be.

The ledger stores JSON, so every value becomes one: dates and times their ISO text,
durations seconds, decimals their exact text, bytes UTF-8 text, NumPy scalars and arrays
their Python values, NaN (and pandas' NA and NaT) null, as pandas means them: missing.
A record that cannot be JSON (an infinite number, bytes that are not UTF-8, an object of
another kind, nesting deeper than :data:`~producer.readers.jsonl.MAX_DEPTH`, a lone
surrogate in a string) or whose JSON is longer than the size limit is a :class:`BadRow`
numbered by its position (the first record is 1), like a bad line.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from producer.readers import codes
from producer.readers.base import RAW_KEPT_BYTES, BadRow, Row
from producer.readers.jsonl import MAX_DEPTH, too_big, too_deep, unicode_problem

_MISSING_TYPES = ("NAType", "NaTType")  # pandas.NA, pandas.NaT: missing, like NaN


class Unfit(ValueError):
    """A value that has no JSON form; ``code`` is the bad row's reason code."""

    def __init__(self, message: str, code: str = codes.INVALID_VALUE) -> None:
        super().__init__(message)
        self.code = code


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON values (see the module docstring). Raises :class:`Unfit`."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if depth >= MAX_DEPTH:
        raise Unfit(f"nested more than {MAX_DEPTH} levels deep", codes.TOO_DEEP)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    return _scalar(value, depth)


def _scalar(value: Any, depth: int) -> Any:
    if type(value).__name__ in _MISSING_TYPES:
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return None if value.is_nan() else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            message = f"bytes that are not UTF-8 text (at byte {e.start + 1})"
            raise Unfit(message, codes.NOT_UTF8) from e
    tolist = getattr(value, "tolist", None)  # NumPy scalars and arrays
    if callable(tolist):
        return jsonable(tolist(), depth)
    raise Unfit(f"a value of type {type(value).__name__} has no JSON form")


def finish_row(n: int, data: dict[str, Any], max_record_bytes: int | None) -> Row | BadRow:
    """Record number ``n`` as a :class:`Row`, or the :class:`BadRow` saying why it cannot be
    stored (a number that is not finite, a lone surrogate, over the size limit)."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except ValueError:
        where = next((f"field {k!r}: " for k, v in data.items() if _infinite(v)), "")
        message = f"{where}a number that is not finite"
        return BadRow(n, codes.INVALID_VALUE, message, raw=raw_of(data))
    except UnicodeEncodeError:
        problem = unicode_problem(data) or "text that is not Unicode"
        return BadRow(n, codes.INVALID_TEXT, problem, raw=raw_of(data))
    if max_record_bytes is not None and size > max_record_bytes:
        return too_big(n, size, max_record_bytes, text[:RAW_KEPT_BYTES])
    return Row(n, data)


def _infinite(value: Any) -> bool:
    return isinstance(value, float) and math.isinf(value)


def read_objects(
    records: Iterable[object], *, max_record_bytes: int | None = None, first: int = 1
) -> Iterator[Row | BadRow]:
    """A :class:`Row` per mapping of ``records`` and a :class:`BadRow` per other item, in
    order, numbered from ``first``."""
    for n, item in enumerate(records, start=first):
        if not isinstance(item, Mapping):
            kind = type(item).__name__
            yield BadRow(n, codes.NOT_AN_OBJECT, f"not a dict but a {kind}", raw=_cut(repr(item)))
            continue
        try:
            data = {str(k): _field(str(k), v) for k, v in item.items()}
        except Unfit as e:
            yield _unfit(n, e, item)
            continue
        except RecursionError:
            yield too_deep(n, _cut(repr(item)))
            continue
        yield finish_row(n, data, max_record_bytes)


def _field(name: str, value: Any) -> Any:
    try:
        return jsonable(value, 1)
    except Unfit as e:
        raise Unfit(f"field {name!r}: {e}", e.code) from e


def _unfit(n: int, error: Unfit, item: object) -> BadRow:
    return BadRow(n, error.code, str(error), raw=raw_of(item))


def raw_of(item: object) -> str:
    """What a bad row said, as text for its bad-line record (cut)."""
    try:
        text = json.dumps(item, ensure_ascii=False, default=repr, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        text = repr(item)
    return _cut(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _cut(text: str) -> str:
    return text[:RAW_KEPT_BYTES]

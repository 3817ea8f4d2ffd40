"""A batch's records as Arrow tables: Parquet files (``vfleet export B -o out.parquet``) and
DataFrames (:meth:`producer.api.BatchHandle.to_pandas`), streamed in input order a row
group at a time, so memory stays flat whatever the batch's size.

Columns: the metadata of ``vfleet export`` (key, status, attempts, instance, worker, error
kind and message, finish reason, tokens, latency, finished_at as a UTC timestamp), ``input``
and ``output`` as JSON text, ``output_text``, and one typed column per property of the
spec's JSON schema (``output.score`` int64, ``output.confidence`` float64, ``output.label``
string, ``output.consistent`` bool; objects and arrays as JSON text). A batch asked with
several votes keeps the mean score, so its integers are float64. A value that does not fit
its column's type is null there (``output`` keeps it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from producer import extras
from producer.records import META_FIELDS, record_dict
from workers.store.models import Record
from workers.store.queries import aware
from workers.store.values import BatchInfo

DEFAULT_ROW_GROUP = 10_000
"""Records per row group (and per Arrow batch): what memory holds at a time."""

OUTPUT_PREFIX = "output."

_INT_FIELDS = ("attempts", "prompt_tokens", "completion_tokens")
_FLOAT_FIELDS = ("latency_ms",)
_TIME_FIELDS = ("finished_at",)
_JSON_TYPES = ("integer", "number", "boolean", "string")

Coerce = Callable[[Any], Any]


def _pa() -> Any:
    return extras.require("pyarrow", extra=extras.PARQUET, what="Parquet and DataFrame output")


def output_types(batch: BatchInfo) -> dict[str, str]:
    """The JSON type of each parsed output field the spec's schema names (``json`` for
    objects, arrays and fields it does not type)."""
    schema = batch.spec.get("json_schema") or {}
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        return {}
    votes = int(batch.spec.get("votes") or 1)
    out = {}
    for name, prop in props.items():
        kind = _json_type(prop)
        out[str(name)] = "number" if kind == "integer" and votes > 1 else kind
    return out


def _json_type(prop: object) -> str:
    kind = prop.get("type") if isinstance(prop, dict) else None
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    return kind if kind in _JSON_TYPES else "json"


def schema(batch: BatchInfo) -> Any:
    """The Arrow schema of the batch's export."""
    pa = _pa()
    types = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    fields = []
    for name in META_FIELDS:
        if name in _INT_FIELDS:
            fields.append(pa.field(name, pa.int64()))
        elif name in _FLOAT_FIELDS:
            fields.append(pa.field(name, pa.float64()))
        elif name in _TIME_FIELDS:
            fields.append(pa.field(name, pa.timestamp("us", tz="UTC")))
        else:
            fields.append(pa.field(name, pa.string()))
    fields += [pa.field(n, pa.string()) for n in ("input", "output_text", "output")]
    for name, kind in output_types(batch).items():
        fields.append(pa.field(OUTPUT_PREFIX + name, types.get(kind, pa.string())))
    return pa.schema(fields)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    return int(v) if isinstance(v, float) and v.is_integer() else None


def _as_float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _as_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


_COERCE: dict[str, Coerce] = {
    "integer": _as_int,
    "number": _as_float,
    "boolean": _as_bool,
    "string": _as_text,
    "json": _as_text,
}


def _columns(records: list[Record], batch: BatchInfo) -> dict[str, list[Any]]:
    dicts = [record_dict(r) for r in records]
    cols: dict[str, list[Any]] = {m: [d[m] for d in dicts] for m in META_FIELDS}
    cols["finished_at"] = [aware(r.finished_at) for r in records]
    cols["input"] = [_as_text(r.input) for r in records]
    cols["output_text"] = [r.output_text for r in records]
    cols["output"] = [_as_text(r.output) for r in records]
    for name, kind in output_types(batch).items():
        coerce = _COERCE[kind]
        cols[OUTPUT_PREFIX + name] = [coerce((r.output or {}).get(name)) for r in records]
    return cols


def record_batches(
    records: Iterable[Record], batch: BatchInfo, *, rows: int = DEFAULT_ROW_GROUP
) -> Iterator[Any]:
    """The records as Arrow record batches of at most ``rows`` rows (:func:`schema`)."""
    pa = _pa()
    shape = schema(batch)
    chunk: list[Record] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= rows:
            yield pa.RecordBatch.from_pydict(_columns(chunk, batch), schema=shape)
            chunk = []
    if chunk:
        yield pa.RecordBatch.from_pydict(_columns(chunk, batch), schema=shape)


def write_parquet(
    records: Iterable[Record], batch: BatchInfo, path: Path, *, rows: int = DEFAULT_ROW_GROUP
) -> int:
    """Write the records to a Parquet file at ``path``, one row group per ``rows`` records,
    through a temporary file renamed into place; returns how many were written."""
    pq = extras.require("pyarrow.parquet", extra=extras.PARQUET, what="writing Parquet")
    tmp = path.with_name(f".{path.name}.part")
    n = 0
    try:
        with pq.ParquetWriter(tmp, schema(batch)) as writer:
            for chunk in record_batches(records, batch, rows=rows):
                writer.write_batch(chunk)
                n += chunk.num_rows
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return n

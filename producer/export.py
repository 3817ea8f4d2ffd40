"""Write a batch's records to JSONL, CSV, Parquet (:mod:`producer.export_parquet`) or OpenAI
batch output, streaming, in input order.

OpenAI batch output (``--format openai``, for batches enqueued from OpenAI batch files):
one line per finished record, ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``, ``request_id`` always a string (the response's id when
the server sent no ``x-request-id``); failed and cancelled records carry ``error: {"code",
"message"}`` and ``response: null``, and so does every input line that did not become a
record (``error.line`` says which, ``custom_id`` is null when the line had none). Errors go
to a separate errors file when one is given. Lines come in input order; records not
finished yet are left out.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from producer.records import META_FIELDS, record_dict
from workers.errors import ConfigError
from workers.store.bad_lines import iter_bad_lines
from workers.store.ledger import Ledger
from workers.store.models import FINAL_STATUSES, BadLine, Record, Status
from workers.store.queries import iter_records
from workers.store.values import BatchInfo

FORMATS = ("jsonl", "csv", "parquet", "openai")
_SUFFIX_FORMATS = {"ndjson": "jsonl", "pq": "parquet"}


def export_format(path: Path, fmt: str | None) -> str:
    """``fmt`` or the format the suffix names. Raises :class:`ConfigError`."""
    chosen = fmt or path.suffix.lstrip(".").lower()
    chosen = _SUFFIX_FORMATS.get(chosen, chosen)
    if chosen not in FORMATS:
        raise ConfigError(
            f"cannot export to {path.name!r}: use a .jsonl, .csv or .parquet file "
            "or --format jsonl|csv|parquet|openai"
        )
    return chosen


def _parsed_fields(batch: BatchInfo) -> list[str]:
    schema = batch.spec.get("json_schema") or {}
    props = schema.get("properties") or {}
    return list(props) if isinstance(props, dict) else []


def _write_jsonl(rows: Iterator[Record], fh: IO[str]) -> int:
    n = 0
    for r in rows:
        fh.write(json.dumps(record_dict(r), ensure_ascii=False) + "\n")
        n += 1
    return n


def _write_csv(rows: Iterator[Record], fh: IO[str], parsed: list[str]) -> int:
    writer = csv.writer(fh)
    writer.writerow([*META_FIELDS, "input", "output_text", *(f"output.{f}" for f in parsed)])
    n = 0
    for r in rows:
        d = record_dict(r)
        out = r.output or {}
        cells = [d[m] for m in META_FIELDS]
        cells += [json.dumps(r.input, ensure_ascii=False), r.output_text]
        cells += [
            json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
            for v in (out.get(f) for f in parsed)
        ]
        writer.writerow(cells)
        n += 1
    return n


def openai_line(r: Record) -> dict[str, Any]:
    """The record as an OpenAI batch output line (an error line unless it succeeded)."""
    line: dict[str, Any] = {"id": f"batch_req_{r.id}", "custom_id": r.key}
    if r.status == Status.SUCCEEDED and r.output is not None:
        body = r.output.get("body")
        request_id = r.output.get("request_id") or (body or {}).get("id") or line["id"]
        response = {
            "status_code": r.output.get("status_code"),
            "request_id": str(request_id),
            "body": body,
        }
        return {**line, "response": response, "error": None}
    code = "batch_cancelled" if r.status == Status.CANCELLED else r.error_kind or "failed"
    message = r.error or ("the batch was cancelled" if r.status == Status.CANCELLED else "")
    return {**line, "response": None, "error": {"code": code, "message": message}}


def bad_line_output(b: BadLine) -> dict[str, Any]:
    """An input line that is not a record, as an OpenAI batch error line."""
    return {
        "id": f"batch_req_line_{b.line}",
        "custom_id": b.custom_id,
        "response": None,
        "error": {"code": b.code, "message": b.message, "line": b.line},
    }


@dataclass
class OpenAIExport:
    succeeded: int = 0
    errors: int = 0
    pending: int = 0
    bad_lines: int = 0
    """Input lines that are not records (counted in ``errors`` too)."""


def _in_input_order(ledger: Ledger, batch: BatchInfo) -> Iterator[Record | BadLine]:
    Item = tuple[int, int, Record | BadLine]
    records: Iterator[Item] = ((r.seq, 1, r) for r in iter_records(ledger.engine, batch.id))
    bad: Iterator[Item] = ((b.line, 0, b) for b in iter_bad_lines(ledger.engine, batch.id))
    for _, _, item in heapq.merge(records, bad, key=lambda t: (t[0], t[1])):
        yield item


def export_openai(
    ledger: Ledger, batch: BatchInfo, path: Path, errors_path: Path | None = None
) -> OpenAIExport:
    """Write the batch as OpenAI batch output to ``path`` (errors, bad input lines
    included, to ``errors_path`` if given, else inline), in input order.
    Raises :class:`ConfigError` for a batch not from a batch file."""
    if batch.spec.get("mode") != "openai":
        raise ConfigError(
            f"batch {batch.name!r} did not come from an OpenAI batch file; "
            "export it as jsonl or csv"
        )
    counts = OpenAIExport()
    with _atomic(path) as out, _atomic(errors_path) as err:
        assert out is not None
        for item in _in_input_order(ledger, batch):
            if isinstance(item, BadLine):
                line = bad_line_output(item)
                counts.bad_lines += 1
            elif item.status not in FINAL_STATUSES:
                counts.pending += 1
                continue
            else:
                line = openai_line(item)
            ok = line["error"] is None
            counts.succeeded += ok
            counts.errors += not ok
            fh = out if ok or err is None else err
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return counts


@contextlib.contextmanager
def _atomic(path: Path | None) -> Iterator[IO[str] | None]:
    """A file written under a temporary name and renamed into place when all went well."""
    if path is None:
        yield None
        return
    tmp = path.with_name(f".{path.name}.part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def export_batch(ledger: Ledger, batch: BatchInfo, path: Path, fmt: str | None = None) -> int:
    """Write every record of ``batch`` to ``path``; returns how many were written.

    Writes to a temporary file renamed into place, so a failed export never leaves a
    half-written file under the requested name.
    """
    chosen = export_format(path, fmt)
    if chosen == "openai":
        c = export_openai(ledger, batch, path)
        return c.succeeded + c.errors
    rows = iter_records(ledger.engine, batch.id)
    if chosen == "parquet":
        from producer.export_parquet import write_parquet

        return write_parquet(rows, batch, path)
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        n = (
            _write_jsonl(rows, fh)
            if chosen == "jsonl"
            else _write_csv(rows, fh, _parsed_fields(batch))
        )
    tmp.replace(path)
    return n

"""Storing a file's records: new rows, reused results and duplicate keys, chunk by chunk.

:func:`store_rows` is what ``vfleet enqueue`` writes with. Per chunk of rows it

* looks up succeeded records with the same fingerprint (same input, spec, model and
  sampling parameters) and, when ``reuse`` is on, inserts those rows ``succeeded`` with the
  stored result copied and ``reused_from`` set, so the fleet never sees them;
* inserts the rest ``queued``, skipping keys the batch already has (first wins);
* reports each skipped row whose key the batch holds from another line (a duplicate key,
  within the file or from an earlier file) with both line numbers. A row skipped because a
  previous run of the same file stored it (same key, same line) is not a duplicate.

Memory stays flat: nothing is kept across chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from workers.store.ledger import Ledger
from workers.store.models import Record, Status, utcnow

IntakeRow = tuple[str, int, dict[str, Any], str | None]
"""``(key, seq, input, fingerprint)``; ``seq`` is the record's line in its file."""

OnDuplicate = Callable[[str, int, int, dict[str, Any]], None]
"""Called with ``(key, line, first_line, input)`` for a row skipped as a duplicate key."""

DEFAULT_INSERT_CHUNK = 2000
INTAKE_WAL_CHECKPOINT_PAGES = 10_000
_COPIED = ("output_text", "output", "prompt_tokens", "completion_tokens", "latency_ms")


@dataclass
class IntakeResult:
    """What was stored so far (kept up to date chunk by chunk, so a caller whose intake
    failed half-way can say what it stored)."""

    added: int = 0
    reused: int = 0
    duplicates: int = 0
    rows: int = 0
    """Rows handled (added, reused, already stored or duplicate)."""
    last_line: int = 0
    """The line of the last row handled."""


def store_rows(
    ledger: Ledger,
    batch_id: int,
    rows: Iterable[IntakeRow],
    *,
    reuse: bool = True,
    on_duplicate: OnDuplicate | None = None,
    chunk: int = DEFAULT_INSERT_CHUNK,
    result: IntakeResult | None = None,
) -> IntakeResult:
    """Insert ``rows`` into batch ``batch_id``; returns how many were added, reused and
    skipped as duplicates (in ``result``, if given, updated after every chunk). See the
    module docstring."""
    result = result if result is not None else IntakeResult()
    buf: list[IntakeRow] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= chunk:
            _store_chunk(ledger, batch_id, buf, reuse, on_duplicate, result)
            buf = []
    if buf:
        _store_chunk(ledger, batch_id, buf, reuse, on_duplicate, result)
    return result


def _store_chunk(
    ledger: Ledger,
    batch_id: int,
    rows: list[IntakeRow],
    reuse: bool,
    on_duplicate: OnDuplicate | None,
    result: IntakeResult,
) -> None:
    found = _succeeded_by_fingerprint(ledger, rows) if reuse else {}
    now = utcnow()
    # New rows carry only the columns they set (the rest default to NULL): every bound
    # JSON value costs a json.dumps per row, and intake is bound by such per-row costs.
    fresh = [_queued(batch_id, r, now) for r in rows if (r[3] or "") not in found]
    copies = [_reused(batch_id, r, found[r[3] or ""], now) for r in rows if (r[3] or "") in found]
    dialect = ledger.engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(Record)
        .on_conflict_do_nothing(index_elements=["batch_id", "key"])
        .returning(Record.key, Record.status)
    )
    inserted: dict[str, str] = {}
    with ledger.engine.begin() as conn:
        if dialect == "sqlite":
            # Check-point the WAL every ~40 MB instead of SQLite's 4 MB: a large intake
            # writes the same pages back to the database file less often.
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={INTAKE_WAL_CHECKPOINT_PAGES}")
        for values in (fresh, copies):
            if values:
                inserted |= {k: s for k, s in conn.execute(stmt, values).all()}
    result.added += len(inserted)
    result.reused += sum(1 for s in inserted.values() if s == Status.SUCCEEDED)
    result.rows += len(rows)
    result.last_line = rows[-1][1]
    _report_duplicates(ledger, batch_id, rows, set(inserted), on_duplicate, result)


def _queued(batch_id: int, row: IntakeRow, now: Any) -> dict[str, Any]:
    key, seq, data, fingerprint = row
    return {
        "batch_id": batch_id,
        "key": key,
        "seq": seq,
        "input": data,
        "fingerprint": fingerprint,
        "status": Status.QUEUED,
        "attempts": 0,
        "created_at": now,
    }


def _reused(batch_id: int, row: IntakeRow, source: dict[str, Any], now: Any) -> dict[str, Any]:
    """A row stored ``succeeded`` with the result of ``source``, an earlier record."""
    return (
        _queued(batch_id, row, now)
        | {c: source[c] for c in _COPIED}
        | {
            "status": Status.SUCCEEDED,
            "reused_from": source["id"],
            "provenance": source["provenance"],
            "started_at": now,
            "finished_at": now,
        }
    )


def _succeeded_by_fingerprint(ledger: Ledger, rows: list[IntakeRow]) -> dict[str, dict[str, Any]]:
    prints = sorted({r[3] for r in rows if r[3]})
    if not prints:
        return {}
    q = (
        select(
            Record.id, Record.fingerprint, Record.provenance, *(getattr(Record, c) for c in _COPIED)
        )
        .where(Record.fingerprint.in_(prints), Record.status == Status.SUCCEEDED)
        .order_by(Record.id)
    )
    found: dict[str, dict[str, Any]] = {}
    with ledger.engine.connect() as conn:
        for r in conn.execute(q).mappings():
            found.setdefault(r["fingerprint"], dict(r))  # the oldest result wins
    return found


def _report_duplicates(
    ledger: Ledger,
    batch_id: int,
    rows: list[IntakeRow],
    inserted: set[str],
    on_duplicate: OnDuplicate | None,
    result: IntakeResult,
) -> None:
    seen: set[str] = set()
    skipped: list[tuple[str, int, dict[str, Any]]] = []
    for key, seq, data, _ in rows:
        if key not in inserted or key in seen:
            skipped.append((key, seq, data))
        seen.add(key)
    if not skipped:
        return
    q = select(Record.key, Record.seq).where(
        Record.batch_id == batch_id, Record.key.in_({k for k, _, _ in skipped})
    )
    with ledger.engine.connect() as conn:
        stored = {k: int(s) for k, s in conn.execute(q)}
    for key, seq, data in skipped:
        first = stored.get(key)
        if first is not None and first != seq:
            result.duplicates += 1
            if on_duplicate is not None:
                on_duplicate(key, seq, first, data)

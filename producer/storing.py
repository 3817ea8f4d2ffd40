"""Store a source's records in a batch, and every other line as the batch's bad lines.

Every line of the input is accounted for: it becomes a record, or a bad or skipped line
stored with the batch (:mod:`workers.store.bad_lines`) with its number and reason. Memory
stays flat for any input size: rows stream in chunks (:func:`workers.store.intake.store_rows`).
:func:`check_source` is the ``--strict`` pass that stores nothing.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from producer.model_map import ModelMap
from producer.readers import BadRow, MissingKeyError, Row, record_key
from producer.readers import codes as bad_codes
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from producer.readers.openai import custom_id_of
from producer.sources import Source
from workers.errors import TemplateError
from workers.spec import Spec, plan_requests, work_fingerprint
from workers.store import bad_lines
from workers.store.intake import DEFAULT_INSERT_CHUNK, IntakeResult, IntakeRow, store_rows
from workers.store.ledger import Ledger
from workers.store.values import BatchInfo

MAX_BAD_ROWS_KEPT = 1000
"""Bad lines an enqueue report keeps in memory to show (the lowest line numbers)."""

PROGRESS_EVERY = 500
"""Records stored between two calls of a progress callback."""

Progress = Callable[[str, int], None]
"""``progress("stored", n)``: ``n`` more records were read and handed to the store."""

_DUPLICATES = (bad_codes.DUPLICATE_KEY, bad_codes.DUPLICATE_CUSTOM_ID)


class LowestLines:
    """The ``limit`` bad rows with the lowest line numbers seen, whatever order they come in."""

    def __init__(self, limit: int = MAX_BAD_ROWS_KEPT) -> None:
        self.limit = limit
        self._heap: list[tuple[int, int, BadRow]] = []  # (-line, -order, row): a max-heap
        self._order = 0

    def add(self, row: BadRow) -> None:
        self._order += 1
        item = (-row.line, -self._order, row)
        if len(self._heap) < self.limit:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def rows(self) -> list[BadRow]:
        """The kept rows in line order."""
        return [r for _, _, r in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]


@dataclass
class EnqueueReport:
    batch: BatchInfo
    lines: int = 0
    read: int = 0
    published: int = 0
    """Records of the batch handed to the fleet (by this run or any feeder before)."""
    published_now: int = 0
    """Of those, how many this run published."""
    waiting: int = 0
    """Records of the batch waiting in the ledger for room in the queues."""
    intake: IntakeResult = field(default_factory=IntakeResult)
    bad_count: int = 0
    blank_count: int = 0
    duplicate_count: int = 0
    problems: LowestLines = field(default_factory=LowestLines)
    models: ModelMap | None = None

    @property
    def added(self) -> int:
        return self.intake.added

    @property
    def reused(self) -> int:
        return self.intake.reused

    @property
    def already_stored(self) -> int:
        return self.read - self.added - self.duplicate_count

    def note(self, row: BadRow) -> None:
        if row.skipped:
            self.blank_count += 1
        elif row.code in _DUPLICATES:
            self.duplicate_count += 1
        else:
            self.bad_count += 1
        self.problems.add(row)

    @property
    def bad(self) -> list[BadRow]:
        """Kept bad lines (duplicates and blank lines aside), in line order."""
        return [r for r in self.problems.rows() if not r.skipped and r.code not in _DUPLICATES]

    @property
    def duplicates(self) -> list[str]:
        return [r.error for r in self.problems.rows() if r.code in _DUPLICATES]

    def as_dict(self) -> dict[str, Any]:
        """The report as ``vfleet enqueue --json`` prints it."""
        return {
            "batch": self.batch.name,
            "model": self.batch.model,
            "lines": self.lines,
            "read": self.read,
            "added": self.added,
            "reused": self.reused,
            "already_stored": self.already_stored,
            "published": self.published,
            "published_now": self.published_now,
            "waiting": self.waiting,
            "bad_lines": self.bad_count,
            "bad": [b.error for b in self.bad],
            "duplicates": self.duplicate_count,
            "duplicate_lines": self.duplicates,
            "blank_lines": self.blank_count,
            "problems": [
                {"line": b.line, "code": b.code, "message": b.message} for b in self.problems.rows()
            ],
            "models": self.models.describe() if self.models is not None else [],
        }


def duplicate_row(source: Source, key: str, line: int, first: int, data: dict[str, Any]) -> BadRow:
    requests = source.fmt.requests
    code = bad_codes.DUPLICATE_CUSTOM_ID if requests else bad_codes.DUPLICATE_KEY
    what = "custom_id" if requests else "key"
    return BadRow(
        line, code, f"duplicate {what} {key!r} (first at line {first})", _compact(data), key
    )


def plan_rows(
    source: Source,
    key_field: str | None,
    *,
    models: ModelMap | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[tuple[str, Row] | BadRow]:
    """Every line of the source, in order: ``(key, row)`` for a record, else a
    :class:`BadRow` (blank lines included). ``models`` checks request lines' body.model."""
    requests = source.fmt.requests
    for item in source.rows(max_record_bytes):
        if isinstance(item, BadRow):
            yield item
            continue
        try:
            key = record_key(item.data, key_field)
        except MissingKeyError as e:
            cid = None if requests else custom_id_of(item.data)
            yield BadRow(item.line, e.code, str(e), _compact(item.data), cid)
            continue
        if models is not None and requests:
            problem = models.check(item.line, item.data, _compact(item.data))
            if problem is not None:
                yield problem
                continue
        yield key, item


def check_source(
    source: Source,
    key_field: str | None,
    *,
    spec: Spec | None = None,
    models: ModelMap | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
) -> list[BadRow]:
    """Every bad line of the source, in line order (for ``--strict``); reads it once,
    storing nothing. Blank lines are not bad.

    Besides what :func:`plan_rows` finds: duplicate keys (both line numbers) and, given
    a ``spec``, records its templates cannot render (a missing field, a template that does
    too much). Keeps every key of the source in memory.
    """
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    for item in plan_rows(source, key_field, models=models, max_record_bytes=max_record_bytes):
        if isinstance(item, BadRow):
            if not item.skipped:
                bad.append(item)
            continue
        key, row = item
        first = first_line.setdefault(key, row.line)
        if first != row.line:
            bad.append(duplicate_row(source, key, row.line, first, row.data))
            continue
        if spec is not None and spec.mode == "template":
            try:
                plan_requests(spec, row.data)
            except TemplateError as e:
                bad.append(BadRow(row.line, bad_codes.TEMPLATE_ERROR, str(e), _compact(row.data)))
    return bad


class _BadLineSink:
    """Stores bad lines as they come, a chunk at a time, and notes them in the report.

    The lines an earlier run of the same source stored are replaced at the first write (or
    at :meth:`finish`): a run that fails before it found anything leaves them be.
    """

    def __init__(self, ledger: Ledger, batch_id: int, source: str, report: EnqueueReport) -> None:
        self.engine, self.batch_id, self.source = ledger.engine, batch_id, source
        self.report = report
        self.stored = 0
        self._buf: list[bad_lines.NewBadLine] = []
        self._cleared = False

    def add(self, row: BadRow) -> None:
        self.report.note(row)
        line = bad_lines.NewBadLine(row.line, row.code, row.message, row.raw, row.custom_id)
        self._buf.append(line)
        if len(self._buf) >= DEFAULT_INSERT_CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        self._clear()
        bad_lines.add(self.engine, self.batch_id, self.source, self._buf)
        self.stored += len(self._buf)
        self._buf = []

    def finish(self) -> None:
        """The source was read to its end: store the rest, and clear what it no longer has."""
        self.flush()
        self._clear()

    def _clear(self) -> None:
        if not self._cleared:
            bad_lines.clear(self.engine, self.batch_id, self.source)
            self._cleared = True


def store_source(
    ledger: Ledger,
    batch: BatchInfo,
    source: Source,
    *,
    key_field: str | None,
    models: ModelMap | None = None,
    progress: Progress | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
    reuse: bool = True,
    report: EnqueueReport | None = None,
) -> EnqueueReport:
    """Store the source's records in ``batch`` and its other lines as the batch's bad lines
    (replacing those an earlier run of the same source stored, see :class:`_BadLineSink`);
    returns what was read, added, reused and bad.

    Each row carries its work fingerprint; with ``reuse`` a row whose work already
    succeeded (in any batch) is stored with that result instead of being queued.
    ``report`` (made here if None) is kept up to date as chunks are stored, so a caller
    can tell what was stored when this raises: :class:`ReaderError` (the input stopped
    being readable), :class:`~sqlalchemy.exc.SQLAlchemyError`, ``KeyboardInterrupt``.
    """
    report = report if report is not None else EnqueueReport(batch)
    report.models = models
    fingerprint = work_fingerprint(Spec.model_validate(batch.spec), batch.model)
    sink = _BadLineSink(ledger, batch.id, source.name, report)

    def records() -> Iterator[IntakeRow]:
        rows = plan_rows(source, key_field, models=models, max_record_bytes=max_record_bytes)
        for item in rows:
            if isinstance(item, BadRow):
                report.lines = item.line
                sink.add(item)
                continue
            key, row = item
            report.lines, report.read = row.line, report.read + 1
            if progress is not None and report.read % PROGRESS_EVERY == 0:
                progress("stored", PROGRESS_EVERY)
            yield key, row.line, row.data, fingerprint(row.data)
        sink.finish()

    def on_duplicate(key: str, line: int, first: int, data: dict[str, Any]) -> None:
        sink.add(duplicate_row(source, key, line, first, data))

    try:
        store_rows(
            ledger,
            batch.id,
            records(),
            reuse=reuse,
            on_duplicate=on_duplicate,
            result=report.intake,
        )
    finally:
        sink.flush()
        ledger.set_total(batch.id)
    if progress is not None:
        progress("stored", report.read % PROGRESS_EVERY)
    return report


def stored_so_far(report: EnqueueReport, source: Source) -> str:
    """What a failed :func:`store_source` left in its batch, as a phrase."""
    name = report.batch.name
    if report.intake.rows == 0:
        return f"batch {name}: nothing of {source.label} stored before it stopped"
    return (
        f"batch {name}: {report.added} new records of {source.label} stored "
        f"(to line {report.intake.last_line}) before it stopped; "
        "re-run the same command to resume"
    )


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

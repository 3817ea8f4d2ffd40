"""Enqueue a file: store every record in the ledger, then publish their ids.

Storing comes first (SQL is the ledger); then the first window of record ids goes to
Redis, and the workers' feeders publish the rest as the fleet drains the queues, so Redis
never holds the whole batch. A crash at any point loses nothing: unpublished records wait in
SQL. Memory stays flat for any file size: rows stream in chunks.

Every line of the file is accounted for: it becomes a record, or a bad or skipped line
stored with the batch (:mod:`workers.store.bad_lines`) with its number and reason. An
enqueue that fails half-way (corrupt gzip, the database going away, Ctrl-C) removes a
batch it created, or says what it stored in an existing one; running it again resumes.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.model_map import ModelMap
from producer.readers import BadRow, MissingKeyError, Row, read_records, record_key
from producer.readers import codes as bad_codes
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES, STDIN
from producer.readers.keys import CUSTOM_ID_FIELD
from producer.readers.openai import custom_id_of
from workers.broker import redis_client
from workers.dispatch import Dispatcher
from workers.errors import TemplateError, VfleetError
from workers.feeder import Feeder
from workers.fleet import Fleet
from workers.settings import Settings
from workers.spec import Spec, plan_requests, work_fingerprint
from workers.store import bad_lines, summary
from workers.store.intake import DEFAULT_INSERT_CHUNK, IntakeResult, IntakeRow, store_rows
from workers.store.ledger import Ledger
from workers.store.limits import SOURCE_CHARS, check_text
from workers.store.values import BatchInfo

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

MAX_BAD_ROWS_KEPT = 1000
"""Bad lines an enqueue report keeps in memory to show (the lowest line numbers)."""


class EnqueueError(VfleetError):
    """The input cannot be enqueued (``--strict`` with bad lines, an empty file...)."""


class PublishError(VfleetError):
    """Records are stored but could not be published (the broker is away)."""


def publish(settings: Settings, fleet: Fleet, ledger: Ledger, app: Celery, stored: str) -> int:
    """Feed the first window of waiting records to Redis; returns how many were published.

    Raises :class:`PublishError` (one line) when the broker cannot be reached: what is
    stored stays stored, and re-running the command publishes it.
    """
    import redis

    try:
        return make_feeder(settings, fleet, ledger, app).feed()
    except (redis.exceptions.RedisError, OSError) as e:
        raise PublishError(
            f"{stored}, but publishing failed (broker: {str(e).splitlines()[0]}); "
            "re-run the same command to publish"
        ) from e


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
        elif row.code in (bad_codes.DUPLICATE_KEY, bad_codes.DUPLICATE_CUSTOM_ID):
            self.duplicate_count += 1
        else:
            self.bad_count += 1
        self.problems.add(row)

    @property
    def bad(self) -> list[BadRow]:
        """Kept bad lines (duplicates and blank lines aside), in line order."""
        return [r for r in self.problems.rows() if not r.skipped and not _duplicate(r)]

    @property
    def duplicates(self) -> list[str]:
        return [r.error for r in self.problems.rows() if _duplicate(r)]


def _duplicate(row: BadRow) -> bool:
    return row.code in (bad_codes.DUPLICATE_KEY, bad_codes.DUPLICATE_CUSTOM_ID)


def duplicate_row(fmt: str | None, key: str, line: int, first: int, data: dict[str, Any]) -> BadRow:
    code = bad_codes.DUPLICATE_CUSTOM_ID if fmt == "openai" else bad_codes.DUPLICATE_KEY
    what = "custom_id" if fmt == "openai" else "key"
    return BadRow(
        line, code, f"duplicate {what} {key!r} (first at line {first})", _compact(data), key
    )


Progress = Callable[[str, int], None]


def key_field_for(fmt: str | None, key_field: str | None) -> str | None:
    """The key field: ``custom_id`` for OpenAI batch files, else ``key_field``."""
    return CUSTOM_ID_FIELD if fmt == "openai" else key_field


def source_name(path: Path) -> str:
    """How bad lines name their file: its absolute path (``-`` for standard input).

    Raises :class:`~workers.store.limits.LimitError` for a path the ledger cannot hold.
    """
    name = STDIN if str(path) == STDIN else str(path.resolve())
    return check_text("input path", name, SOURCE_CHARS)


def first_request_model(path: Path, fmt: str | None, max_record_bytes: int | None) -> str | None:
    """The ``body.model`` of the first valid OpenAI batch line (None if it names none)."""
    from producer.readers.openai import body_model

    for item in read_records(path, fmt, max_record_bytes=max_record_bytes):
        if isinstance(item, Row):
            return body_model(item.data)
    return None


def plan_lines(
    path: Path,
    fmt: str | None,
    key_field: str | None,
    *,
    models: ModelMap | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[tuple[str, Row] | BadRow]:
    """Every line of the file, in order: ``(key, row)`` for a record, else a
    :class:`BadRow` (blank lines included). ``models`` checks OpenAI lines' body.model."""
    for item in read_records(path, fmt, max_record_bytes=max_record_bytes):
        if isinstance(item, BadRow):
            yield item
            continue
        try:
            key = record_key(item.data, key_field)
        except MissingKeyError as e:
            cid = custom_id_of(item.data) if fmt != "openai" else None
            yield BadRow(item.line, e.code, str(e), _compact(item.data), cid)
            continue
        if models is not None and fmt == "openai":
            problem = models.check(item.line, item.data, _compact(item.data))
            if problem is not None:
                yield problem
                continue
        yield key, item


def check_file(
    path: Path,
    fmt: str | None,
    key_field: str | None,
    *,
    spec: Spec | None = None,
    models: ModelMap | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
) -> list[BadRow]:
    """Every bad line of the file, in line order (for ``--strict``); reads it once, storing
    nothing. Blank lines are not bad.

    Besides what :func:`plan_lines` finds: duplicate keys (both line numbers) and, given
    a ``spec``, records its templates cannot render (a missing field, a template that does
    too much). Keeps every key of the file in memory.
    """
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    for item in plan_lines(path, fmt, key_field, models=models, max_record_bytes=max_record_bytes):
        if isinstance(item, BadRow):
            if not item.skipped:
                bad.append(item)
            continue
        key, row = item
        first = first_line.setdefault(key, row.line)
        if first != row.line:
            bad.append(duplicate_row(fmt, key, row.line, first, row.data))
            continue
        if spec is not None and spec.mode == "template":
            try:
                plan_requests(spec, row.data)
            except TemplateError as e:
                bad.append(BadRow(row.line, bad_codes.TEMPLATE_ERROR, str(e), _compact(row.data)))
    return bad


class _BadLineSink:
    """Stores bad lines as they come, a chunk at a time, and notes them in the report.

    The lines an earlier run of the same file stored are replaced at the first write (or
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
        """The file was read to its end: store the rest, and clear what it no longer has."""
        self.flush()
        self._clear()

    def _clear(self) -> None:
        if not self._cleared:
            bad_lines.clear(self.engine, self.batch_id, self.source)
            self._cleared = True


def store_file(
    ledger: Ledger,
    batch: BatchInfo,
    path: Path,
    *,
    fmt: str | None,
    key_field: str | None,
    models: ModelMap | None = None,
    progress: Progress | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
    reuse: bool = True,
    report: EnqueueReport | None = None,
    source: str | None = None,
) -> EnqueueReport:
    """Store the file's records in ``batch`` and its other lines as the batch's bad lines
    (replacing those an earlier run of the same file stored, see :class:`_BadLineSink`);
    returns what was read, added, reused and bad.

    Each row carries its work fingerprint; with ``reuse`` a row whose work already
    succeeded (in any batch) is stored with that result instead of being queued.
    ``source`` names the file for its bad lines (default: :func:`source_name`).
    ``report`` (made here if None) is kept up to date as chunks are stored, so a caller
    can tell what was stored when this raises: :class:`ReaderError` (the file stopped
    being readable), :class:`~sqlalchemy.exc.SQLAlchemyError`, ``KeyboardInterrupt``.
    """
    report = report if report is not None else EnqueueReport(batch)
    report.models = models
    fingerprint = work_fingerprint(Spec.model_validate(batch.spec), batch.model)
    source = source if source is not None else source_name(path)
    sink = _BadLineSink(ledger, batch.id, source, report)

    def records() -> Iterator[IntakeRow]:
        for item in plan_lines(
            path, fmt, key_field, models=models, max_record_bytes=max_record_bytes
        ):
            if isinstance(item, BadRow):
                report.lines = item.line
                sink.add(item)
                continue
            key, row = item
            report.lines, report.read = row.line, report.read + 1
            if progress is not None and report.read % 500 == 0:
                progress("stored", 500)
            yield key, row.line, row.data, fingerprint(row.data)

    def on_duplicate(key: str, line: int, first: int, data: dict[str, Any]) -> None:
        sink.add(duplicate_row(fmt, key, line, first, data))

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
        progress("stored", report.read % 500)
    return report


def stored_so_far(report: EnqueueReport, path: Path) -> str:
    """What a failed :func:`store_file` left in its batch, as a phrase."""
    name = report.batch.name
    if report.intake.rows == 0:
        return f"batch {name}: nothing of {path} stored before it stopped"
    return (
        f"batch {name}: {report.added} new records of {path} stored "
        f"(to line {report.intake.last_line}) before it stopped; "
        "re-run the same command to resume"
    )


def make_feeder(settings: Settings, fleet: Fleet, ledger: Ledger, app: Celery) -> Feeder:
    """The feeder the producer uses for the first window of a batch."""
    return Feeder(
        ledger=ledger,
        dispatcher=Dispatcher(app),
        fleet=fleet,
        settings=settings,
        redis_client=redis_client(settings.broker_url),
    )


def waiting(ledger: Ledger, batch: BatchInfo) -> int:
    """Records of the batch that wait in the ledger for room in the queues."""
    return summary.waiting_unpublished(ledger.engine, batch.id)


def create_batch(
    ledger: Ledger,
    *,
    name: str,
    spec: Spec,
    model: str,
    route: str,
    targets: list[str],
    source: Path,
) -> BatchInfo:
    batch, _ = ledger.create_batch(
        name=name,
        spec_name=spec.name,
        spec=spec.model_dump(mode="json"),
        model=model,
        route=route,
        targets=targets,
        source=str(source),
    )
    return batch


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

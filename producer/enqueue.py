"""Enqueue a file: store every record in the ledger, then publish their ids.

Storing comes first (SQL is the ledger); then the first window of record ids goes to
Redis, and the workers' feeders publish the rest as the fleet drains the queues, so Redis
never holds the whole batch. A crash at any point loses nothing: unpublished records wait in
SQL. Memory stays flat for any file size: rows stream in chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.readers import BadRow, MissingKeyError, read_records, record_key
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from producer.readers.keys import CUSTOM_ID_FIELD
from workers.broker import redis_client
from workers.dispatch import Dispatcher
from workers.errors import VfleetError
from workers.feeder import Feeder
from workers.fleet import Fleet
from workers.settings import Settings
from workers.spec import Spec, TemplateRenderError, plan_requests, work_fingerprint
from workers.store.intake import IntakeRow, store_rows
from workers.store.ledger import BatchInfo, Ledger

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

MAX_BAD_ROWS_KEPT = 1000
"""Largest record line accepted by default (``--max-record-bytes``)."""


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


@dataclass
class EnqueueReport:
    batch: BatchInfo
    read: int = 0
    added: int = 0
    reused: int = 0
    published: int = 0
    bad_count: int = 0
    bad: list[BadRow] = field(default_factory=list)
    duplicate_count: int = 0
    duplicates: list[str] = field(default_factory=list)

    def note_bad(self, row: BadRow) -> None:
        self.bad_count += 1
        if len(self.bad) < MAX_BAD_ROWS_KEPT:
            self.bad.append(row)

    def note_duplicate(self, key: str, line: int, first: int) -> None:
        self.duplicate_count += 1
        if len(self.duplicates) < MAX_BAD_ROWS_KEPT:
            self.duplicates.append(duplicate_message(key, line, first))


def duplicate_message(key: str, line: int, first: int) -> str:
    return f"line {line}: duplicate key {key!r} (first at line {first}); skipped"


Progress = Callable[[str, int], None]


def key_field_for(fmt: str, key_field: str | None) -> str | None:
    """The key field: ``custom_id`` for OpenAI batch files, else ``key_field``."""
    return CUSTOM_ID_FIELD if fmt == "openai" else key_field


def _keyed(
    path: Path,
    fmt: str | None,
    key_field: str | None,
    report: EnqueueReport | None,
    max_record_bytes: int | None = None,
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(key, seq, data) for every good row; bad rows go to ``report``."""
    for item in read_records(path, fmt, max_record_bytes=max_record_bytes):
        if isinstance(item, BadRow):
            if report is not None:
                report.note_bad(item)
            continue
        try:
            key = record_key(item.data, key_field)
        except MissingKeyError as e:
            if report is not None:
                report.note_bad(BadRow(item.line, f"line {item.line}: {e}"))
            continue
        if report is not None:
            report.read += 1
        yield key, item.line, item.data


def check_file(
    path: Path,
    fmt: str | None,
    key_field: str | None,
    *,
    spec: Spec | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
) -> list[BadRow]:
    """Every bad row of the file (for ``--strict``); reads it once, storing nothing.

    Besides unreadable lines and missing keys: duplicate keys (both line numbers) and, given
    a ``spec``, records its templates cannot render (a missing field, say). Keeps every key
    of the file in memory.
    """
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    for item in read_records(path, fmt, max_record_bytes=max_record_bytes):
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        try:
            key = record_key(item.data, key_field)
        except MissingKeyError as e:
            bad.append(BadRow(item.line, f"line {item.line}: {e}"))
            continue
        first = first_line.setdefault(key, item.line)
        if first != item.line:
            bad.append(BadRow(item.line, duplicate_message(key, item.line, first)))
            continue
        if spec is not None and spec.mode == "template":
            try:
                plan_requests(spec, item.data)
            except TemplateRenderError as e:
                bad.append(BadRow(item.line, f"line {item.line}: {e}"))
    return bad


def store_file(
    ledger: Ledger,
    batch: BatchInfo,
    path: Path,
    *,
    fmt: str | None,
    key_field: str | None,
    progress: Progress | None = None,
    max_record_bytes: int | None = DEFAULT_MAX_RECORD_BYTES,
    reuse: bool = True,
) -> EnqueueReport:
    """Insert the file's rows into ``batch``; returns what was read, added, reused and bad.

    Each row carries its work fingerprint; with ``reuse`` a row whose work already
    succeeded (in any batch) is stored with that result instead of being queued.
    Raises :class:`ReaderError` if the file stops being readable (not UTF-8, say).
    """
    report = EnqueueReport(batch)
    fingerprint = work_fingerprint(Spec.model_validate(batch.spec), batch.model)

    def counted() -> Iterator[IntakeRow]:
        rows = _keyed(path, fmt, key_field, report, max_record_bytes)
        for n, (key, seq, data) in enumerate(rows, 1):
            if progress is not None and n % 500 == 0:
                progress("stored", 500)
            yield key, seq, data, fingerprint(data)

    result = store_rows(
        ledger, batch.id, counted(), reuse=reuse, on_duplicate=report.note_duplicate
    )
    report.added, report.reused = result.added, result.reused
    if progress is not None:
        progress("stored", report.read % 500)
    ledger.set_total(batch.id)
    return report


def make_feeder(settings: Settings, fleet: Fleet, ledger: Ledger, app: Celery) -> Feeder:
    """The feeder the producer uses for the first window of a batch."""

    return Feeder(
        ledger=ledger,
        dispatcher=Dispatcher(app),
        fleet=fleet,
        settings=settings,
        redis_client=redis_client(settings.broker_url),
    )


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

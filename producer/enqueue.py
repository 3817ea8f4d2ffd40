"""Enqueue: store every record of a source in the ledger, then publish their ids.

:func:`enqueue` is the one way records enter vfleet: ``vfleet enqueue``, ``vfleet run``,
``vfleet demo`` and the Python API (:mod:`producer.api`) all call it. It loads the spec
(the format's default unless one is named), plans the batch's model, checks the whole
input first with ``strict``, creates (or finds) the batch, stores the records and bad lines
(:mod:`producer.storing`), then publishes.

Storing comes first (SQL is the ledger); then the first window of record ids goes to
Redis, and the workers' feeders publish the rest as the fleet drains the queues, so Redis
never holds the whole batch. A crash at any point loses nothing: unpublished records wait in
SQL. An enqueue that fails half-way (corrupt gzip, the database going away, Ctrl-C) removes
a batch it created, or says what it stored in an existing one; running it again resumes,
and running it again after it succeeded adds nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from producer import model_map
from producer.errors import EnqueueError, PublishError
from producer.model_map import ModelMap
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES, Row
from producer.readers.formats import Format
from producer.readers.openai import body_model
from producer.sources import Source, rereadable
from producer.storing import (
    EnqueueReport,
    Progress,
    check_source,
    store_source,
    stored_so_far,
)
from workers.broker import redis_client
from workers.dispatch import Dispatcher, route_targets
from workers.errors import ConfigError, StoreError
from workers.feeder import Feeder
from workers.routes import Route
from workers.spec import Spec, SpecError, load_spec
from workers.store import summary
from workers.store.limits import BATCH_NAME_CHARS, check_text

if TYPE_CHECKING:
    from celery import Celery

    from workers.fleet import Fleet
    from workers.settings import Settings
    from workers.store.ledger import Ledger

logger = logging.getLogger(__name__)

MAX_STRICT_LINES_NAMED = 20


class Stack(Protocol):
    """What an enqueue talks to: :class:`producer.context.Context` is one."""

    settings: Settings
    fleet_required: bool

    @property
    def fleet(self) -> Fleet: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def celery(self) -> Celery: ...


@dataclass(frozen=True)
class EnqueueOptions:
    """What ``vfleet enqueue``'s options say; None means the source format's default."""

    batch: str | None = None
    """Batch name (default: the source's stem)."""
    spec: str | Spec | None = None
    labels: Sequence[str] | None = None
    votes: int | None = None
    model: str | None = None
    route: Route = Route.SHARED
    instances: Sequence[str] = ()
    key: str | None = None
    strict: bool = False
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    reuse: bool = True


Notify = Callable[[str], None]


def enqueue(
    stack: Stack,
    source: Source,
    options: EnqueueOptions = EnqueueOptions(),
    *,
    progress: Progress | None = None,
    notify: Notify | None = None,
) -> EnqueueReport:
    """Store ``source`` as a batch and publish it; returns what was read, stored and
    published. ``notify`` hears what an interrupted enqueue left stored (default: a
    warning in the log).

    Raises :class:`~workers.errors.ConfigError` (bad options, spec, model, format),
    :class:`EnqueueError` (``strict`` found bad lines, no record at all, storing stopped
    half-way in an existing batch), :class:`~workers.errors.StoreError` (the ledger
    failed while creating the batch) and :class:`PublishError` (stored, not published).
    """
    fmt = source.fmt
    name = _batch_name(source, options.batch)
    spec = load_batch_spec(options.spec, fmt, options.labels, options.votes)
    key_field = fmt.key_for(options.key)
    stack.fleet_required = options.route is not Route.SHARED or options.model is None
    twice = options.strict or fmt.requests or (source.stdin and fmt.seekable)
    with rereadable(source) if twice else contextlib.nullcontext(source) as src:
        models = _plan_models(stack.fleet, src, options)
        targets = route_targets(options.route, models.model, stack.fleet, list(options.instances))
        if options.strict:
            _check_strictly(src, key_field, spec, models, options.max_record_bytes)
        info, new = stack.ledger.create_batch(
            name=name,
            spec_name=spec.name,
            spec=spec.model_dump(mode="json"),
            model=models.model,
            route=options.route.value,
            targets=targets,
            source=source.name,
        )
        report = EnqueueReport(info)
        _store(stack, src, report, new, notify, key_field, models, progress, options)
    if report.read == 0:
        raise EnqueueError(_nothing_to_do(source, report))
    stored = f"batch {name}: {report.read} records stored ({report.added} new)"
    report.published_now = publish(stack, stored)
    report.waiting = summary.waiting_unpublished(stack.ledger.engine, info.id)
    report.published = sum(stack.ledger.counts(info.id).values()) - report.waiting
    return report


def _batch_name(source: Source, batch: str | None) -> str:
    name = batch or source.stem
    if not name:
        raise ConfigError(f"name the batch for {source.label} (--batch, or batch= in Python)")
    return check_text("batch name", name, BATCH_NAME_CHARS)


def load_batch_spec(
    spec: str | Spec | None, fmt: Format, labels: Sequence[str] | None, votes: int | None
) -> Spec:
    """The batch's spec: ``spec`` (a built-in name, a TOML file or a :class:`Spec`), else
    the format's default; ``labels`` and ``votes`` applied.

    Raises :class:`SpecError` for a spec that does not fit the format (request lines run
    with the openai spec, every other record with a template spec).
    """
    if isinstance(spec, Spec):
        loaded = spec
    else:
        loaded = load_spec(spec or fmt.spec, labels=[s.strip() for s in labels] if labels else None)
    if fmt.requests != (loaded.mode == "openai"):
        raise SpecError(
            f"spec {loaded.name!r} does not fit format {fmt.name!r}: OpenAI batch files run "
            "with the openai spec, other files with a template spec"
        )
    if votes is not None:
        loaded = Spec.model_validate({**loaded.model_dump(), "votes": votes})
    return loaded


def _plan_models(fleet: Fleet, source: Source, options: EnqueueOptions) -> ModelMap:
    asked = first_request_model(source, options.max_record_bytes) if source.fmt.requests else None
    return model_map.plan(fleet, options.model, requests=source.fmt.requests, first_asked=asked)


def first_request_model(source: Source, max_record_bytes: int | None) -> str | None:
    """The ``body.model`` of the source's first valid request line (None if it names none)."""
    for item in source.rows(max_record_bytes):
        if isinstance(item, Row):
            return body_model(item.data)
    return None


def _check_strictly(
    source: Source, key_field: str | None, spec: Spec, models: ModelMap, max_record_bytes: int
) -> None:
    bad = check_source(
        source, key_field, spec=spec, models=models, max_record_bytes=max_record_bytes
    )
    if bad:
        shown = bad[:MAX_STRICT_LINES_NAMED]
        lines = ", ".join(str(b.line) for b in shown) + (" ..." if len(bad) > len(shown) else "")
        raise EnqueueError(
            f"--strict: {_plural(len(bad), 'bad line')} ({lines}), nothing stored; "
            f"first: {bad[0].error}"
        )


def _store(
    stack: Stack,
    source: Source,
    report: EnqueueReport,
    new: bool,
    notify: Notify | None,
    key_field: str | None,
    models: ModelMap,
    progress: Progress | None,
    options: EnqueueOptions,
) -> None:
    """Store the source in the report's batch. A batch this run created is removed again if
    storing fails or finds no record, so nothing half-made stays; a batch that existed
    keeps what was stored, and the error says how much."""
    try:
        store_source(
            stack.ledger,
            report.batch,
            source,
            key_field=key_field,
            models=models,
            progress=progress,
            max_record_bytes=options.max_record_bytes,
            reuse=options.reuse,
            report=report,
        )
    except BaseException as e:
        _after_failure(stack, report, new, source, e, notify or _warn)
        raise
    if report.read == 0 and new:
        stack.ledger.delete_batch(report.batch.id, force=True)


def _after_failure(
    stack: Stack,
    report: EnqueueReport,
    new: bool,
    source: Source,
    error: BaseException,
    notify: Notify,
) -> None:
    """Undo a batch this run created, or say what stays stored; raises the one-line
    error to report (returns for an interrupt, after telling ``notify``)."""
    from sqlalchemy.exc import SQLAlchemyError

    reason = (
        f"{type(error).__name__}: {error}" if isinstance(error, SQLAlchemyError) else str(error)
    )
    reason = (reason.splitlines() or [type(error).__name__])[0]
    name = report.batch.name
    if new:
        try:
            stack.ledger.delete_batch(report.batch.id, force=True)
        except SQLAlchemyError as e:
            raise StoreError(
                f"batch {name}: storing failed ({reason}) and the half-made "
                f"batch could not be removed ({e.__class__.__name__}); "
                f"vfleet delete {name} --force removes it"
            ) from error
        if isinstance(error, SQLAlchemyError):
            raise StoreError(f"batch {name}: storing failed, nothing kept: {reason}") from error
        return
    if isinstance(error, Exception):
        raise EnqueueError(f"{stored_so_far(report, source)}: {reason}") from error
    notify(stored_so_far(report, source))


def _warn(message: str) -> None:
    logger.warning("%s", message)


def _nothing_to_do(source: Source, report: EnqueueReport) -> str:
    """Why an enqueue that found no record stored nothing."""
    if report.bad_count + report.duplicate_count == 0:
        return f"{source.label}: no records (the file is empty)"
    first = next(r for r in report.problems.rows() if not r.skipped)
    bad = _plural(report.bad_count + report.duplicate_count, "bad line")
    return f"{source.label}: no valid records ({bad}, nothing stored); first: {first.error}"


def publish(stack: Stack, stored: str) -> int:
    """Feed the first window of waiting records to Redis; returns how many were published.

    Raises :class:`PublishError` (one line) when the broker cannot be reached: what is
    stored stays stored, and re-running the command publishes it.
    """
    import redis

    try:
        return make_feeder(stack).feed()
    except (redis.exceptions.RedisError, OSError) as e:
        raise PublishError(
            f"{stored}, but publishing failed (broker: {str(e).splitlines()[0]}); "
            "re-run the same command to publish"
        ) from e


def make_feeder(stack: Stack) -> Feeder:
    """The feeder the producer uses for the first window of a batch."""
    return Feeder(
        ledger=stack.ledger,
        dispatcher=Dispatcher(stack.celery),
        fleet=stack.fleet,
        settings=stack.settings,
        redis_client=redis_client(stack.settings.broker_url),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"

"""``vfleet enqueue`` and ``vfleet retry``: put records in front of the fleet."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from producer.context import Context
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES, STDIN
from workers.errors import ConfigError, StoreError
from workers.routes import Route
from workers.spec import Spec
from workers.store.limits import BATCH_NAME_CHARS, check_text

if TYPE_CHECKING:
    from producer.enqueue import EnqueueReport
    from producer.model_map import ModelMap

MAX_BAD_LINES_SHOWN = 20


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _report_dict(report: EnqueueReport) -> dict[str, Any]:
    models = report.models.describe() if report.models is not None else []
    return {
        "batch": report.batch.name,
        "model": report.batch.model,
        "lines": report.lines,
        "read": report.read,
        "added": report.added,
        "reused": report.reused,
        "already_stored": report.already_stored,
        "published": report.published,
        "published_now": report.published_now,
        "waiting": report.waiting,
        "bad_lines": report.bad_count,
        "bad": [b.error for b in report.bad],
        "duplicates": report.duplicate_count,
        "duplicate_lines": report.duplicates,
        "blank_lines": report.blank_count,
        "problems": [
            {"line": b.line, "code": b.code, "message": b.message} for b in report.problems.rows()
        ],
        "models": models,
    }


def _print_report(report: EnqueueReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_report_dict(report)))
        return
    typer.echo(
        f"batch {report.batch.name}: {_plural(report.lines, 'line')}: "
        f"{_plural(report.read, 'record')} ({report.added} added, "
        f"{report.already_stored} already stored, {report.reused} reused), "
        f"{_plural(report.bad_count, 'bad line')}, "
        f"{_plural(report.duplicate_count, 'duplicate key')}, "
        f"{_plural(report.blank_count, 'blank line')} skipped; "
        f"{report.published} published, {report.waiting} waiting in the ledger"
    )
    if report.models is not None and report.models.remapped():
        typer.echo(f"models: {'; '.join(report.models.describe())}")
    problems = report.problems.rows()
    for bad in problems[:MAX_BAD_LINES_SHOWN]:
        typer.echo(f"  {bad.error}", err=True)
    more = report.bad_count + report.duplicate_count + report.blank_count - MAX_BAD_LINES_SHOWN
    if more > 0:
        typer.echo(
            f"  ... and {more} more (vfleet report {report.batch.name} lists them by reason)",
            err=True,
        )


def enqueue(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="Records: .jsonl, .csv or an OpenAI batch file (one a line).")
    ],
    spec: Annotated[
        str | None,
        typer.Option(
            help="Built-in spec name or a spec TOML file (default: judge; openai "
            "for OpenAI batch files)."
        ),
    ] = None,
    batch: Annotated[
        str | None, typer.Option(help="Batch name (default: the file's stem).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Served model to run on (default: the fleet's; for OpenAI batch files, "
            "each line's body.model, through the fleet file's [aliases])."
        ),
    ] = None,
    route: Annotated[
        Route, typer.Option(help="shared (pull), round-robin or pinned.")
    ] = Route.SHARED,
    instance: Annotated[
        list[str] | None, typer.Option(help="Instance to push to (pinned/round-robin); repeatable.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Field holding each record's unique key.")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (classify).")] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="jsonl, csv, tsv or openai (default: suffix, sniffed)."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Check every line (JSON, keys, duplicates, models, template fields) first; "
            "store nothing if any is bad."
        ),
    ] = False,
    max_record_bytes: Annotated[
        int, typer.Option(min=1, help="Lines longer than this are bad lines.")
    ] = DEFAULT_MAX_RECORD_BYTES,
    reuse: Annotated[
        bool, typer.Option(help="Reuse stored results of identical work (same fingerprint).")
    ] = True,
    votes: Annotated[
        int | None, typer.Option(min=1, max=25, help="Ask each record N times and aggregate.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Store FILE's records as a batch, then publish them to the fleet's queues.

    Lines that cannot be records (malformed, not UTF-8, too long, duplicate keys, blank)
    are stored with the batch by line number and reason: vfleet status counts them,
    vfleet report lists them. Running the same command again adds nothing and publishes
    only what a previous run stored but did not publish. Records whose work already
    succeeded (same input, spec, model and parameters, in any batch) reuse that result
    unless --no-reuse.
    """
    from producer.enqueue import EnqueueError, key_field_for, publish, source_name, waiting
    from producer.readers import sniff_format
    from workers.dispatch import route_targets

    c: Context = ctx.obj
    c.fleet_required = route is not Route.SHARED or model is None
    if not file.exists() and str(file) != STDIN:
        raise ConfigError(f"{file}: no such file")
    batch_name = check_text("batch name", batch or file.stem, BATCH_NAME_CHARS)
    source = source_name(file)
    kind = sniff_format(file, fmt)
    the_spec = _load_spec(spec, kind, labels, votes)
    key_field = key_field_for(kind, key)
    with _readable(file, spool=strict or kind == "openai") as path:
        models = _plan_models(c, path, kind, model, max_record_bytes)
        targets = route_targets(route, models.model, c.fleet, instance or [])
        if strict:
            _check_strictly(path, kind, key_field, the_spec, models, max_record_bytes)
        report = _store(
            c,
            path,
            batch_name,
            the_spec,
            models,
            route,
            targets,
            kind=kind,
            key_field=key_field,
            max_record_bytes=max_record_bytes,
            reuse=reuse,
            source=source,
        )
    if report.read == 0:
        raise EnqueueError(_nothing_to_do(file, report))
    stored = f"batch {batch_name}: {report.read} records stored ({report.added} new)"
    report.published_now = publish(c.settings, c.fleet, c.ledger, c.celery, stored)
    report.waiting = waiting(c.ledger, report.batch)
    report.published = sum(c.ledger.counts(report.batch.id).values()) - report.waiting
    _print_report(report, as_json)


@contextlib.contextmanager
def _readable(file: Path, *, spool: bool) -> Iterator[Path]:
    """``file``; standard input copied to a temporary file first when it must be read
    more than once (``--strict``, OpenAI batch files)."""
    if str(file) != STDIN or not spool:
        yield file
        return
    with tempfile.TemporaryDirectory(prefix="vfleet-stdin-") as tmp:
        path = Path(tmp) / "stdin"
        with path.open("wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh)
        yield path


def _plan_models(
    c: Context, path: Path, kind: str, model: str | None, max_record_bytes: int
) -> ModelMap:
    from producer import model_map
    from producer.enqueue import first_request_model

    asked = first_request_model(path, kind, max_record_bytes) if kind == "openai" else None
    return model_map.plan(c.fleet, model, fmt=kind, first_asked=asked)


def _check_strictly(
    path: Path,
    kind: str,
    key_field: str | None,
    spec: Spec,
    models: ModelMap,
    max_record_bytes: int,
) -> None:
    from producer.enqueue import EnqueueError, check_file

    bad = check_file(
        path, kind, key_field, spec=spec, models=models, max_record_bytes=max_record_bytes
    )
    if bad:
        lines = ", ".join(str(b.line) for b in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise EnqueueError(
            f"--strict: {_plural(len(bad), 'bad line')} ({lines}), nothing stored; "
            f"first: {bad[0].error}"
        )


def _load_spec(spec: str | None, kind: str, labels: str | None, votes: int | None) -> Spec:
    from workers.spec import SpecError, load_spec

    name = spec or ("openai" if kind == "openai" else "judge")
    loaded = load_spec(name, labels=[s.strip() for s in labels.split(",")] if labels else None)
    if (kind == "openai") != (loaded.mode == "openai"):
        raise SpecError(
            f"spec {loaded.name!r} does not fit format {kind!r}: OpenAI batch files run "
            "with the openai spec, other files with a template spec"
        )
    if votes is not None:
        loaded = Spec.model_validate({**loaded.model_dump(), "votes": votes})
    return loaded


def _store(
    c: Context,
    path: Path,
    name: str,
    spec: Spec,
    models: ModelMap,
    route: Route,
    targets: list[str],
    **options: Any,
) -> EnqueueReport:
    """Create (or find) the batch and store the file. A batch this run created is removed
    again if storing fails or finds no record, so nothing half-made stays; a batch that
    existed keeps what was stored, and the error says how much."""
    from producer.enqueue import EnqueueReport, store_file

    info, new = c.ledger.create_batch(
        name=name,
        spec_name=spec.name,
        spec=spec.model_dump(mode="json"),
        model=models.model,
        route=route.value,
        targets=targets,
        source=options["source"],
    )
    report = EnqueueReport(info)
    try:
        with _progress() as bar:
            stored = bar.add_task("stored")
            store_file(
                c.ledger,
                info,
                path,
                fmt=options["kind"],
                key_field=options["key_field"],
                models=models,
                progress=lambda _kind, n: bar.advance(stored, n),
                max_record_bytes=options["max_record_bytes"],
                reuse=options["reuse"],
                report=report,
                source=options["source"],
            )
    except BaseException as e:
        _after_failure(c, report, new, Path(options["source"]), e)
        raise
    if report.read == 0 and new:
        c.ledger.delete_batch(info.id, force=True)
    return report


def _after_failure(
    c: Context, report: EnqueueReport, new: bool, path: Path, error: BaseException
) -> None:
    """Undo a batch this run created, or say what stays stored; raises the one-line
    error to report (returns for an interrupt, which the CLI reports itself)."""
    from sqlalchemy.exc import SQLAlchemyError

    from producer.enqueue import EnqueueError, stored_so_far

    reason = (
        f"{type(error).__name__}: {error}" if isinstance(error, SQLAlchemyError) else str(error)
    )
    reason = (reason.splitlines() or [type(error).__name__])[0]
    if new:
        try:
            c.ledger.delete_batch(report.batch.id, force=True)
        except SQLAlchemyError as e:
            raise StoreError(
                f"batch {report.batch.name}: storing failed ({reason}) and the half-made "
                f"batch could not be removed ({e.__class__.__name__}); "
                f"vfleet delete {report.batch.name} --force removes it"
            ) from error
        if isinstance(error, SQLAlchemyError):
            raise StoreError(
                f"batch {report.batch.name}: storing failed, nothing kept: {reason}"
            ) from error
        return
    if isinstance(error, Exception):
        raise EnqueueError(f"{stored_so_far(report, path)}: {reason}") from error
    typer.echo(f"vfleet: {stored_so_far(report, path)}", err=True)


def _nothing_to_do(file: Path, report: EnqueueReport) -> str:
    """Why an enqueue that found no record stored nothing."""
    if report.bad_count + report.duplicate_count == 0:
        return f"{file}: no records (the file is empty)"
    first = next(r for r in report.problems.rows() if not r.skipped)
    bad = _plural(report.bad_count + report.duplicate_count, "bad line")
    return f"{file}: no valid records ({bad}, nothing stored); first: {first.error}"


def retry(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    error_kind: Annotated[
        str | None,
        typer.Option(
            help="Only failures of this kind (template, context_length, invalid_output, "
            "server, connect, timeout, rate_limit, bad_request)."
        ),
    ] = None,
    cancelled: Annotated[
        bool, typer.Option("--cancelled", help="Also redrive a cancelled batch's records.")
    ] = False,
) -> None:
    """Put a batch's failed records back in the queue (attempts restart from zero);
    with --cancelled, undo a cancel too. Re-running it after a crash is safe."""
    from producer.enqueue import publish

    c: Context = ctx.obj
    c.fleet_required = False
    info = c.ledger.batch(batch)
    n = c.ledger.requeue(info.id, error_kind=error_kind)
    revived = c.ledger.requeue_cancelled(info.id) if cancelled else 0
    stored = f"batch {batch}: {n + revived} records queued again"
    published = publish(c.settings, c.fleet, c.ledger, c.celery, stored) if n + revived else 0
    extra = f", {revived} cancelled records revived" if cancelled else ""
    typer.echo(f"batch {batch}: {n} failed records queued again{extra} ({published} published now)")


def register(app: typer.Typer) -> None:
    app.command("enqueue")(enqueue)
    app.command("retry")(retry)

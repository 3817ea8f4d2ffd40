"""``vfleet enqueue`` and ``vfleet retry``: put records in front of the fleet."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from producer.context import Context
from producer.readers import ReaderError
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.routes import Route
from workers.spec import Spec

if TYPE_CHECKING:
    from producer.enqueue import EnqueueReport

MAX_BAD_LINES_SHOWN = 20


def resolve_model(fleet: Fleet, model: str | None) -> str:
    """``--model``, or the one model the fleet serves. Raises :class:`ConfigError`."""
    if model:
        return model
    models = fleet.models()
    if len(models) == 1:
        return models[0]
    if not models:
        raise ConfigError("no --model given and the fleet file names no instance")
    raise ConfigError(f"the fleet serves several models ({', '.join(models)}): pass --model")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )


def _print_report(report: EnqueueReport, as_json: bool) -> None:
    existing = report.read - report.added - report.duplicate_count
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "batch": report.batch.name,
                    "read": report.read,
                    "added": report.added,
                    "reused": report.reused,
                    "already_stored": existing,
                    "published": report.published,
                    "bad_lines": report.bad_count,
                    "bad": [b.error for b in report.bad],
                    "duplicates": report.duplicate_count,
                    "duplicate_lines": report.duplicates,
                }
            )
        )
        return
    typer.echo(
        f"batch {report.batch.name}: read {report.read}, added {report.added} "
        f"({existing} already stored), reused {report.reused}, published {report.published}, "
        f"bad lines {report.bad_count}, duplicate keys {report.duplicate_count}"
    )
    for bad in report.bad[:MAX_BAD_LINES_SHOWN]:
        typer.echo(f"  skipped {bad.error}", err=True)
    for message in report.duplicates[:MAX_BAD_LINES_SHOWN]:
        typer.echo(f"  skipped {message}", err=True)
    if report.bad_count > MAX_BAD_LINES_SHOWN:
        typer.echo(f"  ... and {report.bad_count - MAX_BAD_LINES_SHOWN} more bad lines", err=True)


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
    model: Annotated[str | None, typer.Option(help="Served model (default: the fleet's).")] = None,
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
            help="Check every line (JSON, keys, duplicates, template fields) first; "
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

    Running the same command again adds nothing and publishes only what a previous run
    stored but did not publish. Records whose work already succeeded (same input, spec,
    model and parameters, in any batch) reuse that result unless --no-reuse.
    """
    from producer.enqueue import EnqueueError, check_file, key_field_for, publish
    from producer.readers import sniff_format
    from workers.dispatch import route_targets

    c: Context = ctx.obj
    c.fleet_required = route is not Route.SHARED or model is None
    if not file.exists() and str(file) != "-":
        raise ConfigError(f"{file}: no such file")
    kind = sniff_format(file, fmt)
    the_spec = _load_spec(spec, kind, labels, votes)
    the_model = resolve_model(c.fleet, model)
    targets = route_targets(route, the_model, c.fleet, instance or [])
    key_field = key_field_for(kind, key)
    if strict and (
        bad := check_file(file, kind, key_field, spec=the_spec, max_record_bytes=max_record_bytes)
    ):
        lines = ", ".join(str(b.line) for b in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise EnqueueError(
            f"--strict: {len(bad)} bad lines ({lines}), nothing stored; first: {bad[0].error}"
        )
    batch_name = batch or file.stem
    report = _store(
        c,
        file,
        batch_name,
        the_spec,
        the_model,
        route,
        targets,
        kind=kind,
        key_field=key_field,
        max_record_bytes=max_record_bytes,
        reuse=reuse,
    )
    if report.read == 0:
        raise EnqueueError(_nothing_to_do(file, report))
    stored = f"batch {batch_name}: {report.read} records stored ({report.added} new)"
    report.published = publish(c.settings, c.fleet, c.ledger, c.celery, stored)
    _print_report(report, as_json)


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
    file: Path,
    name: str,
    spec: Spec,
    model: str,
    route: Route,
    targets: list[str],
    **options: Any,
) -> EnqueueReport:
    """Create (or find) the batch and store the file; a batch this run created is removed
    again if the file turns out unreadable or empty, so nothing half-made stays."""
    from producer.enqueue import store_file

    info, new = c.ledger.create_batch(
        name=name,
        spec_name=spec.name,
        spec=spec.model_dump(mode="json"),
        model=model,
        route=route.value,
        targets=targets,
        source=str(file),
    )
    try:
        with _progress() as bar:
            stored = bar.add_task("stored")
            report = store_file(
                c.ledger,
                info,
                file,
                fmt=options["kind"],
                key_field=options["key_field"],
                progress=lambda _kind, n: bar.advance(stored, n),
                max_record_bytes=options["max_record_bytes"],
                reuse=options["reuse"],
            )
    except ReaderError:
        if new:
            c.ledger.delete_batch(info.id, force=True)
        raise
    if report.read == 0 and new:
        c.ledger.delete_batch(info.id, force=True)
    return report


def _nothing_to_do(file: Path, report: EnqueueReport) -> str:
    if report.bad_count == 0:
        return f"{file}: no records (the file is empty)"
    return (
        f"{file}: no valid records ({report.bad_count} bad lines, nothing stored); "
        f"first: {report.bad[0].error}"
    )


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

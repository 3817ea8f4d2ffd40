"""``vfleet enqueue`` and ``vfleet retry``: put records in front of the fleet."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from producer.context import Context
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from workers.routes import Route

if TYPE_CHECKING:
    from producer.enqueue import EnqueueOptions
    from producer.sources import Source
    from producer.storing import EnqueueReport
    from producer.storing import Progress as StoreProgress

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


def print_report(report: EnqueueReport, as_json: bool) -> None:
    """What ``vfleet enqueue`` prints: one summary line (or JSON), the first bad lines."""
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
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


# The options of `vfleet enqueue`, shared with `vfleet run`.
FileArg = Annotated[
    Path,
    typer.Argument(
        help="Records: .jsonl, .csv, .tsv, .parquet or an OpenAI batch file; - for stdin."
    ),
]
SpecOpt = Annotated[
    str | None,
    typer.Option(
        help="Built-in spec name or a spec TOML file (default: judge; openai "
        "for OpenAI batch files)."
    ),
]
BatchOpt = Annotated[str | None, typer.Option(help="Batch name (default: the file's stem).")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Served model to run on (default: the fleet's; for OpenAI batch files, "
        "each line's body.model, through the fleet file's [aliases])."
    ),
]
RouteOpt = Annotated[Route, typer.Option(help="shared (pull), round-robin or pinned.")]
InstanceOpt = Annotated[
    list[str] | None, typer.Option(help="Instance to push to (pinned/round-robin); repeatable.")
]
KeyOpt = Annotated[str | None, typer.Option(help="Field holding each record's unique key.")]
LabelsOpt = Annotated[str | None, typer.Option(help="Comma-separated labels (classify).")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="jsonl, csv, tsv, openai or parquet (default: suffix, sniffed)."),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        help="Check every line (JSON, keys, duplicates, models, template fields) first; "
        "store nothing if any is bad."
    ),
]
MaxBytesOpt = Annotated[int, typer.Option(min=1, help="Lines longer than this are bad lines.")]
ReuseOpt = Annotated[
    bool, typer.Option(help="Reuse stored results of identical work (same fingerprint).")
]
VotesOpt = Annotated[
    int | None, typer.Option(min=1, max=25, help="Ask each record N times and aggregate.")
]


def enqueue(
    ctx: typer.Context,
    file: FileArg,
    spec: SpecOpt = None,
    batch: BatchOpt = None,
    model: ModelOpt = None,
    route: RouteOpt = Route.SHARED,
    instance: InstanceOpt = None,
    key: KeyOpt = None,
    labels: LabelsOpt = None,
    fmt: FormatOpt = None,
    strict: StrictOpt = False,
    max_record_bytes: MaxBytesOpt = DEFAULT_MAX_RECORD_BYTES,
    reuse: ReuseOpt = True,
    votes: VotesOpt = None,
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
    from producer.sources import file_source

    options = enqueue_options(
        batch=batch,
        spec=spec,
        labels=labels,
        votes=votes,
        model=model,
        route=route,
        instance=instance,
        key=key,
        strict=strict,
        max_record_bytes=max_record_bytes,
        reuse=reuse,
    )
    report = enqueue_with_bar(ctx.obj, file_source(file, fmt), options)
    print_report(report, as_json)


def enqueue_options(
    *,
    batch: str | None,
    spec: str | None,
    labels: str | None,
    votes: int | None,
    model: str | None,
    route: Route,
    instance: list[str] | None,
    key: str | None,
    strict: bool,
    max_record_bytes: int,
    reuse: bool,
) -> EnqueueOptions:
    """The :class:`~producer.enqueue.EnqueueOptions` the command line gave."""
    from producer.enqueue import EnqueueOptions

    return EnqueueOptions(
        batch=batch,
        spec=spec,
        labels=labels.split(",") if labels else None,
        votes=votes,
        model=model,
        route=route,
        instances=instance or [],
        key=key,
        strict=strict,
        max_record_bytes=max_record_bytes,
        reuse=reuse,
    )


def enqueue_with_bar(c: Context, source: Source, options: EnqueueOptions) -> EnqueueReport:
    """:func:`producer.enqueue.enqueue` with a progress bar on a terminal, and what an
    interrupted run left stored said on stderr."""
    from producer.enqueue import enqueue

    with _bar() as advance:
        return enqueue(c, source, options, progress=advance, notify=_say)


@contextmanager
def _bar() -> Iterator[StoreProgress]:
    with _progress() as bar:
        stored = bar.add_task("stored")
        yield lambda _kind, n: bar.advance(stored, n)


def _say(message: str) -> None:
    typer.echo(f"vfleet: {message}", err=True)


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
    from producer.lifecycle import retry_batch

    r = retry_batch(ctx.obj, batch, error_kind=error_kind, cancelled=cancelled)
    extra = f", {r.revived} cancelled records revived" if cancelled else ""
    typer.echo(
        f"batch {batch}: {r.failed} failed records queued again{extra} "
        f"({r.published} published now)"
    )


def register(app: typer.Typer) -> None:
    app.command("enqueue")(enqueue)
    app.command("retry")(retry)

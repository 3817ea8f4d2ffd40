"""``vfleet run``: enqueue a file, run it on the fleet, export the results, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from producer.cli.submit import (
    BatchOpt,
    FileArg,
    FormatOpt,
    InstanceOpt,
    KeyOpt,
    LabelsOpt,
    MaxBytesOpt,
    ModelOpt,
    ReuseOpt,
    RouteOpt,
    SpecOpt,
    StrictOpt,
    VotesOpt,
    enqueue_options,
    enqueue_with_bar,
    print_report,
)
from producer.context import Context
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from producer.run import DEFAULT_LOG_DIR
from workers.routes import Route

if TYPE_CHECKING:
    from producer.run import RunWorkers


def run(
    ctx: typer.Context,
    file: FileArg,
    spec: SpecOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Results file, .jsonl, .csv or .parquet (default: BATCH.results.* in the "
            "input's family; OpenAI batch output for OpenAI batch files).",
        ),
    ] = None,
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
    log_dir: Annotated[
        Path, typer.Option(help="Where the workers this run starts write their logs.")
    ] = DEFAULT_LOG_DIR,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Give up following after this many seconds.")
    ] = None,
) -> None:
    """Enqueue FILE, start a worker for each instance serving the batch that has none
    alive, follow the batch until every record is done, export the results and stop the
    workers it started. Ctrl-C stops them too and leaves the batch stored: run the same
    command again to resume (it adds nothing and redoes nothing that finished)."""
    from rich.console import Console

    from producer.errors import WaitTimeoutError
    from producer.export import export_batch, export_format
    from producer.progress import batch_progress
    from producer.run import RunWorkers, default_output, serving
    from producer.sources import file_source
    from producer.supervise import TerminateOnSignal
    from producer.views import follow

    c: Context = ctx.obj
    source = file_source(file, fmt)
    if output is not None:
        export_format(output, None)  # a name it cannot write is refused before the work
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
    with TerminateOnSignal():
        report = enqueue_with_bar(c, source, options)
        print_report(report, as_json=False)
        info = report.batch
        # A batch already done (a run again after it finished) needs no worker.
        start = not batch_progress(c.ledger, info).complete
        try:
            with RunWorkers(c, serving(c, info), start=start, log_dir=log_dir) as workers:
                _say_workers(workers)
                (progress,) = follow(
                    c.ledger, [info], console=Console(), tick=workers.poll, timeout=timeout
                )
        except KeyboardInterrupt:
            typer.echo(f"vfleet: batch {info.name} stays stored; {_resume(c, info.name)}", err=True)
            raise
    if not progress.complete:
        raise WaitTimeoutError(
            f"batch {info.name}: {progress.done} of {progress.total} done after "
            f"{timeout or 0:g}s; {_resume(c, info.name)}"
        )
    path, chosen = (output, None) if output is not None else default_output(source, info.name)
    n = export_batch(c.ledger, info, path, chosen)
    counts = progress.counts
    typer.echo(
        f"batch {info.name}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled; wrote {n} records to {path}"
    )


def _say_workers(workers: RunWorkers) -> None:
    started = ", ".join(workers.started) or "none"
    alive = ", ".join(sorted(workers.alive)) or "none"
    where = f" (logs in {workers.log_dir})" if workers.started else ""
    typer.echo(f"workers: started {started}{where}; already running: {alive}", err=True)


def _resume(c: Context, name: str) -> str:
    counts = c.ledger.counts(c.ledger.batch(name).id)
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    return f"{done} of {sum(counts.values())} done; run the same command again to resume"


def register(app: typer.Typer) -> None:
    app.command("run")(run)

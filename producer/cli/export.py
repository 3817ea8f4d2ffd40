"""``vfleet export``: a batch's results to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from producer.context import Context


def export(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Output .jsonl, .csv or .parquet.")
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="jsonl, csv, parquet or openai (batch output; default: suffix)."
        ),
    ] = None,
    errors_file: Annotated[
        Path | None,
        typer.Option("--errors-file", help="openai: write failed requests here, not inline."),
    ] = None,
) -> None:
    """Write input, output, parsed fields, status, error, finish reason, instance, tokens
    and latency of every record, in input order; or, with --format openai, OpenAI batch
    output, whose errors include the input lines that did not become records."""
    from producer.export import export_batch, export_openai
    from workers.errors import ConfigError
    from workers.store import bad_lines

    c: Context = ctx.obj
    info = c.ledger.batch(batch)
    if fmt == "openai":
        r = export_openai(c.ledger, info, output, errors_file)
        where = f" ({r.errors} errors to {errors_file})" if errors_file else ""
        bad = f", {r.bad_lines} of them input lines not run" if r.bad_lines else ""
        pending = f", {r.pending} not finished yet" if r.pending else ""
        typer.echo(
            f"wrote {r.succeeded + r.errors} requests of batch {batch} to {output}"
            f"{where}{bad}{pending}"
        )
        return
    if errors_file is not None:
        raise ConfigError("--errors-file goes with --format openai")
    n = export_batch(c.ledger, info, output, fmt)
    skipped = sum(bad_lines.counts(c.ledger.engine, info.id).values())
    note = f" ({skipped} input lines are not records: vfleet report {batch})" if skipped else ""
    typer.echo(f"wrote {n} records of batch {batch} to {output}{note}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)

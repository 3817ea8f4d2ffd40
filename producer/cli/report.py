"""``vfleet report``: what a batch's answers say, and how the run went."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from producer.context import Context


def report(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Score/label/winner distributions, failure reasons, latency and tokens of a batch."""
    import json

    from producer.report import build_report, render_text, write_html

    c: Context = ctx.obj
    data = build_report(c.ledger, c.ledger.batch(batch))
    if as_json:
        typer.echo(json.dumps(data.as_dict(), indent=2))
    else:
        typer.echo(render_text(data))
    if html is not None:
        write_html(data, html)
        typer.echo(f"wrote {html}", err=as_json)


def register(app: typer.Typer) -> None:
    app.command("report")(report)

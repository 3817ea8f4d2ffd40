"""``vfleet status`` and ``vfleet batches``: where the batches stand."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from producer.context import Context


def status(
    ctx: typer.Context,
    batch: Annotated[str | None, typer.Argument(help="Batch name (default: every batch).")] = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Live view until done.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: an OpenAI batch object per batch.")
    ] = False,
) -> None:
    """Show progress: succeeded / failed / running / queued, rate, ETA, bad input lines,
    answers cut by max_tokens, per instance. --json prints an OpenAI batch object
    (errors: the bad input lines)."""
    from producer.progress import batch_progress
    from producer.views import follow, render

    c: Context = ctx.obj
    ledger = c.ledger
    infos = [ledger.batch(batch)] if batch else [ledger.batch(b.name) for b in ledger.batches()]
    if follow_ and not as_json:
        follow(ledger, infos, console=Console())
        return
    progress = [batch_progress(ledger, b, details=as_json) for b in infos]
    if as_json:
        data = [p.as_dict() for p in progress]
        typer.echo(json.dumps(data[0] if batch else data, indent=2))
        return
    Console().print(render(progress))


def batches(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One line per batch."""
    from producer.progress import batch_progress

    c: Context = ctx.obj
    rows: list[dict[str, Any]] = []
    for b in c.ledger.batches():
        p = batch_progress(c.ledger, c.ledger.batch(b.name))
        rows.append(
            {
                "name": b.name,
                "spec": b.spec_name,
                "model": b.model,
                "route": b.route,
                "total": p.total,
                "done": p.done,
                "succeeded": p.counts["succeeded"],
                "failed": p.counts["failed"],
                "bad_lines": p.bad_count,
                "status": p.status_word(),
                "created_at": b.created_at.isoformat(),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "name", "spec", "model", "route", "done/total", "failed", "bad", "status", "created"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["spec"],
            r["model"],
            r["route"],
            f"{r['done']}/{r['total']}",
            str(r["failed"]),
            str(r["bad_lines"]),
            r["status"],
            r["created_at"][:19],
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("batches")(batches)

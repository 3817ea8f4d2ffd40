"""``vfleet cancel`` and ``vfleet delete``: stop a batch, or remove it from the ledger."""

from __future__ import annotations

from typing import Annotated

import typer

from producer.context import Context


def cancel(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name.")],
) -> None:
    """Cancel a batch: its waiting records become cancelled and are never run; running
    ones finish. `vfleet retry BATCH --cancelled` undoes it."""
    from producer.lifecycle import cancel_batch

    r = cancel_batch(ctx.obj, batch)
    typer.echo(f"batch {batch}: {r.cancelled} records cancelled, {r.running} running will finish")


def delete(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(help="Batch name.")],
    force: Annotated[
        bool, typer.Option("--force", help="Delete even while records are running.")
    ] = False,
) -> None:
    """Delete a batch, every record of it and its bad input lines. Refuses while records
    are running, unless --force (cancel first and let them finish)."""
    from workers.store import bad_lines

    c: Context = ctx.obj
    info = c.ledger.batch(batch)
    lines = sum(bad_lines.counts(c.ledger.engine, info.id).values())
    n = c.ledger.delete_batch(info.id, force=force)
    extra = f" and {lines} bad input lines" if lines else ""
    typer.echo(f"batch {batch}: deleted with its {n} records{extra}")


def register(app: typer.Typer) -> None:
    app.command("cancel")(cancel)
    app.command("delete")(delete)

"""``vfleet db``: schema migrations of the ledger."""

from __future__ import annotations

import typer

from producer.context import Context
from workers.settings import mask_url


def upgrade_cmd(ctx: typer.Context) -> None:
    """Bring the database schema to this version of vfleet."""
    from workers.store.engine import make_engine
    from workers.store.migrate import current_revision, upgrade

    c: Context = ctx.obj
    engine = make_engine(c.settings.database_url)
    upgrade(engine)
    revision = current_revision(engine)
    engine.dispose()
    typer.echo(f"database {mask_url(c.settings.database_url)} at revision {revision}")


def current_cmd(ctx: typer.Context) -> None:
    """Print the database's schema revision and the one this vfleet needs."""
    from workers.store.engine import make_engine
    from workers.store.migrate import current_revision, head_revision

    c: Context = ctx.obj
    engine = make_engine(c.settings.database_url)
    revision = current_revision(engine)
    engine.dispose()
    typer.echo(f"current {revision or 'none'}, head {head_revision()}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
    group.command("upgrade")(upgrade_cmd)
    group.command("current")(current_cmd)
    app.add_typer(group, name="db")

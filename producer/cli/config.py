"""``vfleet config show``: the effective configuration, secrets masked."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ops.urls import mask_url
from producer.context import Context


def _effective(ctx: Context) -> dict[str, Any]:
    ctx.fleet_required = False
    fleet = ctx.fleet
    # An instance's base_url may carry credentials (https://user:key@proxy/v1).
    instances = [
        {**i.model_dump(mode="json"), "base_url": mask_url(i.base_url)} for i in fleet.instances
    ]
    return {
        "settings": ctx.settings.public_dict(),
        "fleet": {
            "hosts": {
                k: h.model_dump(mode="json", exclude_none=True) for k, h in fleet.hosts.items()
            },
            "instances": instances,
        },
    }


def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings and fleet (API keys are never printed, only their
    variable names; passwords in URLs are masked)."""
    data = _effective(ctx.obj)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    table = Table("setting", "value", title="settings")
    for key, value in data["settings"].items():
        table.add_row(key, str(value))
    console.print(table)
    inst = Table("name", "model", "base_url", "concurrency", "host", "gpus", title="instances")
    for i in data["fleet"]["instances"]:
        inst.add_row(
            i["name"],
            i["model"],
            i["base_url"],
            str(i["concurrency"]),
            i["host"] or "",
            ",".join(map(str, i["gpus"])),
        )
    console.print(inst)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Show the configuration.", no_args_is_help=True)
    group.command("show")(show)
    app.add_typer(group, name="config")

"""``vfleet bench``: benchmarks on simulated fleets (the command lives in ``ops.bench``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from ops.bench.cli import bench

    app.command("bench")(bench)

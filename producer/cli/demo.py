"""``vfleet demo``: the main job on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_DEMO_INSTANCES = 4


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the database, logs and results go.")] = Path(
        "vfleet-demo"
    ),
    instances: Annotated[
        int, typer.Option(min=1, max=16, help="Simulated vLLM instances.")
    ] = DEFAULT_DEMO_INSTANCES,
    records: Annotated[
        Path | None,
        typer.Option(
            help="A JSONL of records with id, question, answer (default: the bundled sample)."
        ),
    ] = None,
) -> None:
    """Judge the bundled sample dataset on simulated vLLM instances, end to end."""
    from producer.demo import print_summary, run_demo

    console = Console()
    result = run_demo(workdir, instances=instances, records=records, console=console)
    print_summary(result, console)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

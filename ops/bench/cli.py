"""``vfleet bench``: the Typer command (registered by ``producer.cli.bench``; also
``python -m ops.bench``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.bench.config import ALL_MODES, ALL_SCENARIOS, BenchOptions
from ops.bench.errors import BenchSetupError

if TYPE_CHECKING:
    from ops.bench.run import BenchSummary

DEFAULT_OUTPUT = Path("docs")


def _choices(values: list[str] | None, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    if not values:
        return allowed
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]!r}: choose from {', '.join(allowed)}", param_hint=option
        )
    return tuple(v for v in allowed if v in values)


def _sizes(options: BenchOptions, **given: int | None) -> BenchOptions:
    changes = {k: v for k, v in given.items() if v is not None}
    return replace(options, sizes=replace(options.sizes, **changes)) if changes else options


def _print(summary: BenchSummary) -> None:
    from ops.bench.targets import verdict

    for t in summary.targets:
        typer.echo(f"{verdict(t).strip('*'):>8}  {t.text}: {t.measured}")
    typer.echo(f"report: {summary.report}")


def bench(
    quick: Annotated[
        bool, typer.Option(help="CI size: the failure scenario on a small fleet, under 2 minutes.")
    ] = False,
    output: Annotated[
        Path, typer.Option(help="Where BENCHMARKS.md and the plots go.")
    ] = DEFAULT_OUTPUT,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep logs, ledgers and records here (default: a temp dir).")
    ] = None,
    scenario: Annotated[
        list[str] | None,
        typer.Option(help=f"Scenario to run (repeatable): {', '.join(ALL_SCENARIOS)}."),
    ] = None,
    mode: Annotated[
        list[str] | None, typer.Option(help=f"Mode to run (repeatable): {', '.join(ALL_MODES)}.")
    ] = None,
    records: Annotated[
        int | None, typer.Option(min=10, help="Records per vfleet/ideal run.")
    ] = None,
    baseline_records: Annotated[
        int | None, typer.Option(min=4, help="Records per seeds run.")
    ] = None,
    enqueue_records: Annotated[
        int | None, typer.Option(min=100, help="Records of the enqueue run.")
    ] = None,
    celery_messages: Annotated[
        int | None, typer.Option(min=0, help="Messages of the apply_async loop.")
    ] = None,
    enqueue_only: Annotated[bool, typer.Option(help="Only the enqueue benchmark.")] = False,
    skip_enqueue: Annotated[bool, typer.Option(help="No enqueue benchmark.")] = False,
) -> None:
    """Benchmark vfleet against the seeds' thread pool, the client-side ideal and the fleet's
    capacity on simulated fleets; write BENCHMARKS.md and plots."""
    if enqueue_only and skip_enqueue:
        raise typer.BadParameter("--enqueue-only and --skip-enqueue exclude each other")
    options = BenchOptions.build(
        output,
        quick=quick,
        workdir=workdir,
        modes=_choices(mode, ALL_MODES, "--mode"),
        fleet_runs=not enqueue_only,
        enqueue_run=not skip_enqueue,
    )
    if scenario:
        options = replace(options, scenarios=_choices(scenario, ALL_SCENARIOS, "--scenario"))
    options = _sizes(
        options,
        records=records,
        baseline_records=baseline_records,
        enqueue_records=enqueue_records,
        celery_messages=celery_messages,
    )
    if not output.parent.exists():
        raise BenchSetupError(f"--output {output}: {output.parent} does not exist")
    from ops.bench.run import run  # the harness loads only when the command runs

    _print(run(options, command=_command_line(quick, output)))


def _command_line(quick: bool, output: Path) -> str:
    parts = ["vfleet bench"]
    if quick:
        parts.append("--quick")
    if output != DEFAULT_OUTPUT:
        parts += ["--output", str(output)]
    return " ".join(parts)

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
    fast_records: Annotated[
        int | None, typer.Option(min=10, help="Records per run of a fast scenario.")
    ] = None,
    before_tree: Annotated[
        Path | None,
        typer.Option(
            help="Source tree of an older vfleet (a git worktree) to run as the vfleet-before "
            "mode on the fast scenario; without it that mode does not run."
        ),
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
    if before_tree is not None and not (before_tree / "workers").is_dir():
        raise BenchSetupError(f"--before-tree {before_tree}: no vfleet source tree (no workers/)")
    options = BenchOptions.build(
        output,
        quick=quick,
        workdir=workdir,
        modes=_choices(mode, ALL_MODES, "--mode"),
        fleet_runs=not enqueue_only,
        enqueue_run=not skip_enqueue,
        before_tree=before_tree,
    )
    if scenario:
        options = replace(options, scenarios=_choices(scenario, ALL_SCENARIOS, "--scenario"))
    options = _sizes(
        options,
        records=records,
        fast_records=fast_records,
        baseline_records=baseline_records,
        enqueue_records=enqueue_records,
        celery_messages=celery_messages,
    )
    if not output.parent.exists():
        raise BenchSetupError(f"--output {output}: {output.parent} does not exist")
    from ops.bench.run import run  # the harness loads only when the command runs

    _print(run(options, command=_command_line(options, quick=quick, given=scenario)))


def _command_line(options: BenchOptions, *, quick: bool, given: list[str] | None) -> str:
    """The command that reproduces ``options``."""
    parts = ["vfleet bench"]
    if quick:
        parts.append("--quick")
    for name in options.scenarios if given else ():
        parts += ["--scenario", name]
    if options.modes != ALL_MODES:
        for name in options.modes:
            parts += ["--mode", name]
    if options.before_tree is not None:
        parts += ["--before-tree", str(options.before_tree)]
    base = BenchOptions.build(options.output_dir, quick=quick).sizes
    for flag, value, default in (
        ("--records", options.sizes.records, base.records),
        ("--fast-records", options.sizes.fast_records, base.fast_records),
        ("--baseline-records", options.sizes.baseline_records, base.baseline_records),
        ("--enqueue-records", options.sizes.enqueue_records, base.enqueue_records),
        ("--celery-messages", options.sizes.celery_messages, base.celery_messages),
    ):
        if value != default:
            parts += [flag, str(value)]
    if not options.fleet_runs:
        parts.append("--enqueue-only")
    if not options.enqueue_run:
        parts.append("--skip-enqueue")
    if options.output_dir != DEFAULT_OUTPUT:
        parts += ["--output", str(options.output_dir)]
    return " ".join(parts)

"""The benchmark from end to end: scenarios, enqueue, targets, plots and the report."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.bench.config import BenchOptions
from ops.bench.enqueue import EnqueueBench, run_enqueue_bench
from ops.bench.measure import RunFailure, RunResult
from ops.bench.plots import write_plots
from ops.bench.report import RunMeta, render, write_json
from ops.bench.runner import run_scenarios
from ops.bench.targets import Target, evaluate

logger = logging.getLogger(__name__)

REPORT_NAME = "BENCHMARKS.md"
RESULTS_NAME = "bench-results.json"


@dataclass(frozen=True)
class BenchSummary:
    """What a benchmark wrote and found."""

    report: Path
    plots: list[Path]
    results_json: Path
    targets: list[Target]
    results: list[RunResult]
    failures: list[RunFailure]
    enqueue: EnqueueBench | None
    workdir: Path


def _machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def _stamp(started: float) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def run(
    options: BenchOptions,
    *,
    command: str = "vfleet bench",
    say: Callable[[str], None] | None = None,
) -> BenchSummary:
    """Run the benchmark ``options`` describe; returns what it wrote.

    Raises:
        BenchSetupError: Redis, a simulator or the workers could not be started.
        BenchRunError: a run failed or outlived its time limit (its logs stay in the workdir).
    """
    started, load_start = time.monotonic(), os.getloadavg()[0]
    say = say or _stamp(started)
    temporary = options.workdir is None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="vfleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    say(f"work directory {workdir}")
    outcomes = run_scenarios(options, workdir, say) if options.fleet_runs else None
    results = outcomes.results if outcomes is not None else []
    failures = outcomes.failures if outcomes is not None else []
    enqueue = run_enqueue_bench(options, workdir / "enqueue", say) if options.enqueue_run else None
    options.output_dir.mkdir(parents=True, exist_ok=True)
    titles = {name: sc.title for name, sc in options.scenario_table().items()}
    plots = write_plots(results, titles, options.output_dir)
    targets = evaluate(results, enqueue, failures)
    meta = RunMeta(
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=_machine(),
        load_start=load_start,
        load_end=os.getloadavg()[0],
        duration=time.monotonic() - started,
        sources=dict(outcomes.sources) if outcomes is not None else {},
    )
    report = options.output_dir / REPORT_NAME
    existing = report.read_text(encoding="utf-8") if report.exists() else ""
    report.write_text(
        render(options, meta, targets, results, failures, enqueue, plots, existing), "utf-8"
    )
    results_json = write_json(options.output_dir / RESULTS_NAME, meta, results, failures, enqueue)
    if temporary and not failures:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {report} and {len(plots)} plots in {meta.duration / 60:.1f} min")
    return BenchSummary(report, plots, results_json, targets, results, failures, enqueue, workdir)

"""Run the scenarios: per scenario one simulated fleet, every mode in turn on it.

Order within a scenario: the client modes first (ideal, seeds A, seeds B) with no vfleet
process running, then the vfleet workers start once and run the shared and the
round-robin batch. After a failure run the dead engine is revived before the next mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.bench.config import (
    CLIENT_MODES,
    IDEAL,
    VFLEET_MODES,
    BenchOptions,
    Scenario,
    scenarios,
)
from ops.bench.errors import BenchRunError
from ops.bench.fleet import SimBench
from ops.bench.measure import RunFailure, RunResult
from ops.bench.modes import RunSpec, finish_capacity, run_client_mode, run_vfleet_mode
from ops.bench.stack import VfleetStack
from ops.bench.workload import write_records

logger = logging.getLogger(__name__)

GATE_SETTLE = 3.0  # seconds for the workers' health gates to see a revived engine
Progress = Callable[[str], None]


def _spec(
    options: BenchOptions, scenario: Scenario, sims: SimBench, workdir: Path, n: int
) -> RunSpec:
    records_file = workdir / f"records-{n}.jsonl"
    if not records_file.exists():
        write_records(records_file, n)
    sizes = options.sizes
    return RunSpec(scenario, sims, workdir, records_file, n, sizes.run_timeout, sizes.stall_timeout)


def _client_runs(
    options: BenchOptions, scenario: Scenario, sims: SimBench, workdir: Path, out: Outcomes
) -> None:
    sizes = options.sizes
    for mode in (m for m in CLIENT_MODES if m in options.modes):
        n = sizes.records if mode == IDEAL else sizes.baseline_records
        out.say(f"{scenario.name}: {mode} ({n} records)")
        try:
            result = run_client_mode(_spec(options, scenario, sims, workdir, n), mode)
            out.results.append(finish_capacity(result, scenario))
        except BenchRunError as e:
            out.failed(scenario, mode, e)
        sims.revive_all()


def _vfleet_runs(
    options: BenchOptions, scenario: Scenario, sims: SimBench, workdir: Path, out: Outcomes
) -> None:
    modes = [m for m in VFLEET_MODES if m in options.modes]
    if not modes:
        return
    out.say(f"{scenario.name}: starting {scenario.shape.instances} vfleet workers")
    with VfleetStack(sims, workdir, concurrency=scenario.shape.max_num_seqs) as stack:
        for mode in modes:
            n = options.sizes.records
            out.say(f"{scenario.name}: {mode} ({n} records)")
            spec = _spec(options, scenario, sims, workdir, n)
            try:
                out.results.append(finish_capacity(run_vfleet_mode(spec, stack, mode), scenario))
            except BenchRunError as e:
                out.failed(scenario, mode, e)
            if scenario.kill_index is not None:
                sims.revive_all()
                time.sleep(GATE_SETTLE)


@dataclass
class Outcomes:
    """The runs that finished and the ones that failed (a failed run does not stop the rest)."""

    say: Progress
    results: list[RunResult] = field(default_factory=list)
    failures: list[RunFailure] = field(default_factory=list)

    def failed(self, scenario: Scenario, mode: str, error: BenchRunError) -> None:
        self.say(f"{scenario.name}: {mode} FAILED: {error}")
        self.failures.append(RunFailure(scenario.name, mode, str(error)))


def run_scenario(options: BenchOptions, scenario: Scenario, workdir: Path, out: Outcomes) -> None:
    """Every selected mode on one fresh simulated fleet, into ``out``."""
    workdir.mkdir(parents=True, exist_ok=True)
    with SimBench(scenario, seed=options.seed, log_dir=workdir) as sims:
        _client_runs(options, scenario, sims, workdir, out)
        _vfleet_runs(options, scenario, sims, workdir, out)
    mine = [r for r in out.results if r.scenario == scenario.name]
    ideal = next((r for r in mine if r.mode == IDEAL), None)
    for r in mine:
        r.ideal_rate = ideal.rate if ideal is not None else None


def run_scenarios(options: BenchOptions, workdir: Path, say: Progress) -> Outcomes:
    """Every selected scenario, in order."""
    table = scenarios(options.shape)
    out = Outcomes(say)
    for name in options.scenarios:
        run_scenario(options, table[name], workdir / name, out)
    return out

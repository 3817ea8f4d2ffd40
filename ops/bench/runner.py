"""Run the scenarios: per scenario one simulated fleet, every mode in turn on it.

Order within a scenario: the client modes first (ideal, raw-http, seeds A, seeds B) with no
vfleet process running, then one vfleet stack after the other: this tree's workers (the
shared and the round-robin batch), the same with ``VFLEET_CHUNK_MAX=1`` (chunk=1), and the
workers of ``--before-tree`` (vfleet-before); each stack has its own Redis and ledger and
stops before the next starts. Only the modes the scenario names run on it. After a failure
run the dead engine is revived before the next mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.bench.config import (
    CHUNK1_ENV,
    CLIENT_MODES,
    IDEAL,
    VFLEET_BEFORE,
    VFLEET_CHUNK1,
    VFLEET_MODES,
    BenchOptions,
    Scenario,
)
from ops.bench.errors import BenchError, BenchRunError, BenchSetupError
from ops.bench.fleet import SimBench
from ops.bench.measure import RunFailure, RunResult
from ops.bench.modes import RunSpec, finish_capacity, run_client_mode, run_vfleet_mode
from ops.bench.stack import VfleetStack
from ops.bench.workload import write_records

logger = logging.getLogger(__name__)

GATE_SETTLE = 3.0  # seconds for the workers' health gates to see a revived engine
Progress = Callable[[str], None]


@dataclass(frozen=True)
class StackKind:
    """One kind of vfleet stack: the modes it runs, its extra settings, its source tree."""

    name: str
    modes: tuple[str, ...]
    env: dict[str, str]
    source_tree: Path | None = None


def stack_kinds(options: BenchOptions) -> list[StackKind]:
    """The vfleet stacks a scenario may start, in order (vfleet-before only with a tree)."""
    kinds = [
        StackKind("vfleet", VFLEET_MODES, {}),
        StackKind("chunk1", (VFLEET_CHUNK1,), CHUNK1_ENV),
    ]
    if options.before_tree is not None:
        kinds.append(StackKind("before", (VFLEET_BEFORE,), {}, options.before_tree))
    return kinds


def _selected(options: BenchOptions, scenario: Scenario, modes: tuple[str, ...]) -> list[str]:
    return [m for m in modes if m in options.modes and scenario.runs(m)]


def _records(options: BenchOptions, scenario: Scenario, mode: str) -> int:
    sizes = options.sizes
    if scenario.fast:
        return sizes.fast_records
    return sizes.records if mode in (IDEAL, *VFLEET_MODES) else sizes.baseline_records


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
    for mode in _selected(options, scenario, CLIENT_MODES):
        n = _records(options, scenario, mode)
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
    for kind in stack_kinds(options):
        modes = _selected(options, scenario, kind.modes)
        if modes:
            try:
                _stack_runs(options, scenario, sims, workdir, out, kind, modes)
            except BenchSetupError as e:
                for mode in modes:
                    out.failed(scenario, mode, e)


def _stack_runs(
    options: BenchOptions,
    scenario: Scenario,
    sims: SimBench,
    workdir: Path,
    out: Outcomes,
    kind: StackKind,
    modes: list[str],
) -> None:
    n_workers = scenario.shape.instances
    out.say(f"{scenario.name}: starting {n_workers} {kind.name} workers")
    stack = VfleetStack(
        sims,
        workdir / kind.name if kind.name != "vfleet" else workdir,
        concurrency=scenario.shape.max_num_seqs,
        env={**scenario.vfleet_env, **kind.env},
        source_tree=kind.source_tree,
    )
    with stack:
        if stack.source_tree is not None:
            out.sources[kind.name] = f"{stack.source_tree} at {stack.source_commit or '?'}"
        for mode in modes:
            n = _records(options, scenario, mode)
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
    sources: dict[str, str] = field(default_factory=dict)  # stack kind -> its source tree

    def failed(self, scenario: Scenario, mode: str, error: BenchError) -> None:
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
    table = options.scenario_table()
    out = Outcomes(say)
    for name in options.scenarios:
        run_scenario(options, table[name], workdir / name, out)
    return out

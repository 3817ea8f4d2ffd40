"""The benchmark's targets, each judged met or not against the measured figures.

A target whose runs are missing (a mode or scenario not selected, no ``--before-tree``) is
"not run"; one whose run failed is not met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ops.bench.config import (
    FAST,
    FAST_1,
    HETEROGENEOUS,
    HOMOGENEOUS,
    IDEAL,
    MODE_TITLES,
    RAW_HTTP,
    VFLEET_BEFORE,
    VFLEET_CHUNK1,
    VFLEET_MODES,
    VFLEET_SHARED,
)
from ops.bench.enqueue import EnqueueBench
from ops.bench.measure import RunFailure, RunResult

MIN_RATIO_IDEAL = 0.9
MIN_RATIO_CAPACITY = 0.85
MAX_CPU_MS = 2.5
MIN_FAST_X_IDEAL = 1.3
MIN_FAST_X_BEFORE = 2.5
MIN_FAST_X_RAW = 0.15
MIN_ONE_WORKER_RATE = 600.0
# Integrity counts this tree's vfleet in every variant (chunk=1 too), not vfleet-before.
INTEGRITY_MODES = (*VFLEET_MODES, VFLEET_CHUNK1)
MIN_ENQUEUE_RATE = 10_000.0
MAX_ENQUEUE_RSS_MB = 200.0


@dataclass(frozen=True)
class Target:
    text: str
    measured: str
    met: bool | None  # None: not run


def _find(results: list[RunResult], scenario: str, mode: str) -> RunResult | None:
    return next((r for r in results if r.scenario == scenario and r.mode == mode), None)


def _ratio_ideal(results: list[RunResult]) -> Target:
    text = f"shared mode at least {MIN_RATIO_IDEAL:g}x the ideal, homogeneous fleet"
    r = _find(results, HOMOGENEOUS, VFLEET_SHARED)
    if r is None or math.isnan(r.ratio_ideal):
        return Target(text, "not run", None)
    ideal = _find(results, HOMOGENEOUS, IDEAL)
    cpu = (
        f"; the ideal, one process, spent {ideal.cpu_ms_per_record:.1f} ms CPU/record"
        if ideal
        else ""
    )
    measured = f"{r.ratio_ideal:.2f}x ({r.rate:.1f} vs {r.ideal_rate or 0:.1f} records/s{cpu})"
    return Target(text, measured, r.ratio_ideal >= MIN_RATIO_IDEAL)


def _ratio_capacity(results: list[RunResult]) -> Target:
    text = f"shared mode at least {MIN_RATIO_CAPACITY:g}x the fleet's capacity, heterogeneous"
    r = _find(results, HETEROGENEOUS, VFLEET_SHARED)
    if r is None or math.isnan(r.ratio_capacity):
        return Target(text, "not run", None)
    measured = (
        f"{r.ratio_capacity:.2f}x ({r.rate:.1f} of {r.capacity:.1f} records/s; "
        f"{r.steady_rate / r.capacity:.2f}x between 10% and 90% done)"
    )
    return Target(text, measured, r.ratio_capacity >= MIN_RATIO_CAPACITY)


def _cpu(results: list[RunResult]) -> Target:
    text = f"vfleet CPU at most {MAX_CPU_MS:g} ms per record (producer + workers), every scenario"
    runs = [r for r in results if r.mode in VFLEET_MODES]
    if not runs:
        return Target(text, "not run", None)
    worst = max(runs, key=lambda r: r.cpu_ms_per_record)
    best = min(runs, key=lambda r: r.cpu_ms_per_record)
    covered = list(dict.fromkeys(r.scenario for r in runs))
    measured = (
        f"{best.cpu_ms_per_record:.2f} to {worst.cpu_ms_per_record:.2f} ms "
        f"(worst: {worst.scenario} {worst.mode}; scenarios run: {', '.join(covered)})"
    )
    return Target(text, measured, worst.cpu_ms_per_record <= MAX_CPU_MS)


_PEER_NAMES = {
    IDEAL: "the in-house asyncio ideal",
    VFLEET_BEFORE: "vfleet-before",
    RAW_HTTP: "raw-http (plain asyncio aiohttp)",
}


def _failed(failures: list[RunFailure], scenario: str, mode: str) -> str | None:
    found = next((f for f in failures if f.scenario == scenario and f.mode == mode), None)
    return f"{MODE_TITLES[mode]} on {scenario} failed: {found.error}" if found else None


def _fast_ratio(
    results: list[RunResult], failures: list[RunFailure], other: str, floor: float
) -> Target:
    text = f"fast: vfleet shared at least {floor:g}x {_PEER_NAMES[other]}"
    if (why := _failed(failures, FAST, VFLEET_SHARED)) is not None:
        return Target(text, why, False)
    mine, theirs = _find(results, FAST, VFLEET_SHARED), _find(results, FAST, other)
    if mine is None or theirs is None or theirs.rate <= 0:
        return Target(text, "not run", None)
    ratio = mine.rate / theirs.rate
    measured = (
        f"{ratio:.2f}x ({mine.rate:,.0f} vs {theirs.rate:,.0f} records/s; steady "
        f"{mine.steady_rate:,.0f} vs {theirs.steady_rate:,.0f})"
    )
    return Target(text, measured, ratio >= floor)


def _one_worker(results: list[RunResult], failures: list[RunFailure]) -> Target:
    text = f"one vfleet worker at least {MIN_ONE_WORKER_RATE:g} records/s against one fast instance"
    if (why := _failed(failures, FAST_1, VFLEET_SHARED)) is not None:
        return Target(text, why, False)
    r = _find(results, FAST_1, VFLEET_SHARED)
    if r is None:
        return Target(text, "not run", None)
    measured = (
        f"{r.rate:,.0f} records/s ({r.steady_rate:,.0f} between 10% and 90% done; "
        f"{r.cpu_ms_per_record:.2f} ms CPU/record)"
    )
    return Target(text, measured, r.rate >= MIN_ONE_WORKER_RATE)


def _enqueue(bench: EnqueueBench | None) -> Target:
    text = (
        f"enqueue at least {MIN_ENQUEUE_RATE:,.0f} records/s stored, "
        f"producer RSS under {MAX_ENQUEUE_RSS_MB:g} MB"
    )
    if bench is None:
        return Target(text, "not run", None)
    v = bench.vfleet
    measured = f"{v.rate:,.0f} records/s over {v.items:,} records, peak RSS {v.peak_rss_mb:.0f} MB"
    met = v.rate >= MIN_ENQUEUE_RATE and v.peak_rss_mb < MAX_ENQUEUE_RSS_MB
    return Target(text, measured, met)


def _integrity(results: list[RunResult], failures: list[RunFailure]) -> Target:
    text = "zero lost and zero duplicated records in every vfleet run, failure included"
    runs = [r for r in results if r.mode in INTEGRITY_MODES]
    broken = [f"{f.scenario} {f.mode}" for f in failures if f.mode in INTEGRITY_MODES]
    if broken:
        return Target(text, f"run(s) did not finish: {', '.join(broken)}", False)
    if not runs:
        return Target(text, "not run", None)
    lost = sum(r.tally.lost for r in runs)
    dup = sum(r.tally.duplicated for r in runs)
    failed = sum(r.tally.failed for r in runs)
    stranded = sum(int(r.detail.get("stranded", 0)) for r in runs)
    measured = f"{lost} lost, {dup} duplicated, {failed} failed in {len(runs)} runs"
    if stranded:
        measured += f" ({stranded} records waited for the dead instance's revival)"
    return Target(text, measured, lost == 0 and dup == 0)


def evaluate(
    results: list[RunResult],
    enqueue: EnqueueBench | None,
    failures: list[RunFailure] | None = None,
) -> list[Target]:
    """Every target, in a fixed order (a vfleet run that failed fails the last one)."""
    failures = failures or []
    return [
        _ratio_ideal(results),
        _ratio_capacity(results),
        _fast_ratio(results, failures, IDEAL, MIN_FAST_X_IDEAL),
        _fast_ratio(results, failures, VFLEET_BEFORE, MIN_FAST_X_BEFORE),
        _fast_ratio(results, failures, RAW_HTTP, MIN_FAST_X_RAW),
        _one_worker(results, failures),
        _cpu(results),
        _enqueue(enqueue),
        _integrity(results, failures),
    ]


def verdict(target: Target) -> str:
    """``met``, ``**not met**`` or ``not run``."""
    if target.met is None:
        return "not run"
    return "met" if target.met else "**not met**"

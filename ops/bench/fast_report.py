"""The fast scenarios' part of ``BENCHMARKS.md``: their set-up, the scaling table and what
each change of the worker path bought, side by side from the same run."""

from __future__ import annotations

import math

from ops.bench.config import (
    FAST,
    FAST_SCENARIOS,
    FAST_VFLEET_ENV,
    IDEAL,
    RAW_HTTP,
    VFLEET_BEFORE,
    VFLEET_CHUNK1,
    VFLEET_SHARED,
    BenchOptions,
)
from ops.bench.measure import RunResult

# What each vfleet variant on the fast scenario is, for the "what each option bought" table.
VARIANTS = (
    (
        VFLEET_BEFORE,
        "vfleet before the worker rewrite: one record per message, Celery threads pool "
        "(one thread per slot), the sync `openai` client's low-level `post` on httpx",
    ),
    (
        VFLEET_CHUNK1,
        "this tree with `VFLEET_CHUNK_MAX=1`: the asyncio aiohttp engine and lean codec, "
        "still one record per message",
    ),
    (
        VFLEET_SHARED,
        "this tree as shipped: the aiohttp engine plus messages of a chunk of records "
        "(max-num-seqs / 2, at most 32), claimed in one UPDATE, stored in one transaction",
    ),
)


def _find(results: list[RunResult], scenario: str, mode: str) -> RunResult | None:
    return next((r for r in results if r.scenario == scenario and r.mode == mode), None)


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def _per_record(r: RunResult, key: str) -> float:
    value = r.detail.get(key)
    return 1000 * value / r.records if value is not None and r.records else math.nan


def _redis_ms(r: RunResult) -> float:
    return 1000 * r.redis_cpu / r.records if r.redis_cpu is not None and r.records else math.nan


def fast_intro(options: BenchOptions, sources: dict[str, str]) -> list[str]:
    """How the fast scenarios are set up."""
    s = options.fast_shape
    before = sources.get("before") or (
        str(options.before_tree) if options.before_tree else "not given: the mode did not run"
    )
    hedge = " ".join(f"{k}={v}" for k, v in FAST_VFLEET_ENV.items())
    return [
        f"Fast scenarios (*fast-1*, *fast*, *fast-4*): 1, 2 and 4 instances of `--max-num-seqs "
        f"{s.max_num_seqs} --ttft {s.ttft:g} --itl {s.itl:g} --time-factor-under-load "
        f"{s.time_factor:g}`, the judge spec's answers as they are (the simulator fills the "
        "answer schema with a few words; it has no option for shorter JSON answers), so that "
        "the fleet serves thousands of records/s and the client side is what limits. One "
        "`vfleet worker` per instance, concurrency "
        f"{s.max_num_seqs}, `{hedge}` for every vfleet mode there (hedged copies of a tail "
        "that lasts milliseconds would only add calls; the issue's figures of one worker were "
        f"taken without it). {options.sizes.fast_records:,} records per run. Extra modes: "
        "**raw-http**: one asyncio process posting the same judge bodies (templates compiled "
        "once) with `aiohttp` on kept-alive connections, as many lanes per instance as "
        "`max-num-seqs`, answers read with `json.loads`, no `openai` types; **vfleet shared, "
        "chunk=1**: this tree with `VFLEET_CHUNK_MAX=1`; **vfleet-before**: vfleet at "
        f"commit 151ef92, before the worker rewrite, every vfleet process of it (workers, "
        f"enqueue, export) run from the other source tree ({before}) on the same interpreter. "
        "Each vfleet variant has its own Redis and ledger and its workers stop before the "
        "next variant's start. The simulator's CPU per answer is listed beside every run: "
        "with everything on 2 shared cores, a mode can go no faster than what the simulator "
        "and the client leave each other.",
        "",
    ]


def scaling_table(results: list[RunResult]) -> list[str]:
    """Records/s and CPU per record of the fast scenario on 1, 2 and 4 instances."""
    rows = []
    for name in FAST_SCENARIOS:
        v = _find(results, name, VFLEET_SHARED)
        raw, ideal = _find(results, name, RAW_HTTP), _find(results, name, IDEAL)
        if v is None and raw is None and ideal is None:
            continue
        any_run = next(r for r in (v, raw, ideal) if r is not None)
        n = len(any_run.per_instance)
        rows.append(
            f"| {name} | {n} | {_f(any_run.capacity)} | {_f(raw.rate if raw else None)} | "
            f"{_f(ideal.rate if ideal else None)} | {_f(v.rate if v else None)} | "
            f"{_f(v.rate / n if v else None)} | {_f(v.steady_rate if v else None)} | "
            f"{_f(v.cpu_ms_per_record if v else None, '.2f')} | "
            f"{_f(_per_record(v, 'workers_cpu') if v else None, '.2f')} | "
            f"{_f(_redis_ms(v) if v else None, '.2f')} | "
            f"{_f(v.sim_ms_per_request if v else None, '.2f')} | "
            f"{_f(v.rate / raw.rate if v and raw and raw.rate else None, '.2f')} |"
        )
    if not rows:
        return []
    return [
        "### Fast scenario: scaling with instances",
        "",
        "One vfleet worker per instance. *vfleet own CPU* is the producer and the workers per "
        "record (the figure of the CPU target), *workers* the workers alone; Redis and the "
        "simulator are apart. The 2 cores are shared by every process of a run (simulator, "
        "Redis, workers, producer), so from 2 instances on the box, not the fleet, is the limit.",
        "",
        "| scenario | instances | capacity records/s | raw-http records/s | ideal records/s "
        "| vfleet records/s | vfleet records/s per worker | vfleet steady (10-90%) "
        "| vfleet own CPU ms/record | workers CPU ms/record | Redis CPU ms/record "
        "| simulator CPU ms/answer (vfleet run) | vfleet x raw-http |",
        "|" + "---|" * 13,
        *rows,
        "",
    ]


def options_table(results: list[RunResult]) -> list[str]:
    """What chunking and the aiohttp engine bought, on the fast scenario, side by side."""
    before = _find(results, FAST, VFLEET_BEFORE)
    rows = []
    for mode, what in VARIANTS:
        r = _find(results, FAST, mode)
        if r is None:
            continue
        x_before = r.rate / before.rate if before is not None and before.rate else math.nan
        rows.append(
            f"| {mode} | {what} | {r.rate:,.0f} | {_f(r.steady_rate)} | {_f(x_before, '.2f')} | "
            f"{r.cpu_ms_per_record:.2f} | {_f(_per_record(r, 'workers_cpu'), '.2f')} | "
            f"{_f(_per_record(r, 'producer_cpu'), '.2f')} | {_f(_redis_ms(r), '.2f')} | "
            f"{r.own_peak_rss_mb:.0f} |"
        )
    if not rows:
        return []
    return [
        "### What each option bought (fast, 2 instances)",
        "",
        "The same records on the same fleet in the same run. chunk=1 against vfleet-before is "
        "what the asyncio aiohttp engine and the lean codec bought; vfleet shared against "
        "chunk=1 is what messages of several records bought.",
        "",
        "| mode | what it is | records/s | steady (10-90%) | x vfleet-before "
        "| own CPU ms/record | workers CPU ms/record | producer CPU ms/record "
        "| Redis CPU ms/record | peak RSS MB |",
        "|" + "---|" * 10,
        *rows,
        "",
    ]

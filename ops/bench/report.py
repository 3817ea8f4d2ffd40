"""``BENCHMARKS.md``: the targets, the results tables, the plots; other sections kept verbatim.

The file is rewritten on every run. Sections this harness does not own (``## Ledger at
scale``, ``## Simulator``, ``## Monitoring``) and the hand-written ``## Profiling notes`` are
carried over unchanged from the existing file, after the generated ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops.bench.config import (
    CLASSIC_SCENARIOS,
    FAST_SCENARIOS,
    MODE_TITLES,
    BenchOptions,
    classic_scenarios,
)
from ops.bench.enqueue import EnqueueBench, ProcessFigures
from ops.bench.fast_report import fast_intro, options_table, scaling_table
from ops.bench.measure import RunFailure, RunResult
from ops.bench.targets import Target, verdict

TITLE = "# Benchmarks"
KEPT_SECTIONS = ("## Profiling notes", "## Ledger at scale", "## Simulator", "## Monitoring")


@dataclass(frozen=True)
class RunMeta:
    """Where and when the benchmark ran."""

    command: str
    date: str
    machine: str
    load_start: float
    load_end: float
    duration: float
    sources: dict[str, str] = field(default_factory=dict)  # stack kind -> other source tree


def kept_sections(existing: str) -> str:
    """The sections of ``existing`` this harness must keep, verbatim, in their order."""
    out: list[str] = []
    keep = False
    for line in existing.splitlines(keepends=True):
        if line.startswith("## "):
            keep = line.startswith(KEPT_SECTIONS)
        elif line.startswith("# "):
            keep = False
        if keep:
            out.append(line)
    return "".join(out).rstrip() + "\n" if out else ""


def _f(value: float, fmt: str = ".2f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, fmt)


def _targets_table(targets: list[Target]) -> list[str]:
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {t.text} | {t.measured} | {verdict(t)} |" for t in targets]
    return lines


def _results_table(results: list[RunResult]) -> list[str]:
    head = (
        "| scenario | mode | records | wall s | records/s | x capacity | x ideal | p50 s | p99 s "
        "| call p50 s | own CPU ms/rec | peak RSS MB | failed | lost | dup | extra answers |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in results:
        t = r.tally
        lines.append(
            f"| {r.scenario} | {MODE_TITLES[r.mode]} | {r.records:,} | {r.wall:.1f} | "
            f"{r.rate:.1f} | {_f(r.ratio_capacity)} | {_f(r.ratio_ideal)} | {_f(r.p(50), '.1f')} | "
            f"{_f(r.p(99), '.1f')} | {_f(r.call_p50)} | {_f(r.cpu_ms_per_record, '.1f')} | "
            f"{r.own_peak_rss_mb:.0f} | {t.failed} | {t.lost} | {t.duplicated} | "
            f"{r.extra_answers} |"
        )
    return lines


def _resources_table(results: list[RunResult]) -> list[str]:
    head = (
        "| scenario | mode | capacity records/s | steady records/s (10-90%) | own CPU s "
        "| simulators CPU s | simulator CPU ms/answer | Redis CPU s | RSS MB, all own processes "
        "| answers per instance |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        shares = " / ".join(f"{v:.0f}" for v in r.per_instance)
        redis = "-" if r.redis_cpu is None else f"{r.redis_cpu:.1f}"
        lines.append(
            f"| {r.scenario} | {MODE_TITLES[r.mode]} | {r.capacity:.1f} | "
            f"{_f(r.steady_rate, '.1f')} | {r.own_cpu:.1f} | {r.sim_cpu:.1f} | "
            f"{_f(r.sim_ms_per_request, '.2f')} | {redis} | {r.own_rss_total_mb:.0f} | {shares} |"
        )
    return lines


def _enqueue_rows(fig: ProcessFigures, unit: str) -> str:
    return (
        f"| {fig.label} | {fig.items:,} {unit} | {fig.wall:.1f} | {fig.rate:,.0f} {unit}/s | "
        f"{fig.cpu:.1f} | {fig.peak_rss_mb:.0f} | {fig.published:,} | {fig.redis_mb:.1f} |"
    )


def _enqueue_section(bench: EnqueueBench | None) -> list[str]:
    if bench is None:
        return []
    lines = [
        "## Enqueue",
        "",
        f"A {bench.records:,}-record JSONL (judge records). `vfleet enqueue` stores every record "
        "in the SQLite ledger, then publishes only the first window to Redis: the workers feed "
        "the rest as they drain, so its rate is records *stored* per second over the whole "
        "process (start-up included). The baseline is a plain loop of Celery `apply_async` calls, "
        "one message per record with the record as argument, straight into Redis with no "
        "ledger; its rate is messages per second over the loop alone (imports and connection "
        "excluded), on the head of the same file. They do different work: vfleet's figure buys "
        "a durable ledger and a bounded Redis; the loop's buys neither.",
        "",
        "| process | work | wall s | rate | CPU s | peak RSS MB | messages in Redis "
        "| Redis MB after |",
        "|---|---|---|---|---|---|---|---|",
        _enqueue_rows(bench.vfleet, "records"),
    ]
    if bench.celery is not None:
        lines.append(_enqueue_rows(bench.celery, "messages"))
    return [*lines, ""]


def _intro(options: BenchOptions, meta: RunMeta) -> list[str]:
    lines = [
        "## vfleet against the seeds' thread pool, the client-side ideals and the fleet's capacity",
        "",
        f"Reproduce: `{meta.command}` ({'quick size' if options.quick else 'full size'}; "
        f"took {meta.duration / 60:.1f} min). Machine: {meta.machine}; load average "
        f"{meta.load_start:.1f} at the start and {meta.load_end:.1f} at the end; {meta.date}. "
        "The box is shared with other engineers' test runs, so every figure is noisy; "
        "re-run at a quiet moment before quoting one.",
        "",
    ]
    if any(name in CLASSIC_SCENARIOS for name in options.scenarios):
        lines += _classic_intro(options)
    if any(name in FAST_SCENARIOS for name in options.scenarios):
        lines += fast_intro(options, meta.sources)
    return [*lines, *_columns(options)]


def _classic_intro(options: BenchOptions) -> list[str]:
    s, z = options.shape, options.sizes
    return [
        f"Classic fleet: {s.instances} simulated vLLM instances in one `python -m ops.sim` "
        f"process, `--max-num-seqs {s.max_num_seqs} --ttft {s.ttft:g} --itl {s.itl:g} "
        f"--time-factor-under-load {s.time_factor:g}`. Every mode sends the same request: vfleet's "
        "`judge` spec (system prompt, user template, `temperature 0`, `max_tokens 512`, "
        "`response_format` json_schema); the simulator's answer is a function of the body, so "
        "every mode gets the same answer lengths. Scenarios: "
        + "; ".join(
            f"*{sc.name}*: {sc.title}"
            for sc in classic_scenarios(s).values()
            if sc.name in options.scenarios
        )
        + ". The failure is `POST /sim/kill` on the last instance (engine dead: `/health` 503, "
        "completions 500) once 30% of the batch has succeeded, the same trigger in every mode.",
        "",
        "Modes: **vfleet shared** and **vfleet round-robin** (`vfleet enqueue --route ... "
        "--no-reuse`, so that each run does the work rather than reuse an earlier run's identical "
        "results; one "
        f"`vfleet worker` per instance, concurrency {s.max_num_seqs}, SQLite ledger, private "
        "Redis; `VFLEET_REQUEST_TIMEOUT=30 RETRY_BACKOFF_BASE=0.5 RETRY_BACKOFF_MAX=5 "
        "RECONCILE_GRACE=10`); **seeds A**: `ThreadPoolExecutor(max_workers=instances)` with "
        "the seeds' lock-protected round-robin `openai.OpenAI` clients, results to JSONL, an "
        "error drops the record; **seeds B**: the same with `ThreadPoolExecutor(5)`, the seeds' "
        "default; **ideal**: one asyncio process, `AsyncOpenAI` per instance with as many lanes "
        "as `max-num-seqs`, pulling from one in-memory deque, retrying elsewhere on error "
        "(no queue, no store).",
        "",
        f"Sizes: {z.records:,} records per vfleet and ideal run; {z.baseline_records:,} per "
        "seeds run (with 4 or 5 requests in flight against a fleet that takes "
        f"{s.instances * s.max_num_seqs}, a full batch would take the seeds many minutes; their "
        "rate is steady from the first seconds, so the smaller sample measures it).",
        "",
    ]


def _columns(options: BenchOptions) -> list[str]:
    s = options.shape
    return [
        "What the columns mean: *wall* runs from launching the producer (`vfleet enqueue`) or "
        "the client process to the last completion, start-up included in every mode. *p50/p99* "
        "are per-record times from that launch to the record's completion (vfleet: the ledger's "
        "`finished_at`), i.e. when half and 99% of the batch were done. *call p50* is the median "
        "time of the final LLM call (vfleet: the task's `latency_ms`). *x capacity*: records/s "
        "over the fleet's capacity, sum over instances of `max-num-seqs / (nominal latency x "
        "load factor)`, nominal latency = `ttft + (mean answer tokens - 1) x itl` (times the "
        "`--slow` factor), load factor the simulator's full-batch "
        f"{s.time_factor:g}; with the failure, the time-weighted capacity before and after the "
        "kill. *own CPU*: vfleet's processes (the enqueue process whole, plus the workers' CPU "
        "during the batch, from psutil including children) or the client process (from "
        "`wait4`), per record; simulators and Redis are listed apart. *peak RSS*: the largest "
        "single own process. *failed*: ended by an error (the seeds drop it: no result); "
        "*lost*: no final state at all; *dup*: more than one result for a key; *extra answers*: "
        "answers the simulators produced beyond the records that succeeded.",
        "",
    ]


def render(
    options: BenchOptions,
    meta: RunMeta,
    targets: list[Target],
    results: list[RunResult],
    failures: list[RunFailure],
    enqueue: EnqueueBench | None,
    plots: list[Path],
    existing: str,
) -> str:
    """The whole ``BENCHMARKS.md``."""
    lines = [TITLE, "", "Targets, from the run below:", "", *_targets_table(targets), ""]
    if results or failures:
        lines += _intro(options, meta)
        lines += ["### Results", "", *_results_table(results), ""]
        lines += [
            f"Run **failed**: {f.scenario} {MODE_TITLES[f.mode]}: {f.error}" for f in failures
        ]
        lines += [""] if failures else []
        lines += ["### Resources and work split", "", *_resources_table(results), ""]
        lines += scaling_table(results)
        lines += options_table(results)
        lines += ["### Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    lines += _enqueue_section(enqueue)
    kept = kept_sections(existing)
    return "\n".join(lines).rstrip() + "\n" + ("\n" + kept if kept else "")


def _jsonable(r: RunResult) -> dict[str, Any]:
    data = asdict(r)
    data.pop("latencies")
    data.update(
        rate=r.rate,
        steady_rate=r.steady_rate,
        ratio_capacity=r.ratio_capacity,
        ratio_ideal=r.ratio_ideal,
        p50=r.p(50),
        p99=r.p(99),
        cpu_ms_per_record=r.cpu_ms_per_record,
        extra_answers=r.extra_answers,
    )
    return data


def write_json(
    path: Path,
    meta: RunMeta,
    results: list[RunResult],
    failures: list[RunFailure],
    enqueue: EnqueueBench | None,
) -> Path:
    """Every figure as JSON (``bench-results.json``), NaN written as null."""
    doc = {
        "meta": asdict(meta),
        "runs": [_jsonable(r) for r in results],
        "failed_runs": [asdict(f) for f in failures],
        "enqueue": asdict(enqueue) if enqueue is not None else None,
    }
    text = json.dumps(doc, indent=1, default=str).replace("NaN", "null")
    path.write_text(text + "\n", encoding="utf-8")
    return path

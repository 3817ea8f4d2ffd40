"""The fast scenario's parts: its capacity, the raw-http client, the targets it is judged by."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ops.bench.config import (
    ALL_MODES,
    FAST,
    FAST_1,
    FAST_4,
    FAST_MODES,
    RAW_HTTP,
    VFLEET_BEFORE,
    VFLEET_SHARED,
    BenchOptions,
    fast_scenarios,
)
from ops.bench.measure import Ledgerish, RunFailure, RunResult, capacity
from ops.bench.outcome import OutcomeWriter
from ops.bench.raw_http import BodyMaker, RawHttpClient
from ops.bench.report import kept_sections
from ops.bench.runner import stack_kinds
from ops.bench.targets import evaluate, verdict
from ops.bench.workload import JudgePrompt, iter_records
from ops.sim.launcher import SimFleet

pytestmark = pytest.mark.timeout(60)


def _result(scenario: str, mode: str, ok: int, wall: float, cpu: float) -> RunResult:
    return RunResult(
        scenario=scenario,
        mode=mode,
        records=ok,
        wall=wall,
        tally=Ledgerish(ok=ok, failed=0, lost=0, duplicated=0),
        latencies=[wall * (i + 1) / ok for i in range(ok)],
        call_p50=0.01,
        mean_tokens=20.0,
        own_cpu=cpu,
        own_peak_rss_mb=100.0,
        own_rss_total_mb=200.0,
        sim_cpu=1.0,
        redis_cpu=0.1,
        per_instance=[ok / 2, ok / 2],
    )


def test_fast_scenarios_have_1_2_and_4_instances_and_2_serve_800_records_per_second() -> None:
    table = fast_scenarios()
    assert [table[n].shape.instances for n in (FAST_1, FAST, FAST_4)] == [1, 2, 4]
    # Judge answers are 15-30 tokens on the simulator; 80 leaves a wide margin.
    assert capacity(table[FAST], 80, 10_000) >= 800
    assert set(FAST_MODES) <= set(table[FAST].modes)
    assert all(s.vfleet_env.get("VFLEET_HEDGE") == "false" for s in table.values())


def test_the_before_mode_runs_only_with_a_source_tree(tmp_path: Path) -> None:
    without = BenchOptions.build(tmp_path)
    assert VFLEET_BEFORE not in {m for k in stack_kinds(without) for m in k.modes}
    with_tree = BenchOptions.build(tmp_path, before_tree=tmp_path)
    kinds = {k.name: k for k in stack_kinds(with_tree)}
    assert kinds["before"].source_tree == tmp_path
    assert kinds["chunk1"].env == {"VFLEET_CHUNK_MAX": "1"}
    assert set(ALL_MODES) >= {m for k in kinds.values() for m in k.modes}


def test_raw_http_bodies_are_the_ones_every_mode_sends() -> None:
    prompt = JudgePrompt.load()
    maker = BodyMaker(prompt, "m")
    for record in iter_records(3):
        assert json.loads(maker.body(record)) == prompt.request("m", record)


async def test_raw_http_client_judges_every_record_once() -> None:
    records = list(iter_records(40))
    out = io.StringIO()
    with SimFleet(instances=2, extra_args=["--ttft", "0.001", "--itl", "0.0001"]) as fleet:
        client = RawHttpClient(fleet.urls, JudgePrompt.load(), "sim-model", OutcomeWriter(out))
        await client.run(records, concurrency=4, time_limit=30)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted(str(r["id"]) for r in records)
    assert all(r["ok"] and r["tokens"] for r in rows)
    assert {r["instance"] for r in rows} == {0, 1}


def test_fast_targets_are_judged_and_missing_modes_are_not_run() -> None:
    results = [
        _result(FAST, VFLEET_SHARED, 10_000, 10.0, 20.0),
        _result(FAST, RAW_HTTP, 10_000, 2.0, 10.0),
        _result(FAST_1, VFLEET_SHARED, 10_000, 20.0, 24.0),
    ]
    by_text = {t.text: t for t in evaluate(results, None, [])}
    raw = next(t for text, t in by_text.items() if "raw-http" in text)
    assert raw.met is True and raw.measured.startswith("0.20x")
    before = next(t for text, t in by_text.items() if "vfleet-before" in text)
    assert verdict(before) == "not run"
    worker = next(t for text, t in by_text.items() if "one vfleet worker" in text)
    assert worker.met is False and worker.measured.startswith("500 records/s")
    cpu = next(t for text, t in by_text.items() if "CPU at most 2.5 ms" in text)
    assert cpu.met is True and cpu.measured.endswith("scenarios run: fast, fast-1)")


def test_a_failed_fast_run_fails_its_targets() -> None:
    failures = [RunFailure(FAST_1, VFLEET_SHARED, "worker died")]
    worker = next(t for t in evaluate([], None, failures) if "one vfleet worker" in t.text)
    assert worker.met is False and "worker died" in worker.measured


def test_report_keeps_the_ledger_at_scale_section() -> None:
    existing = (
        "# Benchmarks\n\n## Old\n\nx\n\n## Ledger at scale\n\n| a |\n\n## Profiling notes\n\np\n"
    )
    assert kept_sections(existing) == "## Ledger at scale\n\n| a |\n\n## Profiling notes\n\np\n"

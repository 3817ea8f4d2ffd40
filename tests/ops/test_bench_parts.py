"""The benchmark's pure parts: tallies, capacity, the report's kept sections, the prompt."""

from __future__ import annotations

import math

import pytest

from ops.bench.config import FULL_SHAPE, scenarios
from ops.bench.measure import capacity, percentile, tally
from ops.bench.report import kept_sections
from ops.bench.workload import JudgePrompt, judge_record, nominal_latency
from workers.spec import load_spec, plan_requests, response_format

pytestmark = pytest.mark.timeout(30)


def test_tally_counts_failed_lost_and_duplicated_keys() -> None:
    rows = [("a", True), ("b", False), ("c", True), ("c", True), ("d", False), ("d", True)]
    t = tally(["a", "b", "c", "d", "e"], rows)
    assert (t.ok, t.failed, t.lost, t.duplicated) == (3, 1, 1, 2)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert math.isnan(percentile([], 50))


def test_capacity_counts_slow_and_dead_instances() -> None:
    table = scenarios(FULL_SHAPE)
    s = FULL_SHAPE
    one = s.max_num_seqs / (nominal_latency(20, ttft=s.ttft, itl=s.itl) * s.time_factor)
    assert capacity(table["homogeneous"], 20, 1000) == pytest.approx(4 * one)
    assert capacity(table["heterogeneous"], 20, 1000) == pytest.approx(3.25 * one)
    # 30% of the batch at 4 instances, the rest at 3.
    seconds = 300 / (4 * one) + 700 / (3 * one)
    assert capacity(table["failure"], 20, 1000) == pytest.approx(1000 / seconds)


def test_report_keeps_other_owners_sections_verbatim() -> None:
    existing = (
        "# Benchmarks\n\nold targets\n\n## Old results\n\nstale\n\n"
        "## Simulator\n\nsim text | a |\n\n### Sub\n\nmore\n\n## Monitoring\n\nmon text\n"
    )
    kept = kept_sections(existing)
    assert (
        kept == "## Simulator\n\nsim text | a |\n\n### Sub\n\nmore\n\n## Monitoring\n\nmon text\n"
    )


def test_prompt_is_the_one_vfleet_sends() -> None:
    prompt, spec = JudgePrompt.load(), load_spec("judge")
    record = judge_record(42)
    assert prompt.messages(record) == plan_requests(spec, record)[0]
    assert prompt.response_format() == response_format(spec)
    assert prompt.request("m", record)["max_tokens"] == spec.params["max_tokens"]

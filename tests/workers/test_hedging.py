"""Hedged requests in a batch's tail: which records are picked, and a real pipeline where a
slow instance's last records are run again on a fast one with one result each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.pipeline import Pipeline, judge_rows, write_jsonl
from workers.hedging import MIN_RESULTS, Running, medians, pick_hedges


def lat(**per_instance: float) -> dict[str, float]:
    return medians((name, s) for name, s in per_instance.items() for _ in range(MIN_RESULTS))


def test_a_homogeneous_fleet_hedges_nothing_on_time() -> None:
    running = [Running(1, "a", 0.1), Running(2, "b", 0.9)]
    latency = lat(a=1.0, b=1.1)
    assert pick_hedges(running, latency, candidates=["a", "b"], after=3.0, limit=10) == []


def test_a_slow_instances_fresh_records_go_to_the_fast_ones() -> None:
    latency = lat(fast1=1.0, fast2=1.2, slow=4.0)
    running = [
        Running(1, "slow", 0.5),  # 3.5 s left: a fresh run elsewhere wins
        Running(2, "slow", 3.0),  # 1 s left: not worth it
        Running(3, "fast1", 0.5),
    ]
    picked = pick_hedges(
        running, latency, candidates=["fast1", "fast2", "slow"], after=3.0, limit=10
    )
    assert picked == [(1, "fast1")]


def test_stragglers_are_hedged_and_the_limit_holds() -> None:
    latency = lat(a=1.0, b=1.0)
    running = [Running(n, "a", 5.0 + n) for n in range(5)]
    picked = pick_hedges(running, latency, candidates=["a", "b"], after=3.0, limit=2)
    assert len(picked) == 2 and all(target == "b" for _, target in picked)


def test_instances_without_enough_results_are_left_alone() -> None:
    latency = medians([("a", 1.0)] * MIN_RESULTS + [("slow", 9.0)])
    running = [Running(1, "slow", 0.1)]
    assert pick_hedges(running, latency, candidates=["a", "slow"], after=3.0, limit=5) == []


@pytest.mark.slow
def test_the_tail_of_a_slow_instance_is_hedged_with_one_result_each(
    redis_url: str, tmp_path: Path
) -> None:
    n = 600
    fast = ("--ttft", "0.05", "--itl", "0.002", "--output-tokens", "5-15")
    with Pipeline(
        tmp_path,
        redis_url,
        instances=2,
        concurrency=8,
        sim_args=fast,
        per_instance_args={1: ("--ttft", "3.0")},
    ) as p:
        p.enqueue(write_jsonl(tmp_path / "tail.jsonl", judge_rows(n, prefix="t")), "tail")
        p.wait_done("tail", n)
        recs = p.records("tail")
    statuses = Counter(r.status for r in recs)
    assert statuses == {"succeeded": n}
    assert len({r.key for r in recs}) == n
    hedged = [r for r in recs if (r.provenance or {}).get("hedged_from")]
    # The slow instance's last records were finished by the fast one, not waited for.
    assert hedged, "no record of the slow instance's tail was hedged"
    assert all(r.instance == "sim-1" and r.provenance["hedged_from"] == "sim-2" for r in hedged)

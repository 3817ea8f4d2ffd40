"""Figures of one run: throughput, latency percentiles, CPU, memory, losses and duplicates.

Definitions used throughout the report:

* *wall*: from launching the producer (``vfleet enqueue``) or the client process to the last
  record's completion; process start-up is included in every mode.
* *record latency*: from that same launch to the record's completion (for vfleet, the
  ledger's ``finished_at``), so p50 is when half the batch was done.
* *lost*: a record with no final state (vfleet) or no line at all (clients);
  *failed*: a record an error ended (clients keep no result; vfleet keeps it as ``failed``);
  *duplicated*: a record with more than one result line or row;
  *extra answers*: answers the simulators produced beyond the records that succeeded
  (work done twice, or answers nobody kept).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ops.bench.config import FleetShape, Scenario
from ops.bench.workload import nominal_latency


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Ledgerish:
    """Per-record end states of a run, whatever the mode: key -> (ok, done_at offset)."""

    ok: int
    failed: int
    lost: int
    duplicated: int


def tally(expected: Iterable[str], rows: Iterable[tuple[str, bool]]) -> Ledgerish:
    """Count ``rows`` (key, ok) against the ``expected`` keys."""
    lines: Counter[str] = Counter()
    ok_keys: set[str] = set()
    for key, ok in rows:
        lines[key] += 1
        if ok:
            ok_keys.add(key)
    keys = set(expected)
    seen = keys & set(lines)
    return Ledgerish(
        ok=len(ok_keys & keys),
        failed=len(seen - ok_keys),
        lost=len(keys - seen),
        duplicated=sum(n - 1 for n in lines.values() if n > 1),
    )


def capacity(scenario: Scenario, mean_tokens: float, records: int) -> float:
    """Records/s the simulated fleet can sustain for answers of ``mean_tokens``.

    An instance runs ``max-num-seqs`` requests at once, each taking the nominal latency
    times the full-batch load factor. With a failure, the batch runs at full capacity up
    to the kill and without the dead instance after it: the figure is the average rate of a
    client that keeps every live slot busy all the time (no start-up, no tail).
    """
    s: FleetShape = scenario.shape
    rates = [
        s.max_num_seqs
        / (
            nominal_latency(mean_tokens, ttft=s.ttft, itl=s.itl, slow=scenario.slow_factor(i))
            * s.time_factor
        )
        for i in range(s.instances)
    ]
    full = sum(rates)
    if scenario.kill_index is None:
        return full
    after = full - rates[scenario.kill_index]
    before_n = scenario.kill_fraction * records
    seconds = before_n / full + (records - before_n) / after
    return records / seconds


@dataclass(frozen=True)
class RunFailure:
    """A run that did not finish: the harness reports it and goes on."""

    scenario: str
    mode: str
    error: str


@dataclass
class RunResult:
    """Everything measured in one (scenario, mode) run."""

    scenario: str
    mode: str
    records: int
    wall: float
    tally: Ledgerish
    latencies: list[float]  # seconds from launch to each successful record's completion
    call_p50: float  # median duration of the final HTTP call / task (seconds)
    mean_tokens: float
    own_cpu: float  # seconds: producer + workers, or the client process
    own_peak_rss_mb: float  # the largest single own process
    own_rss_total_mb: float  # the own processes' peaks added up
    sim_cpu: float
    redis_cpu: float | None
    per_instance: list[float]  # answers produced by each instance during the run
    capacity: float = 0.0
    kill_at: float | None = None  # seconds from launch
    detail: dict[str, float] = field(default_factory=dict)
    ideal_rate: float | None = None

    @property
    def rate(self) -> float:
        """Successful records per second of wall time."""
        return self.tally.ok / self.wall if self.wall > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        """Records/s between 10% and 90% of the completions (start-up and tail left out)."""
        done = sorted(self.latencies)
        if len(done) < 10:
            return math.nan
        lo, hi = done[len(done) // 10], done[(9 * len(done)) // 10]
        return (len(done) * 0.8) / (hi - lo) if hi > lo else math.nan

    @property
    def cpu_ms_per_record(self) -> float:
        return 1000 * self.own_cpu / self.records if self.records else math.nan

    @property
    def sim_ms_per_request(self) -> float:
        """The simulator's own CPU per answer it produced, in ms."""
        answers = sum(self.per_instance)
        return 1000 * self.sim_cpu / answers if answers > 0 else math.nan

    @property
    def extra_answers(self) -> int:
        return max(0, round(sum(self.per_instance)) - self.tally.ok)

    @property
    def ratio_capacity(self) -> float:
        return self.rate / self.capacity if self.capacity else math.nan

    @property
    def ratio_ideal(self) -> float:
        return self.rate / self.ideal_rate if self.ideal_rate else math.nan

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

"""One run of one mode on a scenario's fleet: launch, trigger the failure, measure, tally.

Client modes (the seeds' pools, the ideal) run in a ``python -m ops.bench.clients``
subprocess; vfleet modes run ``vfleet enqueue`` against workers already started and poll the
ledger read-only until every record is final. Either way the clock starts when the producer
or client process is launched, and the failure (``POST /sim/kill``) fires once 30% of the
batch has succeeded.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.bench.clients import IDEAL as CLIENT_IDEAL
from ops.bench.clients import POOL as CLIENT_POOL
from ops.bench.clients import RAW as CLIENT_RAW
from ops.bench.clients import meta_path
from ops.bench.config import IDEAL, RAW_HTTP, SEEDS_A, SEEDS_B_THREADS, VFLEET_RR, Scenario
from ops.bench.errors import BenchRunError
from ops.bench.fleet import SimBench, http_post
from ops.bench.measure import RunResult, capacity, tally
from ops.bench.procs import Child, RssSampler, cpu_seconds
from ops.bench.stack import VfleetStack, check_worker_logs, parse_time

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
_CLIENT_OF = {IDEAL: CLIENT_IDEAL, RAW_HTTP: CLIENT_RAW}  # the seeds' modes: the pool
_TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class RunSpec:
    """What one run processes and where it writes."""

    scenario: Scenario
    sims: SimBench
    workdir: Path
    records_file: Path
    records: int
    timeout: float
    stall_timeout: float = 20.0

    @property
    def kill_after(self) -> int:
        """Successes after which the doomed instance is killed (0: no failure)."""
        if self.scenario.kill_index is None:
            return 0
        return max(1, math.ceil(self.scenario.kill_fraction * self.records))

    def expected_keys(self) -> list[str]:
        with self.records_file.open(encoding="utf-8") as fh:
            return [str(json.loads(line)["id"]) for line in fh if line.strip()]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_client_mode(spec: RunSpec, mode: str) -> RunResult:
    """Run ``mode`` (ideal, raw-http, seeds-a or seeds-b) in a client subprocess; measure it."""
    sims = spec.sims
    out = spec.workdir / f"{mode}.jsonl"
    argv = [
        sys.executable, "-m", "ops.bench.clients",
        "--mode", _CLIENT_OF.get(mode, CLIENT_POOL),
        "--urls", ",".join(sims.urls),
        "--model", sims.model,
        "--records", str(spec.records_file),
        "--out", str(out),
        "--threads", str(len(sims.urls) if mode == SEEDS_A else SEEDS_B_THREADS),
        "--concurrency", str(spec.scenario.shape.max_num_seqs),
        "--time-limit", f"{spec.timeout:g}",
    ]  # fmt: skip
    kill_url = sims.kill_url()
    if kill_url is not None:
        argv += ["--kill-url", kill_url, "--kill-after", str(spec.kill_after)]
    before, sim_cpu0 = sims.counts(), cpu_seconds(sims.pid)
    child = Child(mode, argv, log=spec.workdir / f"{mode}.log").start()
    usage = child.wait(spec.timeout + 60)
    if usage.exit_code != 0:
        raise BenchRunError(f"{mode} client exited with {usage.exit_code}; see {child.log}")
    after, sim_cpu1 = sims.counts(), cpu_seconds(sims.pid)
    rows = _read_jsonl(out)
    meta = json.loads(meta_path(out).read_text(encoding="utf-8"))
    t0 = child.started_at
    ok_rows = [r for r in rows if r["ok"]]
    latencies = [r["t_done"] - t0 for r in ok_rows]
    kill_at = meta.get("kill_fired_at")
    return RunResult(
        scenario=spec.scenario.name,
        mode=mode,
        records=spec.records,
        wall=max((r["t_done"] for r in rows), default=t0) - t0,
        tally=tally(spec.expected_keys(), ((str(r["key"]), bool(r["ok"])) for r in rows)),
        latencies=latencies,
        call_p50=_median([r["call_s"] for r in ok_rows]),
        mean_tokens=_mean([r["tokens"] for r in ok_rows if r["tokens"]]),
        own_cpu=usage.cpu,
        own_peak_rss_mb=usage.peak_rss_mb,
        own_rss_total_mb=usage.peak_rss_mb,
        sim_cpu=sim_cpu1 - sim_cpu0,
        redis_cpu=None,
        per_instance=[b - a for a, b in zip(before, after, strict=True)],
        kill_at=kill_at - t0 if kill_at else None,
    )


@dataclass
class _Watch:
    """What happened while a vfleet batch ran."""

    kill_at: float | None = None
    stranded: int = 0  # records still not final when progress stopped after the failure
    revived_at: float | None = None


def _revive_if_stalled(spec: RunSpec, watch: _Watch, final: int, idle: float) -> None:
    """Revive the dead engine when nothing finished for ``stall_timeout`` after the failure.

    Records routed to a dead instance's own queue wait for it (round-robin); reviving it
    shows whether they were kept (finished later) or lost.
    """
    if watch.kill_at is None or watch.revived_at is not None or idle < spec.stall_timeout:
        return
    watch.stranded = spec.records - final
    watch.revived_at = time.time()
    logger.warning("%s records waited %.0fs after the failure: reviving", watch.stranded, idle)
    spec.sims.revive_all()


def _wait_batch(spec: RunSpec, stack: VfleetStack, batch: str, enqueue: Child) -> _Watch:
    """Poll the ledger until every record is final; fire the failure on the way."""
    deadline = time.monotonic() + spec.timeout
    kill_url, watch = spec.sims.kill_url(), _Watch()
    last_final, last_change = -1, time.monotonic()
    while True:
        succeeded, final = stack.ledger.terminal(batch)
        if kill_url is not None and watch.kill_at is None and succeeded >= spec.kill_after:
            watch.kill_at = time.time()
            http_post(kill_url)
        if final >= spec.records:
            return watch
        if final != last_final:
            last_final, last_change = final, time.monotonic()
        _revive_if_stalled(spec, watch, final, time.monotonic() - last_change)
        if enqueue.usage is not None and enqueue.usage.exit_code != 0:
            raise BenchRunError(f"vfleet enqueue exited with {enqueue.usage.exit_code}")
        if time.monotonic() > deadline:
            raise BenchRunError(
                f"{batch}: {final} of {spec.records} records final after {spec.timeout:g}s"
            )
        check_worker_logs(stack)
        enqueue.sample()
        enqueue.running()  # reaps it once it exits
        time.sleep(POLL_INTERVAL)


def _cpu(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


def run_vfleet_mode(spec: RunSpec, stack: VfleetStack, mode: str) -> RunResult:
    """Enqueue the records with ``--route shared`` or ``round-robin`` and measure the batch."""
    route = "round-robin" if mode == VFLEET_RR else "shared"
    batch = f"{spec.scenario.name}-{mode}"
    sims = spec.sims
    pids = stack.worker_pids()
    redis_pid = stack.redis_pid
    before, cpu0 = sims.counts(), _cpu([*pids, sims.pid, redis_pid or 0])
    enqueue = stack.child(
        f"enqueue-{batch}",
        [
            "enqueue", str(spec.records_file), "--spec", "judge", "--batch", batch,
            "--key", "id", "--route", route, "--no-reuse", "--json",
        ],
        log=spec.workdir / f"{mode}-enqueue.log",
    ).start()  # fmt: skip
    t0 = enqueue.started_at
    with RssSampler([*pids, enqueue.pid]) as rss:
        watch = _wait_batch(spec, stack, batch, enqueue)
    usage = enqueue.wait(120)
    sims.settle()  # the dropped copies of hedged records finish: counted as extra answers
    after, cpu1 = sims.counts(), _cpu([*pids, sims.pid, redis_pid or 0])
    exported = spec.workdir / f"{mode}-export.jsonl"
    stack.cli(["export", batch, "-o", str(exported)])
    rows = _read_jsonl(exported)
    final = [r for r in rows if r["status"] in _TERMINAL]
    ok_rows = [r for r in final if r["status"] == "succeeded"]
    finished = [t for r in ok_rows if (t := parse_time(r["finished_at"])) is not None]
    delta = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    worker_cpu = sum(delta[: len(pids)])
    peaks = [rss.peaks[p] for p in pids] + [max(usage.peak_rss_mb, rss.peaks[enqueue.pid])]
    return RunResult(
        scenario=spec.scenario.name,
        mode=mode,
        records=spec.records,
        wall=max(finished, default=t0) - t0,
        tally=tally(
            spec.expected_keys(), ((str(r["key"]), r["status"] == "succeeded") for r in final)
        ),
        latencies=[t - t0 for t in finished],
        call_p50=_median([r["latency_ms"] / 1000 for r in ok_rows if r["latency_ms"] is not None]),
        mean_tokens=_mean([r["completion_tokens"] for r in ok_rows if r["completion_tokens"]]),
        own_cpu=usage.cpu + worker_cpu,
        own_peak_rss_mb=max(peaks),
        own_rss_total_mb=sum(peaks),
        sim_cpu=delta[len(pids)],
        redis_cpu=delta[len(pids) + 1] if redis_pid else None,
        per_instance=[b - a for a, b in zip(before, after, strict=True)],
        kill_at=watch.kill_at - t0 if watch.kill_at else None,
        detail={
            "producer_cpu": usage.cpu,
            "producer_peak_rss_mb": usage.peak_rss_mb,
            "workers_cpu": worker_cpu,
            "stranded": watch.stranded,
            "revived_at": watch.revived_at - t0 if watch.revived_at else math.nan,
        },
    )


def finish_capacity(result: RunResult, scenario: Scenario) -> RunResult:
    """Fill in the fleet's capacity for the answer lengths this run saw."""
    if not math.isnan(result.mean_tokens):
        result.capacity = capacity(scenario, result.mean_tokens, result.records)
    return result

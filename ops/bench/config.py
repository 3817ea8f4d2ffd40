"""What a benchmark runs: the scenarios (simulated fleets), the modes and the sizes.

Two sizes: the full one (``vfleet bench``: every scenario, about 25 minutes on a quiet 2-core
box) and ``--quick`` (CI: the failure scenario only, which exercises every classic mode, the
kill and the revival, on a 2-instance fleet with short latencies and ~100 records; under 2
minutes).

Two families of scenarios: the *classic* ones (homogeneous, heterogeneous, failure: a fleet
of slow instances, where the fleet is the limit) and the *fast* ones (``fast-1``, ``fast``,
``fast-4``: 1, 2 and 4 instances with many slots and very short answers, where the client
side is the limit). Each scenario names the modes that run on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

# Modes: vfleet through its CLI, the seeds' thread pools, and the client-side ideals.
IDEAL = "ideal"
RAW_HTTP = "raw-http"
SEEDS_A = "seeds-a"
SEEDS_B = "seeds-b"
VFLEET_SHARED = "vfleet-shared"
VFLEET_RR = "vfleet-rr"
VFLEET_CHUNK1 = "vfleet-chunk1"  # this tree's vfleet with VFLEET_CHUNK_MAX=1
VFLEET_BEFORE = "vfleet-before"  # vfleet from another source tree (--before-tree)
CLIENT_MODES = (IDEAL, RAW_HTTP, SEEDS_A, SEEDS_B)
VFLEET_MODES = (VFLEET_SHARED, VFLEET_RR)  # this tree's vfleet as shipped: the targets' vfleet
STACK_MODES = (VFLEET_SHARED, VFLEET_RR, VFLEET_CHUNK1, VFLEET_BEFORE)  # through a VfleetStack
ALL_MODES = (
    VFLEET_SHARED, VFLEET_RR, VFLEET_CHUNK1, VFLEET_BEFORE, SEEDS_A, SEEDS_B, IDEAL, RAW_HTTP,
)  # fmt: skip
CLASSIC_MODES = (VFLEET_SHARED, VFLEET_RR, SEEDS_A, SEEDS_B, IDEAL)
FAST_MODES = (VFLEET_SHARED, VFLEET_CHUNK1, VFLEET_BEFORE, IDEAL, RAW_HTTP)
SCALING_MODES = (VFLEET_SHARED, RAW_HTTP)  # fast-1, fast-4: the ideal only on fast
MODE_TITLES = {
    VFLEET_SHARED: "vfleet shared",
    VFLEET_RR: "vfleet round-robin",
    VFLEET_CHUNK1: "vfleet shared, chunk=1",
    VFLEET_BEFORE: "vfleet-before (151ef92)",
    SEEDS_A: "seeds A: pool(instances) + rr",
    SEEDS_B: "seeds B: pool(5) + rr",
    IDEAL: "ideal: asyncio, sem/instance",
    RAW_HTTP: "raw-http: asyncio aiohttp",
}
SEEDS_B_THREADS = 5

HOMOGENEOUS = "homogeneous"
HETEROGENEOUS = "heterogeneous"
FAILURE = "failure"
FAST_1 = "fast-1"
FAST = "fast"
FAST_4 = "fast-4"
CLASSIC_SCENARIOS = (HOMOGENEOUS, HETEROGENEOUS, FAILURE)
FAST_SCENARIOS = (FAST_1, FAST, FAST_4)
FAST_INSTANCES = {FAST_1: 1, FAST: 2, FAST_4: 4}
ALL_SCENARIOS = (*CLASSIC_SCENARIOS, *FAST_SCENARIOS)
QUICK_SCENARIOS = (FAILURE,)

SIM_MODEL = "sim-model"
DEFAULT_SEED = 11
DEFAULT_TIME_FACTOR = 1.5  # the simulator's default slow-down with a full batch
DEFAULT_SLOW_FACTOR = 4.0
DEFAULT_KILL_FRACTION = 0.3

# Settings of the vfleet workers during a run (environment of every vfleet process).
VFLEET_ENV = {
    "VFLEET_REQUEST_TIMEOUT": "30",
    "VFLEET_CONNECT_TIMEOUT": "5",
    "VFLEET_RETRY_BACKOFF_BASE": "0.5",
    "VFLEET_RETRY_BACKOFF_MAX": "5",
    "VFLEET_RECONCILE_GRACE": "10",
    "VFLEET_LOG_LEVEL": "WARNING",
}
CLIENT_TIMEOUT = 30.0  # seconds per HTTP call in the client modes, like the workers'
CLIENT_MAX_ATTEMPTS = 8  # the ideal client's attempts per record (vfleet's default too)
# Fast scenarios: hedging off. Its copies of a tail that lasts milliseconds would only add
# calls, and the measurements of one worker were made without it.
FAST_VFLEET_ENV = {"VFLEET_HEDGE": "false"}
# What the chunk=1 mode changes: one record per message, as before the worker rewrite.
CHUNK1_ENV = {"VFLEET_CHUNK_MAX": "1"}


@dataclass(frozen=True)
class FleetShape:
    """The simulated fleet every scenario starts from."""

    instances: int
    max_num_seqs: int
    ttft: float
    itl: float
    time_factor: float = DEFAULT_TIME_FACTOR


@dataclass(frozen=True)
class Scenario:
    """One simulated fleet and what happens to it during a run."""

    name: str
    title: str
    shape: FleetShape
    slow: dict[int, float] = field(default_factory=dict)  # instance index -> factor
    kill_index: int | None = None  # instance whose engine dies (POST /sim/kill)
    kill_fraction: float = DEFAULT_KILL_FRACTION  # ... after this share of records completed
    modes: tuple[str, ...] = CLASSIC_MODES  # the modes that run on this scenario
    vfleet_env: dict[str, str] = field(default_factory=dict)  # VFLEET_* of its vfleet modes
    fast: bool = False  # sized by Sizes.fast_records

    def runs(self, mode: str) -> bool:
        """Whether ``mode`` runs on this scenario."""
        return mode in self.modes

    def slow_factor(self, index: int) -> float:
        """How many times slower instance ``index`` is."""
        return self.slow.get(index, 1.0)

    def sim_args(self, ports: list[int], seed: int) -> list[str]:
        """Command-line options of ``python -m ops.sim`` for this scenario."""
        s = self.shape
        args = [
            "--model", SIM_MODEL,
            "--max-num-seqs", str(s.max_num_seqs),
            "--ttft", f"{s.ttft:g}",
            "--itl", f"{s.itl:g}",
            "--time-factor-under-load", f"{s.time_factor:g}",
            "--seed", str(seed),
        ]  # fmt: skip
        for index, factor in sorted(self.slow.items()):
            args += ["--slow", f"{ports[index]}:{factor:g}"]
        return args


@dataclass(frozen=True)
class Sizes:
    """How much work each part of the benchmark does."""

    records: int  # per vfleet and ideal run
    fast_records: int  # per run of a fast scenario
    baseline_records: int  # per seeds run: 4-5 requests in flight are slow on purpose
    enqueue_records: int  # the enqueue benchmark's file
    celery_messages: int  # the plain apply_async loop
    run_timeout: float  # seconds before a run is abandoned
    stall_timeout: float  # seconds without progress after a failure before reviving


FULL_SHAPE = FleetShape(instances=4, max_num_seqs=32, ttft=0.2, itl=0.04)
QUICK_SHAPE = FleetShape(instances=2, max_num_seqs=8, ttft=0.05, itl=0.005)
# Many slots, answers of a few milliseconds: 2 instances serve thousands of records/s.
FAST_SHAPE = FleetShape(instances=2, max_num_seqs=128, ttft=0.005, itl=0.0005)
FULL_SIZES = Sizes(
    records=3000,
    fast_records=10_000,
    baseline_records=120,
    enqueue_records=1_000_000,
    celery_messages=50_000,
    run_timeout=420.0,
    stall_timeout=30.0,
)
QUICK_SIZES = Sizes(
    records=120,
    fast_records=1000,
    baseline_records=16,
    enqueue_records=10_000,
    celery_messages=2_000,
    run_timeout=60,
    stall_timeout=8.0,
)


def fast_scenarios(shape: FleetShape = FAST_SHAPE) -> dict[str, Scenario]:
    """The fast scenarios: ``shape`` with 1, 2 and 4 instances, hedging off."""
    table = {}
    for name, n in FAST_INSTANCES.items():
        table[name] = Scenario(
            name,
            f"{n} fast instance{'s' if n > 1 else ''} ({shape.max_num_seqs} slots, short answers)",
            replace(shape, instances=n),
            modes=FAST_MODES if name == FAST else SCALING_MODES,
            vfleet_env=dict(FAST_VFLEET_ENV),
            fast=True,
        )
    return table


def scenarios(shape: FleetShape, fast_shape: FleetShape = FAST_SHAPE) -> dict[str, Scenario]:
    """Every scenario: the three classic ones on a fleet of ``shape``, then the fast ones."""
    return {**classic_scenarios(shape), **fast_scenarios(fast_shape)}


def classic_scenarios(shape: FleetShape) -> dict[str, Scenario]:
    """The three classic scenarios on a fleet of ``shape``."""
    last = shape.instances - 1
    return {
        HOMOGENEOUS: Scenario(HOMOGENEOUS, "homogeneous fleet", shape),
        HETEROGENEOUS: Scenario(
            HETEROGENEOUS,
            f"one instance {DEFAULT_SLOW_FACTOR:g}x slower",
            shape,
            slow={last: DEFAULT_SLOW_FACTOR},
        ),
        FAILURE: Scenario(
            FAILURE,
            f"one instance dies at {DEFAULT_KILL_FRACTION:.0%} of the batch",
            shape,
            kill_index=last,
        ),
    }


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``run`` needs; built by the CLI."""

    output_dir: Path
    workdir: Path | None = None  # None: a temporary directory, removed afterwards
    quick: bool = False
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    modes: tuple[str, ...] = ALL_MODES
    fleet_runs: bool = True
    enqueue_run: bool = True
    sizes: Sizes = FULL_SIZES
    shape: FleetShape = FULL_SHAPE
    fast_shape: FleetShape = FAST_SHAPE
    seed: int = DEFAULT_SEED
    before_tree: Path | None = None  # source tree of the vfleet-before mode

    def scenario_table(self) -> dict[str, Scenario]:
        """Every scenario these options can run, by name."""
        return scenarios(self.shape, self.fast_shape)

    @classmethod
    def build(cls, output_dir: Path, *, quick: bool = False, **overrides: object) -> BenchOptions:
        """Options for the full or the quick size, with ``overrides`` applied."""
        base = cls(
            output_dir=output_dir,
            quick=quick,
            scenarios=QUICK_SCENARIOS if quick else ALL_SCENARIOS,
            sizes=QUICK_SIZES if quick else FULL_SIZES,
            shape=QUICK_SHAPE if quick else FULL_SHAPE,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

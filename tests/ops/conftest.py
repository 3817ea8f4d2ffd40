"""Fixtures for the simulator tests: fleets started as real subprocesses on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ops.sim.launcher import SimFleet

FleetFactory = Callable[..., SimFleet]


@pytest.fixture
def start_sim() -> Iterator[FleetFactory]:
    """Start ``SimFleet(instances=, base_port=, extra_args=args)``; all stop at teardown."""
    fleets: list[SimFleet] = []

    def start(*args: str, instances: int = 1, base_port: int | None = None) -> SimFleet:
        fleet = SimFleet(instances=instances, base_port=base_port, extra_args=args).start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


@pytest.fixture(scope="session")
def fast_sim() -> Iterator[SimFleet]:
    """One instance with small latencies and seed 7, shared by tests that only read from it."""
    with SimFleet(extra_args=["--ttft", "0.01", "--itl", "0.001", "--seed", "7"]) as fleet:
        yield fleet

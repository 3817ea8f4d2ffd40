"""``python -m ops.sim`` as a process: options, readiness, startup delay and clean stop."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import pytest

from ops.sim.launcher import SimFleet, free_ports
from tests.ops.conftest import FleetFactory
from tests.ops.simtools import http


def run_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.sim", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output-tokens", "5-2"], "--output-tokens: MIN must not exceed MAX"),
        (["--fail-kinds", "bogus"], "--fail-kinds: unknown kind 'bogus'"),
        (["--instances", "0"], "--instances: must be at least 1"),
        (["--instances", "two"], "'--instances'"),
        (["--slow", "18004"], "--slow: expected PORT:FACTOR"),
        (["--fail-rate", "1.5"], "--fail-rate: must be between 0 and 1"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_option_is_one_line_on_stderr_and_exit_2(args: list[str], message: str) -> None:
    result = run_sim(*args)
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vfleet sim: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_and_exit_2_and_sigint_stops_cleanly(
    start_sim: FleetFactory,
) -> None:
    fleet = start_sim()
    result = run_sim("--port", str(fleet.ports[0]))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vfleet sim: error: cannot listen on http://127.0.0.1:{fleet.ports[0]}: "
        "Address already in use"
    ]
    fleet.process.send_signal(signal.SIGINT)
    assert fleet.process.wait(timeout=10) == 0
    assert "Traceback" not in fleet.output()


def test_health_is_503_during_startup_delay_then_200() -> None:
    port = free_ports(1)[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.sim", "--port", str(port), "--startup-delay", "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        statuses: list[int | None] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 200 not in statuses:
            with contextlib.suppress(OSError):  # not listening yet
                statuses.append(http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0])
            time.sleep(0.05)
        models_status = http("GET", f"http://127.0.0.1:{port}/v1/models")[0]
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=10)
    assert 503 in statuses
    assert statuses[-1] == 200
    assert statuses.index(503) < statuses.index(200)
    assert models_status == 200
    assert process.returncode == 0
    assert out == f"sim: serving sim-model on http://127.0.0.1:{port} (max-num-seqs 32)\n"


def test_several_instances_print_one_ready_line_each_and_stop_on_sigterm() -> None:
    fleet = SimFleet(instances=3, extra_args=["--model", "judge-7b", "--max-num-seqs", "8"])
    with fleet:
        for root in fleet.root_urls:
            assert http("GET", f"{root}/health")[0] == 200
    assert fleet.process.returncode == 0
    assert fleet.output().splitlines() == [
        f"sim: serving judge-7b on http://127.0.0.1:{port} (max-num-seqs 8)" for port in fleet.ports
    ]

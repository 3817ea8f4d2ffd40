"""The simulated fleet of a scenario: start it, read its counters, kill and revive an instance.

One simulator process serves every instance of a scenario and stays up for all its modes,
so every mode meets the very same fleet. Work done is read from each instance's Prometheus
``vllm:request_success_total`` (finished ``stop`` or ``length``; an aborted request did no
useful work).
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from ops.bench.config import SIM_MODEL, Scenario
from ops.bench.errors import BenchRunError, BenchSetupError
from ops.sim.launcher import SimFleet, free_ports

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = 5.0
HEALTH_TIMEOUT = 20.0
SETTLE_TIMEOUT = 60.0
_IN_FLIGHT = ("vllm:num_requests_running{", "vllm:num_requests_waiting{")
_SUCCESS = "vllm:request_success_total{"
_USEFUL_FINISH = ('finished_reason="stop"', 'finished_reason="length"')


def http_post(url: str, timeout: float = HTTP_TIMEOUT) -> int:
    """POST an empty body to ``url``; returns the status. Raises :class:`BenchRunError`."""
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError as e:
        raise BenchRunError(f"POST {url}: {e}") from e


def http_get(url: str, timeout: float = HTTP_TIMEOUT) -> tuple[int, str]:
    """GET ``url``; returns the status and the body (status 0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), ""
    except OSError:
        return 0, ""


def successes(metrics_text: str) -> float:
    """Requests an instance finished with an answer, from its ``/metrics`` text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(_SUCCESS) and any(f in line for f in _USEFUL_FINISH):
            total += float(line.rsplit(" ", 1)[1])
    return total


def in_flight(metrics_text: str) -> float:
    """Requests an instance is running or queueing, from its ``/metrics`` text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(_IN_FLIGHT):
            total += float(line.rsplit(" ", 1)[1])
    return total


class SimBench:
    """The scenario's simulator process (a context manager)."""

    def __init__(self, scenario: Scenario, *, seed: int, log_dir: Path) -> None:
        self.scenario = scenario
        n = scenario.shape.instances
        self.ports = free_ports(n)
        self.names = [f"sim-{i + 1}" for i in range(n)]
        self.fleet = SimFleet(
            instances=n,
            base_port=self.ports[0],
            extra_args=scenario.sim_args(self.ports, seed),
            log_path=log_dir / f"sim-{scenario.name}.log",
        )

    @property
    def urls(self) -> list[str]:
        """OpenAI base URLs, in instance order."""
        return self.fleet.urls

    @property
    def root_urls(self) -> list[str]:
        return self.fleet.root_urls

    @property
    def pid(self) -> int:
        return self.fleet.process.pid

    @property
    def model(self) -> str:
        return SIM_MODEL

    def kill_url(self) -> str | None:
        """The admin URL that kills the scenario's doomed instance, if any."""
        index = self.scenario.kill_index
        return None if index is None else f"{self.root_urls[index]}/sim/kill"

    def counts(self) -> list[float]:
        """Answered requests per instance so far (cumulative)."""
        out = []
        for root in self.root_urls:
            status, text = http_get(f"{root}/metrics")
            if status != 200:
                raise BenchRunError(f"{root}/metrics answered {status}")
            out.append(successes(text))
        return out

    def settle(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until no instance runs or queues a request (bounded by ``timeout``): calls
        whose answers were dropped (a hedged record's slower copy) finish inside the run
        that sent them, and count as its extra answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = 0.0
            for root in self.root_urls:
                status, text = http_get(f"{root}/metrics")
                if status == 200:
                    busy += in_flight(text)
            if busy == 0:
                return
            time.sleep(0.2)
        logger.warning("simulators still busy %.0fs after the batch ended", timeout)

    def revive_all(self) -> None:
        """Bring every killed engine back and wait until every ``/health`` answers 200."""
        if self.scenario.kill_index is None:
            return
        http_post(f"{self.root_urls[self.scenario.kill_index]}/sim/revive")
        deadline = time.monotonic() + HEALTH_TIMEOUT
        for root in self.root_urls:
            while http_get(f"{root}/health", timeout=1.0)[0] != 200:
                if time.monotonic() > deadline:
                    raise BenchRunError(f"{root} not healthy after revive")
                time.sleep(0.1)

    def __enter__(self) -> SimBench:
        try:
            self.fleet.start()
        except Exception as e:
            raise BenchSetupError(f"simulator for {self.scenario.name}: {e}") from e
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.fleet.stop()


def write_fleet_file(
    path: Path, names: list[str], urls: list[str], *, model: str, concurrency: int
) -> Path:
    """A vfleet fleet file naming the instances; returns ``path``."""
    lines = ["# written by vfleet bench", ""]
    for name, url in zip(names, urls, strict=True):
        lines += [
            "[[instances]]",
            f'name = "{name}"',
            f'base_url = "{url}"',
            f'model = "{model}"',
            f"concurrency = {concurrency}",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

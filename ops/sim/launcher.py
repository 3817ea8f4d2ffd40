"""Start a simulator process for tests, the demo and benchmarks.

::

    with SimFleet(instances=2, extra_args=["--ttft", "0"]) as fleet:
        client = openai.OpenAI(base_url=fleet.urls[0], api_key="sim")
"""

from __future__ import annotations

import http.client
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from ops.sim.config import DEFAULT_HOST
from ops.sim.errors import SimStartError

DEFAULT_STARTUP_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_PORT_RANGE = (20000, 60000)
_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_PORT_ATTEMPTS = 200
_TAIL_CHARS = 2000


def _port_is_free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_range() -> tuple[int, int]:
    """Where to pick server ports: below the kernel's ephemeral range when there is room.

    A port in that range can be handed to an outgoing connection as its source port while
    the server is still starting, and a probe of a port nobody listens on yet can even
    connect to itself (TCP simultaneous open: it reads back its own ``GET /health``)."""
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _PORT_RANGE
    if low - _PORT_RANGE[0] >= 1000:
        return (_PORT_RANGE[0], low)
    return _PORT_RANGE


def free_ports(n: int, host: str = DEFAULT_HOST) -> list[int]:
    """``n`` consecutive TCP ports free on ``host`` right now (see :func:`port_range`).

    Raises:
        SimStartError: no such run of ports found.
    """
    rng = random.Random()
    lo, hi = port_range()
    for _ in range(_PORT_ATTEMPTS):
        first = rng.randrange(lo, hi - n)
        ports = list(range(first, first + n))
        if all(_port_is_free(port, host) for port in ports):
            return ports
    raise SimStartError(f"found no {n} consecutive free ports on {host}")


def _health(url: str) -> int | None:
    """The status of ``GET url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):  # e.g. BadStatusLine: not a server yet
        return None


class SimFleet:
    """A ``python -m ops.sim`` subprocess serving ``instances`` ports; a context manager."""

    def __init__(
        self,
        *,
        instances: int = 1,
        base_port: int | None = None,
        extra_args: Sequence[str] = (),
        host: str = DEFAULT_HOST,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        log_path: Path | None = None,
    ) -> None:
        self.instances = instances
        self.host = host
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.ports: list[int] = (
            list(range(base_port, base_port + instances)) if base_port is not None else []
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._final_output = ""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The simulator process (after ``start``)."""
        if self._process is None:
            raise SimStartError("the fleet is not started")
        return self._process

    @property
    def root_urls(self) -> list[str]:
        """``http://host:port`` per instance (for ``/health``, ``/metrics``, ``/sim/...``)."""
        return [f"http://{self.host}:{port}" for port in self.ports]

    @property
    def urls(self) -> list[str]:
        """OpenAI base URLs per instance: ``http://host:port/v1``."""
        return [f"{root}/v1" for root in self.root_urls]

    def command(self) -> list[str]:
        """The command line that starts the simulator."""
        return [
            sys.executable, "-m", "ops.sim",
            "--instances", str(self.instances),
            "--base-port", str(self.ports[0]),
            "--host", self.host,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> SimFleet:
        """Start the process and wait until every instance's ``/health`` answers 200.

        Raises:
            SimStartError: the process exited or was not healthy in time (with its output's tail).
        """
        if not self.ports:
            self.ports = free_ports(self.instances, self.host)
        if self.log_path is not None:
            self._log = self.log_path.open("w+b")
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop() / kill()
        self._process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = [f"{root}/health" for root in self.root_urls]
        while pending:
            code = self.process.poll()
            if code is not None:
                raise SimStartError(f"simulator exited with {code}: {self.output_tail()}")
            if time.monotonic() > deadline:
                raise SimStartError(
                    f"simulator not healthy after {self.startup_timeout:g}s: {self.output_tail()}"
                )
            pending = [url for url in pending if _health(url) != 200]
            if pending:
                time.sleep(_POLL_INTERVAL)

    def output(self) -> str:
        """Everything the simulator wrote to stdout and stderr so far (also after ``stop``)."""
        if self._log is None or self._log.closed:
            return self._final_output
        self._log.flush()
        position = self._log.tell()
        try:
            self._log.seek(0)
            return self._log.read().decode(errors="replace")
        finally:
            self._log.seek(position)

    def output_tail(self) -> str:
        """The last characters of ``output()``, stripped."""
        return self.output()[-_TAIL_CHARS:].strip()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if the process outlives ``timeout`` seconds."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the process and wait for it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._final_output = self.output()
            self._log.close()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["SimFleet", "SimStartError", "free_ports"]

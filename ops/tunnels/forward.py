"""One forward: a local listening socket whose connections are carried over SSH channels.

::

    tunnel = Tunnel("127.0.0.1", 8001, opener=lambda h, p: pool.open_channel("gpu1", h, p))
    with tunnel:
        openai.OpenAI(base_url=tunnel.local_url + "/v1", api_key="x")

Each accepted connection asks ``opener(remote_host, remote_port)`` for a socket-like channel
(a paramiko ``direct-tcpip`` channel, so the address is as seen from the SSH server) and a
daemon pump thread copies bytes both ways until both sides are done. The listening socket
outlives SSH reconnects: clients keep the same local URL.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ops.errors import OpsError
from ops.tunnels.errors import TunnelBindError, TunnelError

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
DEFAULT_BACKLOG = 64
_POLL = 0.5
_CHUNK = 65536
_JOIN = 5.0

Opener = Callable[[str, int], Any]


class Tunnel:
    """``LOCAL_HOST:local_port`` → ``remote_host:remote_port`` through ``opener``'s channels.

    ``local_port`` 0 takes any free port. Loopback only: the listening socket is never
    bound to another address.
    """

    def __init__(
        self,
        remote_host: str,
        remote_port: int,
        *,
        opener: Opener,
        local_port: int = 0,
        name: str | None = None,
    ) -> None:
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.opener = opener
        self.name = name or f"{remote_host}:{remote_port}"
        self._requested_port = local_port
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pumps: dict[threading.Thread, list[Any]] = {}
        self.connections = 0  # accepted so far
        self.failures = 0  # connections whose channel could not be opened

    @property
    def local_port(self) -> int:
        if self._listener is None:
            raise TunnelError(f"tunnel {self.name} is not started")
        return int(self._listener.getsockname()[1])

    @property
    def local_url(self) -> str:
        """``http://127.0.0.1:<local port>`` (no ``/v1``)."""
        return f"http://{LOCAL_HOST}:{self.local_port}"

    @property
    def active(self) -> int:
        """Connections being carried right now."""
        with self._lock:
            return len(self._pumps)

    def start(self) -> Tunnel:
        """Bind and listen, then accept in a daemon thread. Raises :class:`TunnelBindError`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCAL_HOST, self._requested_port))
            sock.listen(DEFAULT_BACKLOG)
        except OSError as e:
            sock.close()
            raise TunnelBindError(
                f"cannot listen on {LOCAL_HOST}:{self._requested_port} for {self.name}: "
                f"{e.strerror or e}"
            ) from e
        sock.settimeout(_POLL)
        self._listener = sock
        self._accepter = threading.Thread(
            target=self._accept_loop, name=f"vfleet-tunnel-{self.local_port}", daemon=True
        )
        self._accepter.start()
        logger.info("forwarding %s → %s", self.local_url, self.name)
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed under us: we are stopping
            self.connections += 1
            pump = threading.Thread(
                target=self._carry, args=(conn,), name=f"vfleet-pump-{self.local_port}", daemon=True
            )
            with self._lock:
                self._pumps[pump] = [conn]
            pump.start()

    def _carry(self, conn: socket.socket) -> None:
        me = threading.current_thread()
        chan: Any = None
        try:
            chan = self._open(conn)
            if chan is not None:
                _pump(conn, chan, self._stop)
        finally:
            with self._lock:
                self._pumps.pop(me, None)
            _close(conn)
            if chan is not None:
                _close(chan)

    def _open(self, conn: socket.socket) -> Any:
        try:
            chan = self.opener(self.remote_host, self.remote_port)
        except (OpsError, OSError, EOFError) as e:
            self.failures += 1
            logger.warning("%s: cannot open a channel: %s", self.name, e)
            return None
        with self._lock:
            held = self._pumps.get(threading.current_thread())
            if held is not None:
                held.append(chan)
        return chan

    def close(self) -> None:
        """Stop accepting, cut every carried connection, join the threads."""
        self._stop.set()
        if self._listener is not None:
            _close(self._listener)
        with self._lock:
            pumps = list(self._pumps.items())
        for _thread, held in pumps:
            for end in held:
                _close(end)
        for thread, _held in pumps:
            thread.join(_JOIN)
        if self._accepter is not None:
            self._accepter.join(_JOIN)

    def __enter__(self) -> Tunnel:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _pump(conn: socket.socket, chan: Any, stop: threading.Event) -> None:
    """Copy bytes both ways; a side's EOF is passed on as a half-close; return when both
    sides are done, on an error, or when ``stop`` is set."""
    open_ends: list[Any] = [conn, chan]
    while open_ends and not stop.is_set():
        try:
            readable, _, _ = select.select(open_ends, [], [], _POLL)
        except (OSError, ValueError):
            return  # an end was closed under us
        for src in readable:
            dst = chan if src is conn else conn
            try:
                data = src.recv(_CHUNK)
                if data:
                    dst.sendall(data)
                    continue
                open_ends.remove(src)
                _shutdown_write(dst)
            except (OSError, EOFError):
                return


def _shutdown_write(end: Any) -> None:
    try:
        if isinstance(end, socket.socket):
            end.shutdown(socket.SHUT_WR)
        else:
            end.shutdown_write()
    except (OSError, EOFError):
        pass


def _close(end: Any) -> None:
    with contextlib.suppress(OSError, EOFError):
        end.close()

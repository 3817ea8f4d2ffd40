"""A forward that looks after itself: SSH re-opened with backoff, the server probed.

::

    with SupervisedTunnel("gpu1", "127.0.0.1", 8001, ssh_pool=pool) as fwd:
        fwd.wait_up(30)
        print(fwd.local_url, fwd.status.model)

A daemon thread checks every ``check_interval`` seconds: it asks the pool for the host's
connection (the pool replaces a dead one) and GETs ``/v1/models`` through a channel. States:

- ``up``: the server answered ``/v1/models`` (``model`` is its first model)
- ``server-gone``: SSH works but the server does not answer (stopped, crashed, not yet up)
- ``ssh-down``: the host cannot be reached; retried after 0.5 s, 1 s, 2 s ... up to
  ``backoff_max``
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType

from ops.endpoint import DEFAULT_HTTP_TIMEOUT, ChannelHttp, ProbeError, models_url, read_models
from ops.ssh.errors import SSHError
from ops.ssh.pool import SSHPool
from ops.tunnels.forward import Tunnel

logger = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL = 5.0
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 30.0
_JOIN = 10.0

STARTING, UP, SERVER_GONE, SSH_DOWN, STOPPED = (
    "starting", "up", "server-gone", "ssh-down", "stopped",
)  # fmt: skip


@dataclass(frozen=True)
class ForwardStatus:
    """What the supervisor last saw."""

    state: str = STARTING
    model: str | None = None
    detail: str | None = None
    since: float = 0.0
    reconnects: int = 0


class SupervisedTunnel:
    """A :class:`Tunnel` to ``remote_host:remote_port`` as seen from SSH host ``alias``."""

    def __init__(
        self,
        alias: str,
        remote_host: str,
        remote_port: int,
        *,
        ssh_pool: SSHPool,
        local_port: int = 0,
        name: str | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        backoff_initial: float = DEFAULT_BACKOFF_INITIAL,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        on_change: Callable[[SupervisedTunnel], None] | None = None,
    ) -> None:
        self.alias = alias
        self.pool = ssh_pool
        self.name = name or f"{alias}-{remote_port}"
        self.tunnel = Tunnel(
            remote_host, remote_port, opener=self._open_channel, local_port=local_port, name=name
        )
        self.check_interval = check_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_change = on_change
        self._http = ChannelHttp(self._open_channel, timeout=http_timeout)
        self._status = ForwardStatus(since=time.time())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: object | None = None
        self._backoff = backoff_initial

    # -- what callers read ---------------------------------------------------------------

    @property
    def remote_host(self) -> str:
        return self.tunnel.remote_host

    @property
    def remote_port(self) -> int:
        return self.tunnel.remote_port

    @property
    def local_port(self) -> int:
        return self.tunnel.local_port

    @property
    def local_url(self) -> str:
        return self.tunnel.local_url

    @property
    def status(self) -> ForwardStatus:
        with self._lock:
            return self._status

    def wait_state(self, states: tuple[str, ...], timeout: float) -> ForwardStatus:
        """Block until the state is one of ``states`` or ``timeout`` passes; the status."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._status.state not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._status

    def wait_up(self, timeout: float) -> bool:
        """True once the server answered through the tunnel, False after ``timeout``."""
        return self.wait_state((UP,), timeout).state == UP

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> SupervisedTunnel:
        """Listen locally, check once now, then supervise in a daemon thread.

        Raises :class:`ops.tunnels.errors.TunnelBindError`; an unreachable host or server
        is a state, not an error.
        """
        self.tunnel.start()
        delay = self._check()
        self._thread = threading.Thread(
            target=self._run, args=(delay,), name=f"vfleet-supervise-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_JOIN)
        self.tunnel.close()
        self._set(STOPPED, self._status.model, None)

    def __enter__(self) -> SupervisedTunnel:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the supervising thread ----------------------------------------------------------

    def _open_channel(self, host: str, port: int) -> object:
        return self.pool.open_channel(self.alias, host, port)

    def _run(self, delay: float) -> None:
        while not self._stop.wait(delay):
            delay = self._check()

    def _check(self) -> float:
        """One look; returns the seconds until the next (backoff while SSH is down)."""
        try:
            self._ensure_connected()
        except SSHError as e:
            self._set(SSH_DOWN, self._status.model, e.reason)
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.backoff_max)
            return delay
        self._backoff = self.backoff_initial
        base = f"http://{self.remote_host}:{self.remote_port}/v1"
        try:
            model, _ = read_models(self._http.get(models_url(base)))
        except ProbeError as e:
            self._set(SERVER_GONE, self._status.model, str(e))
        else:
            self._set(UP, model, None)
        return self.check_interval

    def _ensure_connected(self) -> None:
        transport = self.pool.client(self.alias).get_transport()
        if self._transport is not None and transport is not self._transport:
            with self._lock:
                self._status = replace(self._status, reconnects=self._status.reconnects + 1)
            logger.warning("%s: SSH connection to %s re-opened", self.name, self.alias)
        self._transport = transport

    def _set(self, state: str, model: str | None, detail: str | None) -> None:
        with self._changed:
            old = self._status
            changed = (old.state, old.model) != (state, model)
            self._status = replace(
                old,
                state=state,
                model=model,
                detail=detail,
                since=time.time() if changed else old.since,
            )
            self._changed.notify_all()
        if changed:
            log = logger.info if state in (UP, STOPPED) else logger.warning
            log("%s: %s → %s%s", self.name, old.state, state, f" ({detail})" if detail else "")
            if self.on_change is not None:
                self.on_change(self)

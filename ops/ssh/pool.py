"""Pooled SSH connections with keepalive, reconnect, per-host timeouts and bounded fan-out.

::

    with SSHPool(ssh_config=SSHConfigFile(), known_hosts=KnownHosts()) as pool:
        results = pool.run_many(["gpu1", "gpu2"], "nvidia-smi -L")
        for host, r in results.items():
            print(host, r.value.stdout if r.ok else r.error)

One connection per alias, reused across scans; a dead connection is replaced on next use.
Each host's work runs in a thread of a bounded pool, and every step on it (TCP connect,
banner, auth, command) has a timeout, so a dead or silent host never holds up the others.

A command is bounded on the host itself too: it runs under coreutils ``timeout`` (TERM at
the command timeout, KILL ``kill_after`` seconds later), because closing the SSH channel
does not stop a command that never writes (a hung ``nvidia-smi``): without it, every scan of
such a host would leave its processes behind.
"""

from __future__ import annotations

import logging
import re
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Generic, TypeVar

import paramiko

from ops.ssh.config import HostOverrides, SSHConfigFile, SSHTarget
from ops.ssh.defaults import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_KILL_AFTER,
    DEFAULT_PARALLELISM,
)
from ops.ssh.errors import (
    CommandTimeoutError,
    RemoteCommandError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
)
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.translate import translate

logger = logging.getLogger(__name__)

_MAX_JUMPS = 8
_POLL = 0.05
_READ = 65536
# What coreutils timeout exits with: the command timed out (TERM), or it had to be KILLed.
TIMED_OUT_STATUSES = (124, 137)
NOT_FOUND_STATUS = 127
# The client waits this much longer than the host's own bound before giving up itself.
_CLIENT_MARGIN = 2.0
_NO_TIMEOUT_BINARY = re.compile(r"\btimeout: (command )?not found")


def bounded(command: str, seconds: float, kill_after: float = DEFAULT_KILL_AFTER) -> str:
    """``command`` as the host runs it: under ``timeout``, in a POSIX sh (whatever the login
    shell), its whole process group TERMed after ``seconds`` and KILLed ``kill_after``
    seconds later."""
    return f"timeout -k {kill_after:g} {seconds:g} sh -c {shlex.quote(command)}"


T = TypeVar("T")


@dataclass(frozen=True)
class CommandResult:
    """What a remote command printed and how it exited."""

    host: str
    exit_status: int
    stdout: str
    stderr: str
    elapsed: float


@dataclass(frozen=True)
class HostResult(Generic[T]):
    """One host's outcome in a fan-out: a value or the error that stopped it."""

    host: str
    value: T | None = None
    error: SSHError | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class SSHPool:
    """SSH clients by alias, created on first use and kept until :meth:`close`."""

    def __init__(
        self,
        *,
        ssh_config: SSHConfigFile | None = None,
        known_hosts: KnownHosts | None = None,
        hosts: Mapping[str, HostOverrides] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        kill_after: float = DEFAULT_KILL_AFTER,
        keepalive: int = DEFAULT_KEEPALIVE,
        parallelism: int = DEFAULT_PARALLELISM,
        allow_agent: bool = True,
    ) -> None:
        self.ssh_config = ssh_config or SSHConfigFile()
        self.known_hosts = known_hosts or KnownHosts()
        self.hosts = dict(hosts or {})
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.kill_after = kill_after
        self.keepalive = keepalive
        self.parallelism = max(1, parallelism)
        self.allow_agent = allow_agent
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # -- connections ---------------------------------------------------------------------

    def target(self, alias: str) -> SSHTarget:
        """Where ``alias`` leads: the SSH config with the fleet file's fields on top."""
        return self.ssh_config.resolve(alias, self.hosts.get(alias))

    def client(self, alias: str) -> paramiko.SSHClient:
        """A connected client for ``alias`` (pooled). Raises :class:`SSHError`."""
        return self._pooled(alias, lambda: self.target(alias))[0]

    def _pooled(
        self, key: str, make_target: Callable[[], SSHTarget], depth: int = 0
    ) -> tuple[paramiko.SSHClient, bool]:
        """(client, fresh): the pooled connection under ``key``, made if absent or dead."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            client = self._clients.get(key)
            if client is not None and _alive(client):
                return client, False
            if client is not None:
                logger.info("%s: pooled SSH connection is dead, reconnecting", key)
                client.close()
            client = self._connect(make_target(), depth)
            self._clients[key] = client
            return client, True

    def _connect(self, target: SSHTarget, depth: int) -> paramiko.SSHClient:
        sock = self._jump_channel(target, depth) if target.proxy_jump else None
        client = paramiko.SSHClient()
        self.known_hosts.prepare(client)
        t = self.connect_timeout
        start = time.monotonic()
        try:
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                # paramiko takes a list too; its stubs say only str.
                key_filename=list(target.key_files) or None,  # type: ignore[arg-type]
                look_for_keys=not target.identities_only,
                allow_agent=self.allow_agent,
                sock=sock,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
            )
        except Exception as e:
            client.close()
            if sock is not None:
                sock.close()
            elapsed = time.monotonic() - start
            raise translate(target, e, self.known_hosts.path, t, elapsed) from e
        transport = client.get_transport()
        if transport is not None and self.keepalive > 0:
            transport.set_keepalive(self.keepalive)
        logger.debug(
            "%s: connected to %s@%s:%s", target.alias, target.user, target.hostname, target.port
        )
        return client

    def _jump_channel(self, target: SSHTarget, depth: int) -> paramiko.Channel:
        if depth >= _MAX_JUMPS:
            raise SSHConnectError(target.alias, f"more than {_MAX_JUMPS} ProxyJump hops")
        hops = target.proxy_jump

        def hop_target() -> SSHTarget:
            last = self.ssh_config.resolve_hop(hops[-1])
            return replace(last, proxy_jump=hops[:-1]) if len(hops) > 1 else last

        jump, _ = self._pooled("jump:" + ",".join(hops), hop_target, depth + 1)
        return self._direct_tcpip(jump, target.alias, target.hostname, target.port)

    def _direct_tcpip(
        self, client: paramiko.SSHClient, alias: str, host: str, port: int
    ) -> paramiko.Channel:
        transport = client.get_transport()
        if transport is None:
            raise SSHConnectError(alias, "connection closed")
        try:
            return transport.open_channel(
                "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        except paramiko.ChannelException as e:
            raise SSHConnectError(alias, f"cannot reach {host}:{port} through SSH: {e.text}") from e
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise SSHConnectError(alias, f"channel to {host}:{port} failed: {e}") from e

    def _drop(self, key: str) -> None:
        with self._guard:
            client = self._clients.pop(key, None)
        if client is not None:
            client.close()

    def _with_reconnect(self, alias: str, use: Callable[[paramiko.SSHClient], T]) -> T:
        """``use(client)``; if a *reused* connection fails, reconnect once and try again."""
        client, fresh = self._pooled(alias, lambda: self.target(alias))
        try:
            return use(client)
        except SSHConnectError:
            if fresh:
                raise
            logger.info("%s: reused SSH connection failed, reconnecting", alias)
            self._drop(alias)
            client, _ = self._pooled(alias, lambda: self.target(alias))
            return use(client)

    # -- operations ----------------------------------------------------------------------

    def run(self, alias: str, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run ``command`` on ``alias`` (bounded there, see :func:`bounded`); return its
        output whatever its exit status.

        Raises :class:`SSHError`: connect, host key; :class:`CommandTimeoutError` when the
        command outlived ``timeout`` seconds (default ``command_timeout``) and was stopped
        on the host; :class:`RemoteCommandError` when the host has no ``timeout`` command.
        """
        limit = self.command_timeout if timeout is None else timeout
        env = dict(self.target(alias).environment)
        line = bounded(command, limit, self.kill_after)
        wait = limit + self.kill_after + _CLIENT_MARGIN
        result = self._with_reconnect(alias, lambda c: _exec(c, alias, line, wait, env))
        if result.exit_status in TIMED_OUT_STATUSES and result.elapsed >= limit * 0.9:
            raise CommandTimeoutError(
                alias, f"command did not finish in {limit:g}s; stopped on the host"
            )
        if result.exit_status == NOT_FOUND_STATUS and _NO_TIMEOUT_BINARY.search(result.stderr):
            raise RemoteCommandError(
                alias,
                "coreutils `timeout` is not installed there (it bounds every remote command)",
                exit_status=result.exit_status,
                stderr=result.stderr,
            )
        return result

    def open_channel(self, alias: str, host: str, port: int) -> paramiko.Channel:
        """A socket-like channel to ``host:port`` as seen from ``alias`` (direct-tcpip)."""
        return self._with_reconnect(alias, lambda c: self._direct_tcpip(c, alias, host, port))

    def map(
        self,
        aliases: Iterable[str],
        fn: Callable[[str], T],
        *,
        on_result: Callable[[HostResult[T]], None] | None = None,
    ) -> dict[str, HostResult[T]]:
        """``fn(alias)`` for every alias, at most ``parallelism`` at once.

        :class:`SSHError` from one host becomes that host's ``error``; results come back in
        the order ``aliases`` gave, ``on_result`` is called as each finishes.
        """
        names = list(dict.fromkeys(aliases))
        results: dict[str, HostResult[T]] = {}
        if not names:
            return results

        def one(alias: str) -> HostResult[T]:
            start = time.monotonic()
            try:
                value = fn(alias)
            except SSHError as e:
                return HostResult(alias, error=e, elapsed=time.monotonic() - start)
            return HostResult(alias, value=value, elapsed=time.monotonic() - start)

        workers = min(self.parallelism, len(names))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vfleet-ssh") as pool:
            futures = [pool.submit(one, a) for a in names]
            for future in as_completed(futures):
                result = future.result()
                results[result.host] = result
                if on_result is not None:
                    on_result(result)
        return {a: results[a] for a in names}

    def run_many(
        self,
        aliases: Iterable[str],
        command: str,
        *,
        timeout: float | None = None,
        on_result: Callable[[HostResult[CommandResult]], None] | None = None,
    ) -> dict[str, HostResult[CommandResult]]:
        """:meth:`run` on every alias in parallel (bounded); per-host results or errors."""
        return self.map(
            aliases, lambda a: self.run(a, command, timeout=timeout), on_result=on_result
        )

    def close(self) -> None:
        """Close every pooled connection."""
        with self._guard:
            clients = list(self._clients.values())
            self._clients.clear()
        # Targets before the jump hosts they ride on.
        for client in reversed(clients):
            client.close()

    def __enter__(self) -> SSHPool:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _alive(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


def _exec(
    client: paramiko.SSHClient, alias: str, command: str, timeout: float, env: dict[str, str]
) -> CommandResult:
    start = time.monotonic()
    deadline = start + timeout
    transport = client.get_transport()
    if transport is None:
        raise SSHConnectError(alias, "connection closed")
    try:
        chan = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, EOFError, OSError) as e:
        raise SSHConnectError(alias, f"cannot open a session: {e}") from e
    try:
        if env:
            chan.update_environment(env)
        chan.exec_command(command)
        out, err = _drain(chan, alias, deadline, timeout)
        status = chan.recv_exit_status()
    except (paramiko.SSHException, EOFError, OSError) as e:
        raise SSHConnectError(alias, f"command failed: {e}") from e
    finally:
        chan.close()
    return CommandResult(
        host=alias,
        exit_status=status,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        elapsed=time.monotonic() - start,
    )


def _drain(
    chan: paramiko.Channel, alias: str, deadline: float, timeout: float
) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    while True:
        if chan.recv_ready():
            out += chan.recv(_READ)
        elif chan.recv_stderr_ready():
            err += chan.recv_stderr(_READ)
        elif chan.exit_status_ready() and chan.eof_received:
            return bytes(out), bytes(err)
        elif chan.closed:
            raise SSHConnectError(alias, "channel closed before the command exited")
        elif time.monotonic() > deadline:
            # The host's own bound should have ended it by now: the host stopped answering.
            raise SSHTimeoutError(alias, f"no answer from the host within {timeout:g}s")
        else:
            try:
                select.select([chan], [], [], _POLL)
            except (OSError, ValueError):
                time.sleep(_POLL)

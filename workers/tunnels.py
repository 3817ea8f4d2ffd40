"""Instances reached through SSH (``via`` in the fleet file), as local supervised tunnels.

An instance with ``via = "gpu1"`` has a ``base_url`` on gpu1's loopback. Its worker (and
``vfleet forward``) opens an in-process tunnel through gpu1's SSH and talks to
``http://127.0.0.1:<local port>/v1`` instead; the tunnel re-opens a dropped SSH connection
by itself (:mod:`ops.tunnels.supervisor`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from ops.discover import REMOTE_LISTENERS_COMMAND, discover, parse_listeners, parse_ports
from ops.endpoint import ChannelHttp
from ops.ssh.pool import SSHPool
from ops.tunnels.supervisor import DEFAULT_CHECK_INTERVAL, SupervisedTunnel
from ops.urls import mask_url
from workers.errors import ConfigError
from workers.fleet import Fleet, InstanceConfig
from workers.scan.runtime import build_ssh_pool
from workers.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViaTarget:
    """Where a ``via`` instance's server is, as seen from its SSH host."""

    name: str
    alias: str
    remote_host: str
    remote_port: int
    model: str


def via_target(inst: InstanceConfig) -> ViaTarget:
    """The SSH host and remote address of a ``via`` instance. Raises :class:`ConfigError`."""
    if inst.via is None:
        raise ConfigError(f"instance {inst.name} has no via host")
    parts = urlsplit(inst.base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise ConfigError(
            f"instance {inst.name}: bad port in base_url {mask_url(inst.base_url)}"
        ) from e
    return ViaTarget(inst.name, inst.via, parts.hostname or "127.0.0.1", port, inst.model)


def via_targets(fleet: Fleet) -> list[ViaTarget]:
    """Every instance of ``fleet`` that names a ``via`` host."""
    return [via_target(i) for i in fleet.instances if i.via is not None]


def discover_targets(
    pool: SSHPool, hosts: Sequence[str], ports: str, *, timeout: float
) -> tuple[list[ViaTarget], dict[str, str]]:
    """Servers found on ``hosts`` (listening on ``ports``, answering ``/v1/models`` through
    SSH) as targets; and the hosts that could not be searched, with why."""
    wanted = parse_ports(ports)

    def search(alias: str) -> list[ViaTarget]:
        listeners = parse_listeners(pool.run(alias, REMOTE_LISTENERS_COMMAND).stdout)
        http = ChannelHttp(lambda h, p: pool.open_channel(alias, h, p), timeout=timeout)
        found = discover(listeners, wanted, http_client=http, host=alias)
        return [
            ViaTarget(s.name, alias, urlsplit(s.base_url).hostname or "127.0.0.1", s.port, m)
            for s in found
            for m in s.models[:1]
        ]

    results = pool.map(hosts, search)
    targets = [t for r in results.values() for t in r.value or []]
    return targets, {h: r.error.reason for h, r in results.items() if r.error is not None}


def local_base_url(base_url: str, local_port: int) -> str:
    """``base_url`` with its host and port replaced by ``127.0.0.1:<local_port>``."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{local_port}"))


class InstanceTunnel:
    """A started tunnel for one ``via`` instance; :attr:`instance` points at its local end.

    Closes the SSH pool it built (not one it was given).
    """

    def __init__(
        self,
        inst: InstanceConfig,
        fleet: Fleet,
        settings: Settings,
        *,
        ssh_pool: SSHPool | None = None,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> None:
        target = via_target(inst)
        self._own_pool = ssh_pool is None
        self.pool = ssh_pool or build_ssh_pool(settings, fleet)
        self.supervised = SupervisedTunnel(
            target.alias,
            target.remote_host,
            target.remote_port,
            ssh_pool=self.pool,
            name=inst.name,
            check_interval=check_interval,
            http_timeout=settings.http_timeout,
        )
        self.original = inst
        self.instance = inst

    def start(self) -> InstanceTunnel:
        """Open the local port (the server need not be up yet: the health gate says when).

        Raises :class:`ops.tunnels.errors.TunnelError` when no local port can be bound.
        """
        try:
            self.supervised.start()
        except BaseException:
            self.close()
            raise
        url = local_base_url(self.original.base_url, self.supervised.local_port)
        self.instance = self.original.model_copy(update={"base_url": url})
        status = self.supervised.status
        logger.info(
            "instance %s: %s via %s as %s (%s)",
            self.original.name,
            mask_url(self.original.base_url),
            self.supervised.alias,
            mask_url(url),
            status.state,
        )
        return self

    def close(self) -> None:
        self.supervised.close()
        if self._own_pool:
            self.pool.close()

    def __enter__(self) -> InstanceTunnel:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_instance_tunnel(inst: InstanceConfig, fleet: Fleet, settings: Settings) -> InstanceTunnel:
    """Start the tunnel of a ``via`` instance with the SSH settings of ``settings``."""
    return InstanceTunnel(inst, fleet, settings).start()

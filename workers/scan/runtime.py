"""What a scan worker (or a ``--live`` view) holds between scans."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from ops.ssh.config import HostOverrides, SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import CommandResult, HostResult, SSHPool
from ops.vllm_probe import VllmProbe
from workers.fleet import Fleet
from workers.scan.gpus import GpuScanSummary, scan_gpus
from workers.scan.snapshots import prune_snapshots
from workers.scan.vllm import ProbeTarget, http_for, probe_targets, scan_vllm
from workers.settings import Settings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)


def build_ssh_pool(settings: Settings, fleet: Fleet) -> SSHPool:
    """An SSH pool for ``fleet``'s hosts: ssh_config, known_hosts and fleet fields applied."""
    overrides = {
        name: HostOverrides(h.hostname, h.user, h.port, h.key_file, h.proxy_jump)
        for name, h in fleet.hosts.items()
    }
    return SSHPool(
        ssh_config=SSHConfigFile(settings.ssh_config),
        known_hosts=KnownHosts(settings.known_hosts, accept_new=settings.accept_new_host_keys),
        hosts=overrides,
        connect_timeout=settings.ssh_connect_timeout,
        command_timeout=settings.ssh_command_timeout,
        keepalive=settings.ssh_keepalive,
        parallelism=settings.ssh_parallelism,
        allow_agent=settings.ssh_agent,
    )


def build_scan_runtime(
    settings: Settings, fleet: Fleet, *, redis_client: bool = True
) -> ScanRuntime:
    """Open the ledger's engine (migrating SQLite), the SSH pool and a Redis client."""
    import redis as redis_lib

    from workers.store.opening import open_ledger

    engine = open_ledger(settings, pool_size=settings.scan_concurrency + 2).engine
    client = redis_lib.Redis.from_url(settings.broker_url) if redis_client else None
    return ScanRuntime(settings, fleet, engine, build_ssh_pool(settings, fleet), client)


@dataclass
class ScanRuntime:
    """Engine, SSH pool and Redis client, built once per process and reused by every scan."""

    settings: Settings
    fleet: Fleet
    engine: Engine
    ssh_pool: SSHPool
    redis_client: redis.Redis | None = None

    def gpu_hosts(self, hosts: Sequence[str] = ()) -> list[str]:
        return list(hosts) or list(self.fleet.hosts)

    def scan_gpus(
        self,
        hosts: Sequence[str] = (),
        *,
        on_result: Callable[[HostResult[CommandResult]], None] | None = None,
    ) -> GpuScanSummary:
        return scan_gpus(
            self.gpu_hosts(hosts),
            ssh_pool=self.ssh_pool,
            engine=self.engine,
            rule=self.settings.idle_rule,
            on_result=on_result,
        )

    def targets(self, names: Sequence[str] = ()) -> list[ProbeTarget]:
        found = probe_targets(self.fleet, tunnel_loopback=self.settings.scan_tunnel_loopback)
        return [t for t in found if t.name in names] if names else found

    def scan_vllm(
        self,
        names: Sequence[str] = (),
        *,
        on_probe: Callable[[ProbeTarget, VllmProbe], None] | None = None,
    ) -> dict[str, Any]:
        rows = scan_vllm(
            self.targets(names),
            engine=self.engine,
            http_client_for=lambda t: http_for(
                t, ssh_pool=self.ssh_pool, timeout=self.settings.http_timeout
            ),
            redis_client=self.redis_client,
            health_ttl=self.settings.health_ttl,
            parallelism=self.settings.ssh_parallelism,
            rate_window=self.settings.rate_window,
            on_probe=on_probe,
        )
        return {
            "instances": len(rows),
            "healthy": sum(1 for r in rows if r.healthy),
            "unhealthy": {r.instance: r.error for r in rows if not r.healthy},
        }

    def prune(self) -> dict[str, int]:
        return prune_snapshots(self.engine, older_than=self.settings.snapshot_retention)

    def close(self) -> None:
        self.ssh_pool.close()
        if self.redis_client is not None:
            self.redis_client.close()
        self.engine.dispose()

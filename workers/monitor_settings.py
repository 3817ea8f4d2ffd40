"""Settings of fleet monitoring (SSH, scans, beat), beside :class:`workers.settings.Settings`.

Same rules: env prefix ``VFLEET_``, built once at the entry point and passed down. Kept
apart so the monitoring work could land without touching the core settings; it may be
merged into them later.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ops.endpoint import DEFAULT_HTTP_TIMEOUT
from ops.gpu import DEFAULT_IDLE_MEMORY, DEFAULT_IDLE_SCANS, DEFAULT_IDLE_UTILIZATION, IdleRule
from ops.ssh.defaults import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_KNOWN_HOSTS,
    DEFAULT_PARALLELISM,
    DEFAULT_SSH_CONFIG,
)
from workers.errors import ConfigError

DEFAULT_GPU_SCAN_INTERVAL = 30.0
DEFAULT_VLLM_SCAN_INTERVAL = 10.0
DEFAULT_RECONCILE_INTERVAL = 15.0
DEFAULT_PRUNE_INTERVAL = 600.0
DEFAULT_SNAPSHOT_RETENTION = 7 * 24 * 3600.0
DEFAULT_BEAT_LOCK_TTL = 30.0
DEFAULT_SCAN_CONCURRENCY = 4
DEFAULT_HISTORY = 20
DEFAULT_RATE_WINDOW = 60.0
HEALTH_TTL_FACTOR = 3


class MonitorSettings(BaseSettings):
    """Everything the SSH pool, the scans and the beat read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="VFLEET_", env_file=".env", extra="ignore", validate_default=True
    )

    ssh_config: Path = DEFAULT_SSH_CONFIG
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    accept_new_host_keys: bool = False
    ssh_connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)
    ssh_command_timeout: float = Field(DEFAULT_COMMAND_TIMEOUT, gt=0)
    ssh_keepalive: int = Field(DEFAULT_KEEPALIVE, ge=0)
    ssh_parallelism: int = Field(DEFAULT_PARALLELISM, ge=1, le=256)
    ssh_agent: bool = True
    http_timeout: float = Field(DEFAULT_HTTP_TIMEOUT, gt=0)
    # Token rates are measured over at most this many seconds of recent snapshots.
    rate_window: float = Field(DEFAULT_RATE_WINDOW, gt=0)
    # A server on a host's loopback (instance with ``host`` and a 127.0.0.1 / localhost
    # base_url) is probed through an SSH channel to that host.
    scan_tunnel_loopback: bool = True

    gpu_scan_interval: float = Field(DEFAULT_GPU_SCAN_INTERVAL, gt=0)
    vllm_scan_interval: float = Field(DEFAULT_VLLM_SCAN_INTERVAL, gt=0)
    beat_reconcile_interval: float = Field(DEFAULT_RECONCILE_INTERVAL, gt=0)
    prune_interval: float = Field(DEFAULT_PRUNE_INTERVAL, gt=0)
    snapshot_retention: float = Field(DEFAULT_SNAPSHOT_RETENTION, gt=0)

    idle_utilization: float = Field(DEFAULT_IDLE_UTILIZATION, ge=0, le=100)
    idle_memory: float = Field(DEFAULT_IDLE_MEMORY, ge=0, le=100)
    idle_scans: int = Field(DEFAULT_IDLE_SCANS, ge=1)
    history: int = Field(DEFAULT_HISTORY, ge=1, le=500)

    beat_lock_ttl: float = Field(DEFAULT_BEAT_LOCK_TTL, gt=1)
    beat_schedule_file: Path = Path("celerybeat-schedule")
    beat_pidfile: Path = Path("vfleet-beat.pid")
    scan_concurrency: int = Field(DEFAULT_SCAN_CONCURRENCY, ge=1, le=64)

    @property
    def idle_rule(self) -> IdleRule:
        return IdleRule(self.idle_utilization, self.idle_memory, self.idle_scans)

    @property
    def health_ttl(self) -> int:
        """Seconds a health key lives: a few vLLM scans, so a dead scanner shows as stale."""
        return max(1, round(self.vllm_scan_interval * HEALTH_TTL_FACTOR))


def build_monitor_settings(**overrides: object) -> MonitorSettings:
    """Monitor settings from the environment with non-None ``overrides`` on top.

    Raises :class:`ConfigError` naming the bad variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return MonitorSettings(**given)  # type: ignore[arg-type]
    except ValidationError as e:
        first = e.errors()[0]
        name = "VFLEET_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"{name}: {first['msg']}") from e

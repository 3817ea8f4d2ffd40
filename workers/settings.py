"""Typed settings, built once at an entry point and passed down.

Environment variables carry the ``VFLEET_`` prefix (``VFLEET_BROKER_URL``,
``VFLEET_DATABASE_URL``, ``VFLEET_FLEET_FILE``...); a ``.env`` file in the working
directory is read too. CLI flags override settings; settings override the fleet file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ops.endpoint import DEFAULT_HTTP_TIMEOUT
from ops.gpu import DEFAULT_IDLE_MEMORY, DEFAULT_IDLE_SCANS, DEFAULT_IDLE_UTILIZATION, IdleRule
from ops.ssh.defaults import (
    DEFAULT_COMMAND_TIMEOUT as DEFAULT_SSH_COMMAND_TIMEOUT,
)
from ops.ssh.defaults import (
    DEFAULT_CONNECT_TIMEOUT as DEFAULT_SSH_CONNECT_TIMEOUT,
)
from ops.ssh.defaults import (
    DEFAULT_KEEPALIVE,
    DEFAULT_KNOWN_HOSTS,
    DEFAULT_PARALLELISM,
    DEFAULT_SSH_CONFIG,
)

# Re-exported: the one URL-masking function, where the settings code always found it.
from ops.urls import mask_url as mask_url
from workers.errors import ConfigError

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///vfleet.db"
DEFAULT_FLEET_FILE = Path("fleet.toml")
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
DEFAULT_REQUEST_TIMEOUT = 300.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_BACKOFF_BASE = 2.0
DEFAULT_RETRY_BACKOFF_MAX = 120.0
DEFAULT_LEASE = 60.0
DEFAULT_DB_RETRY = 60.0
DEFAULT_WINDOW_FACTOR = 2.0
DEFAULT_WINDOW_MIN = 64
DEFAULT_FEED_INTERVAL = 0.5
DEFAULT_RECONCILE_INTERVAL = 10.0
DEFAULT_RECONCILE_GRACE = 30.0
DEFAULT_HEALTH_INTERVAL = 1.0
DEFAULT_SHUTDOWN_GRACE = 25.0
DEFAULT_HEDGE_AFTER = 3.0
DEFAULT_CHUNK_MAX = 32
# One task may send this many requests: a pairwise swap, each with re-asks.
REQUESTS_PER_TASK_BOUND = 4
# Monitoring: SSH, scans, the beat.
DEFAULT_GPU_SCAN_INTERVAL = 30.0
DEFAULT_VLLM_SCAN_INTERVAL = 10.0
DEFAULT_BEAT_RECONCILE_INTERVAL = 15.0
DEFAULT_PRUNE_INTERVAL = 600.0
DEFAULT_SNAPSHOT_RETENTION = 7 * 24 * 3600.0
DEFAULT_BEAT_LOCK_TTL = 30.0
DEFAULT_SCAN_CONCURRENCY = 4
DEFAULT_HISTORY = 20
DEFAULT_RATE_WINDOW = 60.0
HEALTH_TTL_FACTOR = 3


class Settings(BaseSettings):
    """Everything vfleet reads from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="VFLEET_", env_file=".env", extra="ignore", validate_default=True
    )

    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = DEFAULT_DATABASE_URL
    fleet_file: Path = DEFAULT_FLEET_FILE
    visibility_timeout: float = Field(DEFAULT_VISIBILITY_TIMEOUT, gt=0)
    request_timeout: float = Field(DEFAULT_REQUEST_TIMEOUT, gt=0)
    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1)
    retry_backoff_base: float = Field(DEFAULT_RETRY_BACKOFF_BASE, gt=0)
    retry_backoff_max: float = Field(DEFAULT_RETRY_BACKOFF_MAX, gt=0)
    lease_seconds: float = Field(DEFAULT_LEASE, gt=1)
    db_retry_seconds: float = Field(DEFAULT_DB_RETRY, ge=0)
    window_factor: float = Field(DEFAULT_WINDOW_FACTOR, gt=0)
    window_min: int = Field(DEFAULT_WINDOW_MIN, ge=1)
    feed_interval: float = Field(DEFAULT_FEED_INTERVAL, gt=0)
    reconcile_interval: float = Field(DEFAULT_RECONCILE_INTERVAL, gt=0)
    reconcile_grace: float = Field(DEFAULT_RECONCILE_GRACE, ge=0)
    health_interval: float = Field(DEFAULT_HEALTH_INTERVAL, gt=0)
    shutdown_grace: float = Field(DEFAULT_SHUTDOWN_GRACE, gt=0)
    # Hedged requests in a batch's tail (workers.hedging): on/off, and how many times its
    # instance's median a record must have run to count as a straggler.
    hedge: bool = True
    hedge_after: float = Field(DEFAULT_HEDGE_AFTER, gt=1)
    # Records per message at most (workers.dispatch.chunk_size); 1 sends one per record.
    chunk_max: int = Field(DEFAULT_CHUNK_MAX, ge=1, le=256)

    # -- monitoring: the SSH pool, the scans and the beat --------------------------------
    ssh_config: Path = DEFAULT_SSH_CONFIG
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    accept_new_host_keys: bool = False
    ssh_connect_timeout: float = Field(DEFAULT_SSH_CONNECT_TIMEOUT, gt=0)
    ssh_command_timeout: float = Field(DEFAULT_SSH_COMMAND_TIMEOUT, gt=0)
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
    beat_reconcile_interval: float = Field(DEFAULT_BEAT_RECONCILE_INTERVAL, gt=0)
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

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str) -> str:
        # Plain postgresql:// would pick psycopg2, which we do not ship.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def longest_task(self) -> float:
        """An upper bound on one task's run time: every request it may send, timed out."""
        return self.request_timeout * REQUESTS_PER_TASK_BOUND + self.connect_timeout

    def check(self) -> None:
        """Raise :class:`ConfigError` when the settings cannot deliver every record.

        kombu's Redis transport restores an unacked message ``visibility_timeout`` after
        it was fetched: if a task can outlast it, the message is delivered twice while the
        first copy still runs. (Retries wait in the ledger, not in Redis, so no retry
        delay counts here.)
        """
        longest = self.longest_task
        if self.visibility_timeout <= longest:
            raise ConfigError(
                f"visibility_timeout ({self.visibility_timeout:g}s) must exceed the longest "
                f"task ({longest:g}s): raise VFLEET_VISIBILITY_TIMEOUT or lower "
                "VFLEET_REQUEST_TIMEOUT"
            )

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the non-None ``overrides`` applied (CLI flags of one command).

        Raises :class:`ConfigError` naming the bad value.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        return build_settings(**{**self.model_dump(), **given})

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain values with secrets masked."""
        data = self.model_dump(mode="json")
        data["broker_url"] = mask_url(self.broker_url)
        data["database_url"] = mask_url(self.database_url)
        return data


def build_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``.env``), with the non-None ``overrides`` on top.

    Raises :class:`ConfigError` with one line naming the bad variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as e:
        first = e.errors()[0]
        name = "VFLEET_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"{name}: {first['msg']}") from e

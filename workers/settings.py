"""Typed settings, built once at an entry point and passed down.

Environment variables carry the ``VFLEET_`` prefix (``VFLEET_BROKER_URL``,
``VFLEET_DATABASE_URL``, ``VFLEET_FLEET_FILE``...); a ``.env`` file in the working
directory is read too. CLI flags override settings; settings override the fleet file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
# One task may send this many requests: a pairwise swap, each with re-asks.
REQUESTS_PER_TASK_BOUND = 4


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

    def public_dict(self) -> dict[str, Any]:
        """The settings as plain values with secrets masked."""
        data = self.model_dump(mode="json")
        data["broker_url"] = mask_url(self.broker_url)
        data["database_url"] = mask_url(self.database_url)
        return data

"""The vLLM scan: probe every instance, store a snapshot, publish health to Redis.

Token rates come from counter deltas over a bounded recent window: against the oldest of
the instance's snapshots taken in the last ``rate_window`` seconds since its counters last
went down (a server restart starts them again from zero). With no such snapshot a rate is
unknown, never an average over an hour-old reading.

Health is :func:`ops.endpoint.check_health`'s verdict, published in the one health-key
format (:func:`workers.health.health_record`). An instance whose ``base_url`` is on
loopback and that names a ``host`` is reached through an SSH channel to that host (the
server listens only there); see :func:`probe_targets`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ops.endpoint import ChannelHttp, DirectHttp, HttpClient
from ops.ssh.pool import SSHPool
from ops.urls import mask_url
from ops.vllm_probe import VllmProbe, probe, rate
from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.health import SOURCE_SCAN, health_record
from workers.keys import health_key
from workers.store.models import VllmSnapshot, utcnow

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 16
DEFAULT_RATE_WINDOW = 60.0
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class ProbeTarget:
    """One instance to probe; ``via`` is the SSH alias to tunnel through, if any."""

    name: str
    base_url: str
    via: str | None = None
    api_key: str | None = None


def probe_targets(fleet: Fleet, *, tunnel_loopback: bool = True) -> list[ProbeTarget]:
    """The fleet's instances as probe targets.

    Rule: an instance with ``via`` is probed through SSH to that host, and so is one with
    ``host`` set and a loopback ``base_url`` (127.0.0.1, localhost, ::1); every other one
    directly.
    """
    targets = []
    for inst in fleet.instances:
        loopback = (urlsplit(inst.base_url).hostname or "") in LOOPBACK
        via = inst.via or (inst.host if tunnel_loopback and inst.host and loopback else None)
        try:
            key = inst.api_key() if inst.api_key_env else None
        except ConfigError:
            key = None
        targets.append(ProbeTarget(inst.name, inst.base_url, via, key))
    return targets


def http_for(target: ProbeTarget, *, ssh_pool: SSHPool | None, timeout: float) -> HttpClient:
    """Direct HTTP, or HTTP over an SSH channel when ``target.via`` is set."""
    if target.via is None or ssh_pool is None:
        return DirectHttp(timeout=timeout)
    via = target.via
    return ChannelHttp(lambda host, port: ssh_pool.open_channel(via, host, port), timeout=timeout)


def rate_reference(
    session: Session, instance: str, now: datetime, window: float, current: VllmProbe
) -> VllmSnapshot | None:
    """The snapshot token rates are measured against: the oldest one of ``instance`` in the
    last ``window`` seconds with no counter going down between it and ``current``."""
    m = current.metrics
    if m is None or m.prompt_tokens_total is None:
        return None
    stmt = (
        select(VllmSnapshot)
        .where(
            VllmSnapshot.instance == instance,
            VllmSnapshot.prompt_tokens_total.is_not(None),
            VllmSnapshot.taken_at >= now - timedelta(seconds=window),
        )
        .order_by(VllmSnapshot.taken_at.desc(), VllmSnapshot.id.desc())
    )
    reference = None
    later = (m.prompt_tokens_total, m.generation_tokens_total or 0.0)
    for row in session.scalars(stmt):
        counters = (row.prompt_tokens_total or 0.0, row.generation_tokens_total or 0.0)
        if counters[0] > later[0] or counters[1] > later[1]:
            break  # the server restarted after this snapshot
        reference, later = row, counters
    return reference


def snapshot_row(
    target: ProbeTarget,
    found: VllmProbe,
    previous: VllmSnapshot | None,
    *,
    taken: datetime | None = None,
) -> VllmSnapshot:
    """The snapshot of one probe, with token rates against ``previous`` (see
    :func:`rate_reference`). Credentials in the URL and errors are masked."""
    taken = taken or utcnow()
    m = found.metrics
    row = VllmSnapshot(
        taken_at=taken,
        instance=target.name,
        base_url=mask_url(target.base_url),
        healthy=found.healthy,
        model=found.model,
        max_model_len=found.max_model_len,
        error=mask_url(found.error) if found.error else None,
    )
    if m is None:
        return row
    row.running, row.waiting, row.swapped = m.running, m.waiting, m.swapped
    row.kv_cache_usage = m.kv_cache_usage
    row.prompt_tokens_total = m.prompt_tokens_total
    row.generation_tokens_total = m.generation_tokens_total
    if previous is not None:
        seconds = (taken - previous.taken_at).total_seconds()
        row.prompt_tokens_per_s = rate(m.prompt_tokens_total, previous.prompt_tokens_total, seconds)
        row.generation_tokens_per_s = rate(
            m.generation_tokens_total, previous.generation_tokens_total, seconds
        )
    return row


def health_value(row: VllmSnapshot) -> str:
    """The JSON stored under :func:`workers.keys.health_key` for a scanned instance."""
    return health_record(
        bool(row.healthy), row.error, source=SOURCE_SCAN, checked_at=row.taken_at.timestamp()
    )


def scan_vllm(
    targets: Sequence[ProbeTarget],
    *,
    engine: Engine,
    http_client_for: Callable[[ProbeTarget], HttpClient],
    redis_client: redis.Redis | None = None,
    health_ttl: int = 30,
    parallelism: int = DEFAULT_PARALLELISM,
    rate_window: float = DEFAULT_RATE_WINDOW,
    on_probe: Callable[[ProbeTarget, VllmProbe], None] | None = None,
) -> list[VllmSnapshot]:
    """Probe every target in parallel, store one snapshot each, publish health.

    Returns the stored snapshots (in ``targets`` order). Raises only what the database
    or Redis raise.
    """
    if not targets:
        return []
    start = time.monotonic()

    def one(target: ProbeTarget) -> tuple[ProbeTarget, VllmProbe, datetime]:
        found = probe(target.base_url, http_client=http_client_for(target), api_key=target.api_key)
        if on_probe is not None:
            on_probe(target, found)
        return target, found, utcnow()  # when the counters were read, for the rates

    with ThreadPoolExecutor(max_workers=min(parallelism, len(targets))) as pool:
        probes = list(pool.map(one, targets))
    rows: list[VllmSnapshot] = []
    with Session(engine, expire_on_commit=False) as session, session.begin():
        for target, found, taken in probes:
            ref = rate_reference(session, target.name, taken, rate_window, found)
            rows.append(snapshot_row(target, found, ref, taken=taken))
        session.add_all(rows)
    if redis_client is not None:
        publish_health(redis_client, rows, ttl=health_ttl)
    logger.info(
        "vLLM scan: %s/%s healthy in %.2fs",
        sum(r.healthy for r in rows),
        len(rows),
        time.monotonic() - start,
    )
    return rows


def publish_health(client: redis.Redis, rows: Sequence[VllmSnapshot], *, ttl: int) -> bool:
    """SET each instance's health key with a TTL, in one round trip.

    Returns False (and logs) when Redis is unreachable: the snapshots are stored already,
    and the keys simply expire, which the gating reads as "unknown".
    """
    from redis.exceptions import RedisError

    pipe: Any = client.pipeline(transaction=False)
    for row in rows:
        pipe.set(health_key(row.instance), health_value(row), ex=ttl)
    try:
        pipe.execute()
    except RedisError as e:
        logger.warning("could not publish health of %s instances: %s", len(rows), e)
        return False
    return True

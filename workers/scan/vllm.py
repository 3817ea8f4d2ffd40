"""The vLLM scan: probe every instance, store a snapshot, publish health to Redis.

Token rates come from counter deltas against the instance's previous snapshot in SQL.
An instance whose ``base_url`` is on loopback and that names a ``host`` is reached through
an SSH channel to that host (the server listens only there); see :func:`probe_targets`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ops.ssh.pool import SSHPool
from ops.vllm_probe import ChannelHttp, DirectHttp, HttpClient, VllmProbe, probe, rate
from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.keys import health_key
from workers.store.models import VllmSnapshot, utcnow

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

DEFAULT_PARALLELISM = 16
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


def _previous(session: Session, instance: str) -> VllmSnapshot | None:
    stmt = (
        select(VllmSnapshot)
        .where(VllmSnapshot.instance == instance, VllmSnapshot.prompt_tokens_total.is_not(None))
        .order_by(VllmSnapshot.taken_at.desc(), VllmSnapshot.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def snapshot_row(
    target: ProbeTarget, found: VllmProbe, previous: VllmSnapshot | None
) -> VllmSnapshot:
    """The snapshot of one probe, with token rates against ``previous``."""
    taken = utcnow()
    m = found.metrics
    row = VllmSnapshot(
        taken_at=taken,
        instance=target.name,
        base_url=target.base_url,
        healthy=found.healthy,
        model=found.model,
        max_model_len=found.max_model_len,
        error=found.error,
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
    """The JSON stored under :func:`workers.keys.health_key`."""
    return json.dumps(
        {"healthy": bool(row.healthy), "checked_at": row.taken_at.timestamp(), "error": row.error}
    )


def scan_vllm(
    targets: Sequence[ProbeTarget],
    *,
    engine: Engine,
    http_client_for: Callable[[ProbeTarget], HttpClient],
    redis_client: redis.Redis | None = None,
    health_ttl: int = 30,
    parallelism: int = DEFAULT_PARALLELISM,
    on_probe: Callable[[ProbeTarget, VllmProbe], None] | None = None,
) -> list[VllmSnapshot]:
    """Probe every target in parallel, store one snapshot each, publish health.

    Returns the stored snapshots (in ``targets`` order). Raises only what the database
    or Redis raise.
    """
    if not targets:
        return []
    start = time.monotonic()

    def one(target: ProbeTarget) -> tuple[ProbeTarget, VllmProbe]:
        return target, probe(
            target.base_url, http_client=http_client_for(target), api_key=target.api_key
        )

    with ThreadPoolExecutor(max_workers=min(parallelism, len(targets))) as pool:
        probes = list(pool.map(one, targets))
    rows: list[VllmSnapshot] = []
    with Session(engine, expire_on_commit=False) as session, session.begin():
        for target, found in probes:
            row = snapshot_row(target, found, _previous(session, target.name))
            rows.append(row)
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

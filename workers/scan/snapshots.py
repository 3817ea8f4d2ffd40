"""Reading snapshots back for the views, and pruning them by age."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from ops.gpu import IdleRule
from workers.scan.gpus import split_host_error, stored_judgement
from workers.store.models import GpuSnapshot, VllmSnapshot, utcnow

# A GPU's state in a view: IDLE (the rule held), WARMING (idle in the latest scans, not yet
# in as many as the rule wants), BUSY, UNKNOWN (nvidia-smi could not say).
IDLE, WARMING, BUSY, UNKNOWN = "idle", "idle?", "busy", "unknown"
HOST_OK, NEVER_SCANNED = "ok", "never-scanned"
_COUNTS = ("running", "waiting", "swapped", "max_model_len")


@dataclass
class GpuRow:
    """One GPU in the latest scan of its host, with its recent utilisation.

    ``state`` is IDLE, WARMING (``idle_scans`` of the ``scans_needed`` in a row so far),
    BUSY or UNKNOWN; ``idle`` is the stored verdict (True only for IDLE).
    """

    index: int | None
    uuid: str | None
    name: str | None
    utilization: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    temperature_c: float | None
    power_draw_w: float | None
    processes: int
    idle: bool
    history: list[float | None] = field(default_factory=list)
    state: str = BUSY
    idle_scans: int = 0
    scans_needed: int = 1
    process_list: list[dict[str, Any]] = field(default_factory=list)

    @property
    def memory_percent(self) -> float | None:
        if not self.memory_total_mib or self.memory_used_mib is None:
            return None
        return 100.0 * self.memory_used_mib / self.memory_total_mib


@dataclass
class HostGpus:
    """A host's GPUs as last seen; ``error`` (and ``state``, e.g. ``timeout``) when the last
    scan could not read them."""

    host: str
    taken_at: datetime | None
    error: str | None = None
    gpus: list[GpuRow] = field(default_factory=list)
    state: str = HOST_OK

    @property
    def failed(self) -> bool:
        """No reading of this host in its latest scan (or no scan at all)."""
        return self.state != HOST_OK

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        for g, row in zip(data["gpus"], self.gpus, strict=True):
            g["memory_percent"] = row.memory_percent
        return data


def _latest_times(session: Session, model: Any, column: Any) -> dict[str, datetime]:
    stmt = select(column, func.max(model.taken_at)).group_by(column)
    return {name: taken for name, taken in session.execute(stmt)}


def _recent(session: Session, host: str, uuid: str | None, n: int) -> list[GpuSnapshot]:
    stmt = (
        select(GpuSnapshot)
        .where(GpuSnapshot.host == host, GpuSnapshot.uuid == uuid)
        .order_by(GpuSnapshot.taken_at.desc(), GpuSnapshot.id.desc())
        .limit(n)
    )
    return list(session.scalars(stmt))


def gpu_view(
    engine: Engine,
    hosts: Sequence[str] = (),
    *,
    history: int = 20,
    rule: IdleRule | None = None,
) -> list[HostGpus]:
    """The latest scan of every host (or of ``hosts``; a host never scanned comes back with
    ``taken_at`` None and state ``never-scanned``). Idle GPUs first within a host, then
    warming ones; hosts in name order. ``rule`` judges the states (default thresholds)."""
    rule = rule or IdleRule()
    out: list[HostGpus] = []
    with Session(engine) as session:
        latest = _latest_times(session, GpuSnapshot, GpuSnapshot.host)
        for host in sorted(set(hosts) | (set() if hosts else set(latest))):
            taken = latest.get(host)
            view = HostGpus(host, taken, state=HOST_OK if taken else NEVER_SCANNED)
            out.append(view)
            if taken is None:
                continue
            stmt = select(GpuSnapshot).where(
                GpuSnapshot.host == host, GpuSnapshot.taken_at == taken
            )
            for row in session.scalars(stmt):
                if row.error is not None:
                    view.state, view.error = split_host_error(row.error)
                    continue
                recent = _recent(session, host, row.uuid, max(history, rule.scans))
                view.gpus.append(_gpu_row(row, recent, rule, history))
            order = {IDLE: 0, WARMING: 1, UNKNOWN: 2, BUSY: 3}
            view.gpus.sort(key=lambda g: (order[g.state], g.index if g.index is not None else -1))
    return out


def _gpu_row(row: GpuSnapshot, recent: list[GpuSnapshot], rule: IdleRule, history: int) -> GpuRow:
    """``recent``: this GPU's latest snapshots, newest (``row``) first."""
    judged = [stored_judgement(r, rule) for r in recent]
    streak = rule.streak([j == IDLE for j in judged])
    state = judged[0]
    if state == IDLE and streak < rule.scans:
        state = WARMING
    procs = row.processes or {}
    return GpuRow(
        index=row.gpu_index,
        uuid=row.uuid,
        name=row.name,
        utilization=row.utilization_gpu,
        memory_used_mib=row.memory_used_mib,
        memory_total_mib=row.memory_total_mib,
        temperature_c=row.temperature_c,
        power_draw_w=row.power_draw_w,
        processes=int(procs.get("count", 0)),
        idle=state == IDLE,
        history=[r.utilization_gpu for r in reversed(recent[:history])],
        state=state,
        idle_scans=streak,
        scans_needed=rule.scans,
        process_list=[dict(p) for p in procs.get("items", []) if isinstance(p, dict)],
    )


def vllm_view(engine: Engine, instances: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The latest snapshot of every instance (or of ``instances``) as plain dicts."""
    out: list[dict[str, Any]] = []
    with Session(engine) as session:
        latest = _latest_times(session, VllmSnapshot, VllmSnapshot.instance)
        names = list(instances) or sorted(latest)
        for name in names:
            taken = latest.get(name)
            row = None
            if taken is not None:
                stmt = (
                    select(VllmSnapshot)
                    .where(VllmSnapshot.instance == name, VllmSnapshot.taken_at == taken)
                    .order_by(VllmSnapshot.id.desc())
                )
                row = session.scalars(stmt).first()
            out.append(vllm_dict(name, row))
    return out


def vllm_dict(name: str, row: VllmSnapshot | None) -> dict[str, Any]:
    """One instance's snapshot as JSON-ready values (``taken_at`` None: never scanned)."""
    keys = (
        "base_url", "healthy", "model", "max_model_len", "running", "waiting", "swapped",
        "kv_cache_usage", "prompt_tokens_per_s", "generation_tokens_per_s",
        "prompt_tokens_total", "generation_tokens_total", "error",
    )  # fmt: skip
    data: dict[str, Any] = {"instance": name, "taken_at": None}
    data.update(dict.fromkeys(keys))
    if row is not None:
        data.update({k: getattr(row, k) for k in keys})
        data["taken_at"] = row.taken_at.isoformat()
        # Counts are whole numbers, whatever type the Prometheus text gave them.
        for k in _COUNTS:
            if isinstance(data[k], float) and data[k].is_integer():
                data[k] = int(data[k])
    return data


def prune_snapshots(
    engine: Engine, *, older_than: float, now: datetime | None = None
) -> dict[str, int]:
    """Delete GPU and vLLM snapshots older than ``older_than`` seconds; return counts."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than)
    counts: dict[str, int] = defaultdict(int)
    with Session(engine) as session, session.begin():
        for name, model in (("gpu", GpuSnapshot), ("vllm", VllmSnapshot)):
            result: Any = session.execute(delete(model).where(model.taken_at < cutoff))
            counts[name] = int(result.rowcount or 0)
    return dict(counts)

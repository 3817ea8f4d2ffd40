"""The GPU scan: one nvidia-smi command per host over pooled SSH, stored as snapshots.

Idleness is judged over stored snapshots: a GPU is idle when it was idle in this scan and in
the ``IdleRule.scans - 1`` before it, each judged again from the stored readings so that a
changed threshold applies to the history too.

A host that could not be read gets one row whose ``error`` is ``"<state>: <reason>"``
(:func:`host_error`, read back by :func:`split_host_error`): ``unreachable``, ``host-key``,
``auth``, ``timeout`` (the host answered, nvidia-smi hung and was killed there),
``no-nvidia-smi``, ``nvidia-smi-failed`` or ``error``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ops.gpu import (
    NO_NVIDIA_SMI,
    NVIDIA_SMI_FAILED,
    GpuReading,
    IdleRule,
    gpu_scan_command,
    parse_gpu_scan,
)
from ops.ssh.pool import CommandResult, HostResult, SSHPool
from workers.store.models import GpuSnapshot, utcnow

logger = logging.getLogger(__name__)

HOST_STATES = (
    "unreachable", "host-key", "auth", "timeout", NO_NVIDIA_SMI, NVIDIA_SMI_FAILED, "error",
)  # fmt: skip


def host_error(state: str, reason: str) -> str:
    """The ``error`` stored for a host that could not be read."""
    return f"{state}: {reason}"


def split_host_error(text: str) -> tuple[str, str]:
    """``(state, reason)`` of a stored host error (older rows, with no state: ``error``)."""
    state, sep, reason = text.partition(": ")
    if sep and state in HOST_STATES:
        return state, reason
    return "error", text


@dataclass
class GpuScanSummary:
    """What one scan did: hosts answered, hosts failed (with why), GPU rows stored."""

    taken_at: datetime
    gpus: int = 0
    idle: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    ok: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "hosts_ok": self.ok,
            "hosts_failed": self.failed,
            "gpus": self.gpus,
            "idle": self.idle,
        }


def processes_json(reading: GpuReading) -> dict[str, Any]:
    return {
        "count": len(reading.processes),
        "items": [
            {"pid": p.pid, "name": p.name, "used_memory_mib": p.used_memory_mib}
            for p in reading.processes
        ],
    }


def stored_judgement(row: GpuSnapshot, rule: IdleRule) -> str:
    """idle, busy or unknown in this stored snapshot (judged by ``rule`` now)."""
    if row.error is not None:
        return "unknown"
    pct = None
    if row.memory_total_mib and row.memory_used_mib is not None:
        pct = 100.0 * row.memory_used_mib / row.memory_total_mib
    procs = int((row.processes or {}).get("count", 0))
    return rule.judge(row.utilization_gpu, pct, procs)


def stored_instant(row: GpuSnapshot, rule: IdleRule) -> bool:
    """Was the GPU idle in this stored snapshot (judged by ``rule`` now)?"""
    return stored_judgement(row, rule) == "idle"


def _previous(session: Session, host: str, uuid: str, limit: int) -> list[GpuSnapshot]:
    if limit <= 0:
        return []
    stmt = (
        select(GpuSnapshot)
        .where(GpuSnapshot.host == host, GpuSnapshot.uuid == uuid)
        .order_by(GpuSnapshot.taken_at.desc(), GpuSnapshot.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def gpu_rows(
    session: Session, host: str, readings: Sequence[GpuReading], rule: IdleRule, taken: datetime
) -> list[GpuSnapshot]:
    """Snapshot rows for one host's readings, idleness held over earlier snapshots."""
    rows = []
    for g in readings:
        now_idle = rule.instant(g.utilization_gpu, g.memory_percent, len(g.processes))
        before = [stored_instant(r, rule) for r in _previous(session, host, g.uuid, rule.scans - 1)]
        rows.append(
            GpuSnapshot(
                taken_at=taken,
                host=host,
                gpu_index=g.index,
                uuid=g.uuid,
                name=g.name,
                utilization_gpu=g.utilization_gpu,
                utilization_memory=g.utilization_memory,
                memory_total_mib=g.memory_total_mib,
                memory_used_mib=g.memory_used_mib,
                temperature_c=g.temperature_c,
                power_draw_w=g.power_draw_w,
                power_limit_w=g.power_limit_w,
                processes=processes_json(g),
                idle=rule.held([now_idle, *before]),
            )
        )
    return rows


def scan_gpus(
    hosts: Sequence[str],
    *,
    ssh_pool: SSHPool,
    engine: Engine,
    rule: IdleRule,
    on_result: Callable[[HostResult[CommandResult]], None] | None = None,
) -> GpuScanSummary:
    """Run nvidia-smi on every host (in parallel, bounded by the pool) and store snapshots.

    A host that fails (SSH error, no nvidia-smi, garbage) gets one row with ``error`` set.
    Raises only what the database raises.
    """
    results = ssh_pool.run_many(hosts, gpu_scan_command(), on_result=on_result)
    summary = GpuScanSummary(taken_at=utcnow())
    rows: list[GpuSnapshot] = []
    with Session(engine, expire_on_commit=False) as session, session.begin():
        for host, result in results.items():
            host_rows = _host_rows(session, host, result, rule, summary)
            rows += host_rows
        session.add_all(rows)
    summary.gpus = sum(1 for r in rows if r.error is None)
    summary.idle = sum(1 for r in rows if r.idle)
    logger.info(
        "GPU scan: %s hosts ok, %s failed, %s GPUs (%s idle)",
        len(summary.ok),
        len(summary.failed),
        summary.gpus,
        summary.idle,
    )
    return summary


def _host_rows(
    session: Session,
    host: str,
    result: HostResult[CommandResult],
    rule: IdleRule,
    summary: GpuScanSummary,
) -> list[GpuSnapshot]:
    taken = summary.taken_at
    if result.error is not None or result.value is None:
        err = result.error
        why = host_error(err.state, err.reason) if err is not None else host_error("error", "?")
        summary.failed[host] = why
        logger.warning("GPU scan of %s failed: %s", host, why)
        return [GpuSnapshot(taken_at=taken, host=host, error=why)]
    out = result.value
    scan = parse_gpu_scan(out.stdout, out.stderr, out.exit_status)
    for warning in scan.warnings:
        logger.warning("GPU scan of %s: %s", host, warning)
    if scan.error is not None:
        why = host_error(scan.state or "error", scan.error)
        summary.failed[host] = why
        logger.warning("GPU scan of %s failed: %s", host, why)
        return [GpuSnapshot(taken_at=taken, host=host, error=why)]
    summary.ok.append(host)
    return gpu_rows(session, host, scan.gpus, rule, taken)

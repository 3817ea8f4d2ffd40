"""Tables for ``vfleet gpu`` and ``vfleet vllm``: bars, sparklines, health, as rich renderables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from workers.scan.snapshots import GpuRow, HostGpus

SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 10


def bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``"████░░░░░░  42%"``; ``"-"`` when unknown."""
    if percent is None:
        return "-"
    p = min(100.0, max(0.0, percent))
    full = round(p / 100 * width)
    return f"{'█' * full}{'░' * (width - full)} {p:3.0f}%"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per reading, 0-100 scaled; ``·`` for a missing one."""
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(max(0.0, v) / 100 * len(SPARKS)))])
    return "".join(out)


def _num(value: float | None, fmt: str = "{:.0f}", unit: str = "") -> str:
    return "-" if value is None else fmt.format(value) + unit


def host_order(host: HostGpus) -> tuple[int, int, str]:
    """Hosts with the most idle GPUs first; unreachable and unscanned ones last."""
    broken = host.error is not None or host.taken_at is None
    return (1 if broken else 0, -sum(g.idle for g in host.gpus), host.host)


def _gpu_cells(g: GpuRow) -> list[str | Text]:
    state = Text("idle", style="bold green") if g.idle else Text("busy", style="yellow")
    memory = bar(g.memory_percent)
    if g.memory_used_mib is not None and g.memory_total_mib:
        memory += f" {g.memory_used_mib / 1024:.1f}/{g.memory_total_mib / 1024:.0f}G"
    return [
        str(g.index if g.index is not None else "?"),
        g.name or "-",
        state,
        bar(g.utilization),
        memory,
        _num(g.temperature_c, unit="C"),
        _num(g.power_draw_w, unit="W"),
        str(g.processes),
        sparkline(g.history),
    ]


def gpu_table(hosts: Sequence[HostGpus]) -> Group:
    """GPUs grouped by host, idle GPUs first; then unreachable hosts flagged in red."""
    table = Table(
        "host", "gpu", "name", "state", "util", "memory", "temp", "power", "procs", "history",
        box=None, pad_edge=False,
    )  # fmt: skip
    notes: list[Text] = []
    for host in sorted(hosts, key=host_order):
        if host.taken_at is None:
            notes.append(Text(f"{host.host}: no snapshot yet (try --live)", style="dim"))
        elif host.error is not None:
            notes.append(Text(f"{host.host}: UNREACHABLE: {host.error}", style="bold red"))
        for i, g in enumerate(host.gpus):
            table.add_row(host.host if i == 0 else "", *_gpu_cells(g))
    return Group(table, *notes)


def _health(row: dict[str, Any]) -> Text:
    if row["taken_at"] is None:
        return Text("never scanned", style="dim")
    if row["healthy"]:
        return Text("up", style="bold green")
    return Text(f"DOWN: {row['error'] or 'unhealthy'}", style="bold red")


def vllm_table(rows: Sequence[dict[str, Any]]) -> Table:
    """One line per instance: health, model, running, waiting, KV cache, tokens/s."""
    table = Table(
        "instance", "health", "model", "running", "waiting", "kv cache", "prompt tok/s",
        "gen tok/s", "max len", box=None, pad_edge=False,
    )  # fmt: skip
    for r in rows:
        kv = r["kv_cache_usage"]
        table.add_row(
            r["instance"],
            _health(r),
            r["model"] or "-",
            _num(r["running"]),
            _num(r["waiting"]),
            bar(kv * 100 if kv is not None else None),
            _num(r["prompt_tokens_per_s"], "{:.1f}"),
            _num(r["generation_tokens_per_s"], "{:.1f}"),
            _num(r["max_model_len"]),
        )
    return table

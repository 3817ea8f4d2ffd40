"""Tables for ``vfleet gpu`` and ``vfleet vllm``: bars, sparklines, health, as rich renderables.

Made to be read at 80 to 100 columns: cells never wrap, GPU names lose their ``NVIDIA``
prefix and model names their organisation (``meta-llama/``) but are never cut; what gives
way on a narrow terminal is, in this order, the history sparkline, the power and max-len
columns, then the process and host names (cut with ``…``). Whatever is wrong with a host or
an instance is one line under the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from workers.scan.snapshots import BUSY, IDLE, UNKNOWN, WARMING, GpuRow, HostGpus

SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 5
DEFAULT_WIDTH = 100
HISTORY_CELLS = 8
_FLEX_MIN = 6
# What a listing says of a host it has no GPUs of, by the scan's state for it.
HOST_LABELS = {
    "never-scanned": "no snapshot yet (try --live)",
    "unreachable": "UNREACHABLE",
    "host-key": "HOST KEY REFUSED",
    "auth": "SSH LOGIN REFUSED",
    "timeout": "TIMEOUT (nvidia-smi hung?)",
    "no-nvidia-smi": "NO NVIDIA-SMI",
    "nvidia-smi-failed": "NVIDIA-SMI FAILED",
    "error": "SCAN FAILED",
}
_STATE_STYLES = {IDLE: "bold green", WARMING: "green", BUSY: "yellow", UNKNOWN: "bold magenta"}


def bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``"██░░░  42%"``; ``"-"`` when unknown."""
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


@dataclass(frozen=True)
class Column:
    """A column of a fitted table: ``flex`` ones take what width is left (cut with ``…``),
    ``drop`` ones (lowest first) go when even that is not enough."""

    header: str
    justify: Literal["left", "right"] = "left"
    flex: bool = False
    drop: int = 0
    least: int = _FLEX_MIN  # a flex column's narrowest


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[str | Text]], width: int) -> Table:
    """A borderless table of ``rows`` no wider than ``width``, one line per row."""
    natural = [
        max([cell_len(c.header), *(cell_len(str(r[i])) for r in rows)])
        for i, c in enumerate(columns)
    ]
    keep = list(range(len(columns)))

    def narrowest(i: int) -> int:
        return min(natural[i], columns[i].least) if columns[i].flex else natural[i]

    def needed(idx: list[int]) -> int:
        return sum(narrowest(i) for i in idx) + len(idx) - 1

    for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: columns[i].drop):
        if needed(keep) <= width:
            break
        keep.remove(i)
    widths = {i: natural[i] for i in keep}
    flex = [i for i in keep if columns[i].flex]
    room = width - (len(keep) - 1) - sum(natural[i] for i in keep if not columns[i].flex)
    for n, i in enumerate(flex):
        later = sum(narrowest(j) for j in flex[n + 1 :])
        widths[i] = max(narrowest(i), min(natural[i], room - later))
        room -= widths[i]
    table = Table(box=None, pad_edge=False, collapse_padding=True, padding=(0, 1, 0, 0))
    for i in keep:
        c = columns[i]
        table.add_column(
            c.header, justify=c.justify, width=widths[i], no_wrap=True, overflow="ellipsis"
        )
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    return table


def _line(text: str, style: str = "") -> Text:
    """One line whatever the width: cut with ``…`` rather than wrapped."""
    return Text(" ".join(text.split()), style=style, no_wrap=True, overflow="ellipsis")


def gpu_name(name: str | None) -> str:
    """``NVIDIA H100 80GB HBM3`` → ``H100 80GB HBM3``."""
    return (name or "-").removeprefix("NVIDIA ").strip() or "-"


def process_name(name: str) -> str:
    """``/opt/venv/bin/python3 -m vllm...`` → ``python3``."""
    first = name.split()[0] if name.split() else name
    return PurePosixPath(first).name or first


def processes_cell(g: GpuRow) -> str:
    """``31337 python3`` for the first process, ``+N`` for the others; ``-`` for none."""
    if not g.process_list:
        return str(g.processes) if g.processes else "-"
    first = g.process_list[0]
    cell = f"{first.get('pid', '?')} {process_name(str(first.get('name', '')))}"
    more = max(g.processes, len(g.process_list)) - 1
    return cell + (f" +{more}" if more > 0 else "")


def host_order(host: HostGpus) -> tuple[int, int, int, str]:
    """Hosts with the most idle GPUs first, then those with GPUs warming up to idle; hosts
    that failed and unscanned ones last."""
    warming = sum(g.state == WARMING for g in host.gpus)
    return (1 if host.failed else 0, -sum(g.idle for g in host.gpus), -warming, host.host)


def gpu_state(g: GpuRow) -> Text:
    label = f"{WARMING} {g.idle_scans}/{g.scans_needed}" if g.state == WARMING else g.state
    return Text(label, style=_STATE_STYLES.get(g.state, ""))


def _memory(g: GpuRow) -> str:
    if g.memory_used_mib is None or not g.memory_total_mib:
        return "-"
    pct = g.memory_percent or 0.0
    return f"{g.memory_used_mib / 1024:.0f}/{g.memory_total_mib / 1024:.0f}G {pct:3.0f}%"


GPU_COLUMNS = (
    Column("host", flex=True), Column("gpu", "right"), Column("name"), Column("state"),
    Column("util"), Column("memory", "right"), Column("temp", "right"),
    Column("power", "right", drop=2), Column("procs", flex=True, least=14),
    Column("history", drop=1),
)  # fmt: skip


def gpu_table(hosts: Sequence[HostGpus], width: int = DEFAULT_WIDTH) -> Group:
    """GPUs grouped by host, idle GPUs first; then one line per host that failed."""
    rows: list[list[str | Text]] = []
    notes: list[Text] = []
    for host in sorted(hosts, key=host_order):
        if host.failed:
            label = HOST_LABELS.get(host.state, host.state.upper())
            why = f": {host.error}" if host.error else ""
            style = "dim" if host.taken_at is None else "bold red"
            notes.append(_line(f"{host.host}: {label}{why}", style))
        for i, g in enumerate(host.gpus):
            rows.append(
                [
                    host.host if i == 0 else "",
                    str(g.index if g.index is not None else "?"),
                    gpu_name(g.name),
                    gpu_state(g),
                    bar(g.utilization),
                    _memory(g),
                    _num(g.temperature_c, unit="C"),
                    _num(g.power_draw_w, unit="W"),
                    processes_cell(g),
                    sparkline(g.history[-HISTORY_CELLS:]),
                ]
            )
    return Group(fit_table(GPU_COLUMNS, rows, width), *notes)


def model_name(model: str | None) -> str:
    """``meta-llama/Llama-3.1-8B-Instruct`` → ``Llama-3.1-8B-Instruct`` (the part that
    tells models apart)."""
    if not model:
        return "-"
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def vllm_health(row: dict[str, Any]) -> Text:
    if row["taken_at"] is None:
        return Text("never", style="dim")
    if row["healthy"]:
        return Text("up", style="bold green")
    return Text("DOWN", style="bold red")


VLLM_COLUMNS = (
    Column("instance", flex=True), Column("health"), Column("model"), Column("run", "right"),
    Column("wait", "right"), Column("kv cache"), Column("in tok/s", "right"),
    Column("out tok/s", "right"), Column("max len", "right", drop=1),
)  # fmt: skip


def vllm_table(rows: Sequence[dict[str, Any]], width: int = DEFAULT_WIDTH) -> Group:
    """One line per instance (health, model, running, waiting, KV cache, prompt and
    generated tokens/s); then one line per instance that is down or never scanned, saying
    why."""
    cells: list[list[str | Text]] = []
    notes: list[Text] = []
    for r in rows:
        kv = r["kv_cache_usage"]
        cells.append(
            [
                r["instance"],
                vllm_health(r),
                model_name(r["model"]),
                _num(r["running"]),
                _num(r["waiting"]),
                bar(kv * 100 if kv is not None else None),
                _num(r["prompt_tokens_per_s"], "{:.1f}"),
                _num(r["generation_tokens_per_s"], "{:.1f}"),
                _num(r["max_model_len"]),
            ]
        )
        if r["taken_at"] is None:
            notes.append(_line(f"{r['instance']}: never scanned (try --live)", "dim"))
        elif not r["healthy"]:
            notes.append(_line(f"{r['instance']}: DOWN: {r['error'] or 'unhealthy'}", "bold red"))
    return Group(fit_table(VLLM_COLUMNS, cells, width), *notes)

"""nvidia-smi over SSH: the one command a GPU scan runs per host, and its parsers.

The command prints the ``--query-gpu`` CSV, a separator line, then the
``--query-compute-apps`` CSV, and exits with the first nvidia-smi's status (127 when the
host has no nvidia-smi). With ``nounits`` nvidia-smi still prints bracketed tokens —
``[N/A]``, ``[Not Supported]``, ``[Unknown Error]`` — and sometimes bare ``N/A``; MIG mode
reports utilisation as ``[N/A]``. Each of those becomes None; a line that cannot be read at
all is skipped and named in ``warnings``.

Idle (:class:`IdleRule`): utilisation and memory below thresholds and no compute process,
in each of the last few scans. A reading nvidia-smi could not give (``[Unknown Error]``,
``[N/A]``: a GPU in a bad state, or MIG) is never idle: it is ``unknown``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

GPU_FIELDS = (
    "index", "uuid", "name", "utilization.gpu", "utilization.memory", "memory.total",
    "memory.used", "temperature.gpu", "power.draw", "power.limit",
)  # fmt: skip
APP_FIELDS = ("pid", "process_name", "used_memory", "gpu_uuid")
SEPARATOR = "---vfleet-compute-apps---"
NOT_FOUND_STATUS = 127
# What a scan says of a host it could not read (beside the SSH errors' states).
NO_NVIDIA_SMI = "no-nvidia-smi"
NVIDIA_SMI_FAILED = "nvidia-smi-failed"
IDLE, BUSY, UNKNOWN = "idle", "busy", "unknown"
DEFAULT_IDLE_UTILIZATION = 5.0
DEFAULT_IDLE_MEMORY = 5.0
DEFAULT_IDLE_SCANS = 3
_CSV = "--format=csv,noheader,nounits"
_NO_VALUE = {"n/a", "[n/a]", "[not supported]", "[unknown error]", "[insufficient permissions]",
             "[gpu is lost]", "[requires a reset]", ""}  # fmt: skip
_NO_PROCESSES = "no running processes found"


def gpu_scan_command() -> str:
    """The shell command a GPU scan runs on each host (POSIX sh, whatever the login shell)."""
    script = (
        "command -v nvidia-smi >/dev/null 2>&1 || "
        "{ echo 'nvidia-smi: command not found' >&2; exit 127; }\n"
        f"nvidia-smi --query-gpu={','.join(GPU_FIELDS)} {_CSV}; rc=$?\n"
        f"echo {SEPARATOR}\n"
        f"nvidia-smi --query-compute-apps={','.join(APP_FIELDS)} {_CSV}\n"
        "exit $rc\n"
    )
    return "sh -c " + shlex.quote(script)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    used_memory_mib: float | None
    gpu_uuid: str


@dataclass(frozen=True)
class GpuReading:
    """One GPU as nvidia-smi saw it; None where it printed no value."""

    index: int
    uuid: str
    name: str
    utilization_gpu: float | None
    utilization_memory: float | None
    memory_total_mib: float | None
    memory_used_mib: float | None
    temperature_c: float | None
    power_draw_w: float | None
    power_limit_w: float | None
    processes: tuple[GpuProcess, ...] = ()

    @property
    def memory_percent(self) -> float | None:
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        if self.memory_total_mib <= 0:
            return None
        return 100.0 * self.memory_used_mib / self.memory_total_mib


@dataclass(frozen=True)
class GpuScan:
    """One host's answer: its GPUs, or why there are none."""

    gpus: tuple[GpuReading, ...] = ()
    error: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    state: str | None = None  # with ``error``: NO_NVIDIA_SMI or NVIDIA_SMI_FAILED


def number(token: str) -> float | None:
    """A float from an nvidia-smi field; None for ``[N/A]``-like tokens and garbage."""
    text = token.strip()
    if text.lower() in _NO_VALUE or text.startswith("["):
        return None
    for unit in (" MiB", " %", " W", " C"):  # in case someone drops ``nounits``
        text = text.removesuffix(unit)
    try:
        return float(text)
    except ValueError:
        return None


def parse_gpu_line(line: str) -> GpuReading | None:
    """One ``--query-gpu`` CSV line; None when it is not one."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < len(GPU_FIELDS):
        return None
    # The name never holds a comma in practice, but take the numeric tail from the right.
    tail = parts[-7:]
    name = ", ".join(parts[2:-7])
    if not parts[0].isdigit() or not parts[1] or not name:
        return None
    util, util_mem, total, used, temp, draw, limit = (number(t) for t in tail)
    return GpuReading(int(parts[0]), parts[1], name, util, util_mem, total, used, temp, draw, limit)


def parse_app_line(line: str) -> GpuProcess | None:
    """One ``--query-compute-apps`` line (pid, name, used MiB, GPU uuid); None otherwise."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) < len(APP_FIELDS) or not parts[0].isdigit():
        return None
    return GpuProcess(int(parts[0]), ", ".join(parts[1:-2]), number(parts[-2]), parts[-1])


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _first_line(text: str) -> str:
    lines = _lines(text)
    return lines[0][:300] if lines else ""


def parse_gpu_scan(stdout: str, stderr: str = "", exit_status: int = 0) -> GpuScan:
    """Read the output of :func:`gpu_scan_command`.

    Returns a :class:`GpuScan` with ``error`` set when the host has no nvidia-smi, the
    driver is not answering, or nothing usable came back.
    """
    if exit_status == NOT_FOUND_STATUS or "command not found" in stderr:
        return GpuScan(
            error="nvidia-smi not found on host (no NVIDIA driver?)", state=NO_NVIDIA_SMI
        )
    gpu_part, sep, app_part = stdout.partition(SEPARATOR)
    warnings: list[str] = []
    gpus: list[GpuReading] = []
    for line in _lines(gpu_part):
        reading = parse_gpu_line(line)
        if reading is None:
            warnings.append(f"unreadable GPU line: {line[:120]}")
        else:
            gpus.append(reading)
    procs = _parse_apps(app_part, warnings) if sep else []
    if not gpus:
        why = _first_line(stderr) or _first_line(gpu_part) or "no output"
        return GpuScan(
            error=f"nvidia-smi failed (exit {exit_status}): {why}",
            warnings=tuple(warnings),
            state=NVIDIA_SMI_FAILED,
        )
    return GpuScan(gpus=tuple(attach(gpus, procs)), warnings=tuple(warnings))


def _parse_apps(text: str, warnings: list[str]) -> list[GpuProcess]:
    procs: list[GpuProcess] = []
    for line in _lines(text):
        if line.lower().startswith(_NO_PROCESSES):
            continue
        proc = parse_app_line(line)
        if proc is None:
            warnings.append(f"unreadable process line: {line[:120]}")
        else:
            procs.append(proc)
    return procs


def attach(gpus: Iterable[GpuReading], procs: Sequence[GpuProcess]) -> list[GpuReading]:
    """Each GPU with the compute processes whose ``gpu_uuid`` is its uuid."""
    out = []
    for g in gpus:
        mine = tuple(p for p in procs if p.gpu_uuid == g.uuid)
        out.append(replace(g, processes=mine))
    return out


@dataclass(frozen=True)
class IdleRule:
    """Idle = utilisation and memory below these and no compute process, ``scans`` times
    in a row; a reading with unknown utilisation or memory is never idle."""

    utilization: float = DEFAULT_IDLE_UTILIZATION
    memory_percent: float = DEFAULT_IDLE_MEMORY
    scans: int = DEFAULT_IDLE_SCANS

    def judge(self, utilization: float | None, memory_percent: float | None, processes: int) -> str:
        """One reading: :data:`BUSY` when anything says so (a process, utilisation or
        memory at or over its threshold), else :data:`UNKNOWN` when utilisation or memory
        is unknown, else :data:`IDLE`."""
        if processes > 0:
            return BUSY
        if utilization is not None and utilization >= self.utilization:
            return BUSY
        if memory_percent is not None and memory_percent >= self.memory_percent:
            return BUSY
        if utilization is None or memory_percent is None:
            return UNKNOWN
        return IDLE

    def instant(
        self, utilization: float | None, memory_percent: float | None, processes: int
    ) -> bool:
        """Idle in one reading (unknown is not idle)."""
        return self.judge(utilization, memory_percent, processes) == IDLE

    def streak(self, newest_first: Sequence[bool]) -> int:
        """How many of the latest readings in a row were idle (at most ``scans``)."""
        count = 0
        for idle in newest_first[: self.scans]:
            if not idle:
                break
            count += 1
        return count

    def held(self, newest_first: Sequence[bool]) -> bool:
        """Idle over the last ``scans`` readings (``newest_first``: instant judgements)."""
        return self.streak(newest_first) >= self.scans

    def describe(self) -> str:
        """The rule in words, for ``--help`` and messages."""
        return (
            f"utilisation < {self.utilization:g}%, memory < {self.memory_percent:g}% and no "
            f"compute process in each of the last {self.scans} scans"
        )

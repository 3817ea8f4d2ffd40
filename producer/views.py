"""Live views of batch progress, shared by ``vfleet status`` and ``vfleet demo``."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from producer.progress import BatchProgress, batch_progress
from workers.store.ledger import Ledger
from workers.store.values import BatchInfo

DEFAULT_REFRESH = 1.0


def _eta(p: BatchProgress) -> str:
    eta = p.eta_seconds
    if eta is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(eta))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def notes(p: BatchProgress) -> list[str]:
    """What the table has no room for: input lines that are not records, cut answers."""
    out = []
    if p.bad_lines:
        out.append(
            f"{p.batch.name}: {_plural(p.bad_count, 'bad input line')}, "
            f"{_plural(p.skipped_count, 'blank line')} skipped "
            f"(vfleet report {p.batch.name} says why)"
        )
    if p.truncated:
        out.append(
            f"{p.batch.name}: {_plural(p.truncated, 'answer')} cut by max_tokens "
            "(finish_reason length)"
        )
    return out


def render(progress: list[BatchProgress]) -> Group:
    """Progress bars per batch, records per instance and :func:`notes`, as rich
    renderables."""
    batches = Table(
        "batch",
        "progress",
        "done",
        "ok",
        "failed",
        "running",
        "queued",
        "retry",
        "rec/s",
        "ETA",
        box=None,
    )
    instances = Table("batch", "instance", "succeeded", "failed", "running", box=None)
    for p in progress:
        c = p.counts
        bar = ProgressBar(total=max(1, p.total), completed=p.done, width=30)
        batches.add_row(
            p.batch.name,
            bar,
            f"{p.done}/{p.total}",
            str(c["succeeded"]),
            str(c["failed"]),
            str(c["running"]),
            str(c["queued"]),
            str(c["retry"]),
            f"{p.rate:.1f}",
            _eta(p),
        )
        for inst, per in sorted(p.instances.items()):
            instances.add_row(
                p.batch.name,
                inst,
                str(per.get("succeeded", 0)),
                str(per.get("failed", 0)),
                str(per.get("running", 0)),
            )
    parts: list[RenderableType] = [batches]
    if instances.row_count:
        parts.append(instances)
    parts += [Text(line) for p in progress for line in notes(p)]
    return Group(*parts)


def follow(
    ledger: Ledger,
    batches: list[BatchInfo],
    *,
    console: Console,
    refresh: float = DEFAULT_REFRESH,
    timeout: float | None = None,
    tick: Callable[[], None] | None = None,
) -> list[BatchProgress]:
    """Redraw until every batch is complete (or ``timeout``); returns the last reading.
    ``tick`` is called before each reading (``vfleet run`` restarts dead workers there)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            if tick is not None:
                tick()
            progress = [batch_progress(ledger, b) for b in batches]
            live.update(render(progress))
            if all(p.complete for p in progress):
                return progress
            if deadline is not None and time.monotonic() > deadline:
                return progress
            time.sleep(refresh)

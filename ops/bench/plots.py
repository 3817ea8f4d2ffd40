"""PNG figures of a benchmark (matplotlib, Agg backend, no display needed).

* ``bench-completions-<scenario>.png``: records completed over time, one line per mode,
  the fleet's capacity as a dotted reference, a cross where the failure fired;
* ``bench-instance-share.png``: each instance's share of the answers, per scenario and mode.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from ops.bench.config import ALL_MODES, MODE_TITLES
from ops.bench.measure import RunResult

DPI = 110
_COLORS = {
    "vfleet-shared": "#1f77b4",
    "vfleet-rr": "#17becf",
    "seeds-a": "#d62728",
    "seeds-b": "#ff7f0e",
    "ideal": "#2ca02c",
    "raw-http": "#9467bd",
    "vfleet-chunk1": "#8c564b",
    "vfleet-before": "#7f7f7f",
}


def completions_plot(results: list[RunResult], scenario: str, title: str, path: Path) -> Path:
    """Completions over time for every mode of ``scenario``; returns ``path``."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    runs = sorted(
        (r for r in results if r.scenario == scenario), key=lambda r: ALL_MODES.index(r.mode)
    )
    horizon = max((max(r.latencies, default=0.0) for r in runs), default=1.0)
    for r in runs:
        xs = sorted(r.latencies)
        ys = list(range(1, len(xs) + 1))
        label = f"{MODE_TITLES[r.mode]} ({r.rate:.1f}/s)"
        ax.step([0.0, *xs], [0, *ys], where="post", label=label, color=_COLORS.get(r.mode))
        if r.kill_at is not None:
            done = sum(1 for x in xs if x <= r.kill_at)
            ax.plot([r.kill_at], [done], marker="x", color=_COLORS.get(r.mode), markersize=9)
    capacity = next((r.capacity for r in runs if r.capacity), 0.0)
    if capacity:
        ax.plot([0, horizon], [0, capacity * horizon], ":", color="grey", label="fleet capacity")
    top = max((r.records for r in runs), default=1)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlim(0, horizon * 1.02)
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("records completed")
    ax.set_title(
        f"{scenario}: {title} (x: failure fired)"
        if any(r.kill_at for r in runs)
        else f"{scenario}: {title}"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def share_plot(results: list[RunResult], scenarios: list[str], path: Path) -> Path:
    """Each instance's share of the answers it produced, per scenario and mode."""
    fig, axes = plt.subplots(
        1, max(1, len(scenarios)), figsize=(4.2 * max(1, len(scenarios)), 4), squeeze=False
    )
    for ax, scenario in zip(axes[0], scenarios, strict=False):
        runs = sorted(
            (r for r in results if r.scenario == scenario), key=lambda r: ALL_MODES.index(r.mode)
        )
        if not runs:
            continue
        width = 0.8 / len(runs)
        for k, r in enumerate(runs):
            total = sum(r.per_instance) or 1.0
            shares = [100 * v / total for v in r.per_instance]
            xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(shares))]
            ax.bar(xs, shares, width=width, label=MODE_TITLES[r.mode], color=_COLORS.get(r.mode))
        n = len(runs[0].per_instance)
        ax.set_xticks(range(n), [f"sim-{i + 1}" for i in range(n)])
        ax.set_title(scenario)
        ax.set_ylabel("% of answers")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(results: list[RunResult], titles: dict[str, str], out_dir: Path) -> list[Path]:
    """Every figure of the run into ``out_dir``; returns their paths."""
    scenarios = [s for s in titles if any(r.scenario == s for r in results)]
    paths = [
        completions_plot(results, s, titles[s], out_dir / f"bench-completions-{s}.png")
        for s in scenarios
    ]
    if scenarios:
        paths.append(share_plot(results, scenarios, out_dir / "bench-instance-share.png"))
    return paths

"""``vfleet report``: what a batch's answers say and how the run went, as text or HTML.

:func:`build_report` streams the batch's records once and keeps only tallies (and the
latencies, 8 bytes a record): score histogram (judge), label counts (classify), winner
counts and position-swap consistency (pairwise), failures by ``error_kind`` with an example,
latency percentiles, tokens and finish reasons (``length``: cut by ``max_tokens``), and the
input lines that did not become records, by reason. :func:`write_html` renders a
self-contained page: the charts are matplotlib PNGs embedded as ``data:`` URIs, so the
file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer.readers.codes import DESCRIPTIONS
from workers.store import bad_lines
from workers.store.ledger import Ledger
from workers.store.models import Record, Status
from workers.store.queries import iter_records
from workers.store.values import BatchInfo

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_EXAMPLE_CHARS = 300
PERCENTILES = (50, 90, 99)
BAD_LINE_EXAMPLES = 3
"""Line numbers shown per reason of bad input lines."""


@dataclass
class BadLines:
    """The batch's input lines that are not records, for one reason."""

    count: int = 0
    lines: list[int] = field(default_factory=list)
    example: str = ""


@dataclass
class Failure:
    count: int = 0
    example: str = ""
    example_key: str = ""


@dataclass
class BatchReport:
    batch: BatchInfo
    counts: Counter[str] = field(default_factory=Counter)
    scores: Counter[int | float] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    winners: Counter[str] = field(default_factory=Counter)
    consistent: int = 0
    swapped: int = 0
    failures: dict[str, Failure] = field(default_factory=dict)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused: int = 0
    finish_reasons: Counter[str] = field(default_factory=Counter)
    bad_lines: dict[str, BadLines] = field(default_factory=dict)

    def add(self, r: Record) -> None:
        self.counts[r.status] += 1
        if r.finish_reason is not None:
            self.finish_reasons[r.finish_reason] += 1
        if r.status == Status.SUCCEEDED:
            self._add_answer(r.output or {})
            if r.reused_from is not None:
                self.reused += 1
            elif r.latency_ms is not None:
                self.latencies_ms.append(r.latency_ms)
            self.prompt_tokens += r.prompt_tokens or 0
            self.completion_tokens += r.completion_tokens or 0
        elif r.status == Status.FAILED:
            f = self.failures.setdefault(r.error_kind or "unknown", Failure())
            f.count += 1
            if not f.example:
                f.example, f.example_key = (r.error or "")[:MAX_EXAMPLE_CHARS], r.key

    def _add_answer(self, out: dict[str, Any]) -> None:
        score = out.get("score")
        if isinstance(score, int | float) and not isinstance(score, bool):
            self.scores[_score_key(score)] += 1
        if isinstance(out.get("label"), str):
            self.labels[out["label"]] += 1
        if isinstance(out.get("winner"), str):
            self.winners[out["winner"]] += 1
        if isinstance(out.get("consistent"), bool):
            self.swapped += 1
            self.consistent += out["consistent"]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def truncated(self) -> int:
        """Answers cut by ``max_tokens`` (finish_reason ``length``)."""
        return self.finish_reasons.get("length", 0)

    @property
    def consistency_rate(self) -> float | None:
        return self.consistent / self.swapped if self.swapped else None

    def latency_percentiles(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies_ms)
        out: dict[str, float | None] = {}
        for p in PERCENTILES:
            # Nearest rank: the smallest value with at least p% of the values at or below it.
            rank = max(1, math.ceil(p / 100 * len(ordered)))
            out[f"p{p}"] = round(ordered[rank - 1], 1) if ordered else None
        return out

    def mean_score(self) -> float | None:
        n = sum(self.scores.values())
        return sum(s * c for s, c in self.scores.items()) / n if n else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch.name,
            "spec": self.batch.spec_name,
            "model": self.batch.model,
            "total": self.total,
            "counts": dict(self.counts),
            "reused": self.reused,
            "scores": {str(k): v for k, v in sorted(self.scores.items())},
            "mean_score": self.mean_score(),
            "labels": dict(self.labels.most_common()),
            "winners": dict(self.winners.most_common()),
            "consistency_rate": self.consistency_rate,
            "failures": {
                k: {"count": f.count, "example": f.example, "key": f.example_key}
                for k, f in sorted(self.failures.items(), key=lambda kv: -kv[1].count)
            },
            "latency_ms": self.latency_percentiles(),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "finish_reasons": dict(self.finish_reasons.most_common()),
            "truncated": self.truncated,
            "bad_lines": {
                code: {
                    "count": b.count,
                    "lines": b.lines,
                    "example": b.example,
                    "meaning": DESCRIPTIONS.get(code, ""),
                }
                for code, b in self.bad_lines.items()
            },
        }


def _score_key(score: int | float) -> int | float:
    """The histogram bucket of a score: to 0.1, and a whole number stays one (5, not 5.0)."""
    value = round(float(score), 1)
    return int(value) if value.is_integer() else value


def build_report(ledger: Ledger, batch: BatchInfo) -> BatchReport:
    """Read every record of ``batch`` once and tally it."""
    report = BatchReport(batch)
    for r in iter_records(ledger.engine, batch.id):
        report.add(r)
    examples = bad_lines.examples(ledger.engine, batch.id, per_code=BAD_LINE_EXAMPLES)
    for code, n in bad_lines.counts(ledger.engine, batch.id).items():
        seen = examples.get(code, [])
        report.bad_lines[code] = BadLines(
            n, [b.line for b in seen], seen[0].message[:MAX_EXAMPLE_CHARS] if seen else ""
        )
    return report


# --- text ---------------------------------------------------------------------------------


def _bar(n: int, most: int, width: int = 30) -> str:
    return "#" * max(1 if n else 0, round(width * n / most)) if most else ""


def _distribution(title: str, counts: dict[Any, int]) -> list[str]:
    if not counts:
        return []
    most = max(counts.values())
    lines = [title]
    lines += [f"  {k!s:>12} {v:>8} {_bar(v, most)}" for k, v in counts.items()]
    return lines


def render_text(r: BatchReport) -> str:
    """The report as plain text, for the terminal."""
    d = r.as_dict()
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))
    lines = [f"batch {r.batch.name} ({r.batch.spec_name}, {r.batch.model}): {r.total} records"]
    lines.append(f"status: {statuses}" + (f" ({r.reused} reused)" if r.reused else ""))
    lines += _distribution("scores:", dict(sorted(r.scores.items())))
    if d["mean_score"] is not None:
        lines.append(f"  mean score {d['mean_score']:.2f}")
    lines += _distribution("labels:", d["labels"])
    lines += _distribution("winners:", d["winners"])
    if r.consistency_rate is not None:
        lines.append(f"position-swap consistency: {r.consistency_rate:.1%} of {r.swapped}")
    if r.failures:
        lines.append("failures:")
        for kind, f in d["failures"].items():
            lines.append(f"  {kind:>14} {f['count']:>8}  e.g. {f['key']}: {f['example']}")
    lat = d["latency_ms"]
    if lat["p50"] is not None:
        lines.append(f"latency: p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms")
    lines.append(f"tokens: prompt {r.prompt_tokens}, completion {r.completion_tokens}")
    if r.finish_reasons:
        reasons = ", ".join(f"{k} {v}" for k, v in r.finish_reasons.most_common())
        cut = f" ({r.truncated} cut by max_tokens)" if r.truncated else ""
        lines.append(f"finish reasons: {reasons}{cut}")
    lines += _bad_lines_text(r)
    return "\n".join(lines)


def _bad_lines_text(r: BatchReport) -> list[str]:
    if not r.bad_lines:
        return []
    n = sum(b.count for b in r.bad_lines.values())
    lines = [f"input lines not run: {n}"]
    for code, b in r.bad_lines.items():
        at = ", ".join(str(x) for x in b.lines) + (", ..." if b.count > len(b.lines) else "")
        lines.append(f"  {code:>20} {b.count:>8}  lines {at}: {b.example}")
    return lines


# --- HTML ---------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bar_chart(title: str, counts: dict[Any, int], color: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.bar([str(k) for k in counts], list(counts.values()), color=color)
    ax.set_title(title)
    ax.set_ylabel("records")
    return _png(fig)


def _latency_chart(latencies: array[float]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.hist(list(latencies), bins=40, color="#6a5acd")
    ax.set_title("latency")
    ax.set_xlabel("ms")
    ax.set_ylabel("records")
    return _png(fig)


def charts(r: BatchReport) -> list[tuple[str, str]]:
    """``(title, data URI)`` of every chart the batch has data for."""
    d = r.as_dict()
    out = [("status", _bar_chart("records by status", dict(r.counts), "#4682b4"))]
    if r.scores:
        out.append(
            ("scores", _bar_chart("score histogram", dict(sorted(r.scores.items())), "#2e8b57"))
        )
    if r.labels:
        out.append(("labels", _bar_chart("labels", d["labels"], "#daa520")))
    if r.winners:
        out.append(("winners", _bar_chart("pairwise winners", d["winners"], "#cd5c5c")))
    if r.failures:
        fails = {k: f["count"] for k, f in d["failures"].items()}
        out.append(("failures", _bar_chart("failures by kind", fails, "#b22222")))
    if r.latencies_ms:
        out.append(("latency", _latency_chart(r.latencies_ms)))
    return out


def render_html(r: BatchReport) -> str:
    """The report as one self-contained HTML page."""
    name = html.escape(r.batch.name)
    images = "\n".join(
        f'<figure><img alt="{html.escape(t)}" src="{uri}"><figcaption>{html.escape(t)}'
        "</figcaption></figure>"
        for t, uri in charts(r)
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>vfleet report: {name}</title>"
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block}"
        "pre{background:#f4f4f4;padding:1em}</style></head><body>"
        f"<h1>Batch {name}</h1>\n<pre>{html.escape(render_text(r))}</pre>\n{images}\n"
        "</body></html>\n"
    )


def write_html(r: BatchReport, path: Path) -> None:
    """Write :func:`render_html` to ``path``."""
    path.write_text(render_html(r), encoding="utf-8")

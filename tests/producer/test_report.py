"""``vfleet report``: distributions, failures, latency and tokens, as text and as an HTML
page that a headless Chromium renders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.report import build_report, render_text, write_html
from tests.records import add_records
from tests.services import chromium, vfleet
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import BatchInfo, Outcome

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    engine = make_engine(f"sqlite:///{tmp_path / 'vfleet.db'}")
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def finished_batch(ledger: Ledger, name: str, outputs: list[dict[str, object] | None]) -> BatchInfo:
    """A batch whose records got ``outputs`` in turn; None is a failure."""
    info, _ = ledger.create_batch(
        name=name, spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    add_records(ledger, info.id, [(f"k{i}", i, {"i": i}) for i in range(len(outputs))])
    for n, (r, out) in enumerate(zip(iter_records(ledger.engine, info.id), outputs, strict=True)):
        c = ledger.claim(r.id, worker="w", instance="i", task_id=None, lease_seconds=30)
        assert c is not None
        if out is None:
            kind = "context_length" if n % 2 else "invalid_output"
            ledger.fail(c, kind=kind, message=f"{kind} on record {n}")
        else:
            ledger.succeed(c, Outcome("t", out, 100, 10 + n, float(10 * (n + 1))))
    return info


def test_judge_report_has_histogram_failures_latency_and_tokens(ledger: Ledger) -> None:
    scores = [7, 7, 8, 3, 10, 7, 8]
    info = finished_batch(ledger, "judged", [*({"score": s} for s in scores), None, None, None])
    r = build_report(ledger, info)
    d = r.as_dict()
    assert d["scores"] == {"3": 1, "7": 3, "8": 2, "10": 1}  # whole scores print whole
    assert d["mean_score"] == pytest.approx(sum(scores) / 7)
    assert d["failures"]["invalid_output"]["count"] == 1
    assert d["failures"]["context_length"] == {
        "count": 2,
        "example": "context_length on record 7",
        "key": "k7",
    }
    assert list(d["failures"]) == ["context_length", "invalid_output"]  # most first
    # Latencies of the 7 successes are 10, 20 ... 70 ms.
    assert d["latency_ms"] == {"p50": 40.0, "p90": 70.0, "p99": 70.0}
    assert d["tokens"] == {"prompt": 700, "completion": sum(10 + n for n in range(7))}
    text = render_text(r)
    assert "batch judged" in text and "mean score 7.14" in text
    assert "context_length        2  e.g. k7: context_length on record 7" in text
    assert "latency: p50 40.0 ms, p90 70.0 ms, p99 70.0 ms" in text


def test_classify_and_pairwise_reports_count_labels_winners_and_consistency(
    ledger: Ledger,
) -> None:
    labels = [{"label": x} for x in ("spam", "ham", "spam", "spam")]
    d = build_report(ledger, finished_batch(ledger, "cls", labels)).as_dict()
    assert d["labels"] == {"spam": 3, "ham": 1} and d["scores"] == {}
    pairs = [
        {"winner": "A", "consistent": True},
        {"winner": "tie", "consistent": False},
        {"winner": "B", "consistent": True},
        {"winner": "A", "consistent": True},
    ]
    r = build_report(ledger, finished_batch(ledger, "pw", pairs))
    assert r.as_dict()["winners"] == {"A": 2, "tie": 1, "B": 1}
    assert r.consistency_rate == pytest.approx(0.75)
    assert "position-swap consistency: 75.0% of 4" in render_text(r)


def test_html_report_renders_in_headless_chromium_with_embedded_charts(
    ledger: Ledger, tmp_path: Path
) -> None:
    info = finished_batch(ledger, "html-batch", [{"score": s} for s in (4, 6, 6, 9)] + [None])
    page = tmp_path / "report.html"
    write_html(build_report(ledger, info), page)
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # self-contained
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Batch html-batch" in dom.stdout
    assert dom.stdout.count('<img alt="') == 4  # status, scores, failures, latency
    assert 'src="data:image/png;base64,iVBORw0KGgo' in dom.stdout  # PNG magic, base64
    shot = tmp_path / "shot.png"
    res = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert res.returncode == 0 and shot.read_bytes().startswith(b"\x89PNG")


def test_report_command_prints_and_writes_html(ledger: Ledger, tmp_path: Path) -> None:
    finished_batch(ledger, "cli-batch", [{"label": "a"}, {"label": "b"}, {"label": "a"}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    env["VFLEET_DATABASE_URL"] = str(ledger.engine.url)
    page = tmp_path / "r.html"
    res = vfleet("report", "cli-batch", "--html", str(page), env=env)
    assert res.returncode == 0, res.stderr
    assert "labels:" in res.stdout and "batch cli-batch" in res.stdout
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")
    assert vfleet("report", "nope", env=env).stderr.startswith("vfleet: error: no batch named")

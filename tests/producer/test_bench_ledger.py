"""The ledger-at-scale benchmark's builder: a batch stored through the production intake
with the mix the benchmark promises, and one measured reconcile round on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.bench_ledger import build, measure
from producer.export import export_batch
from workers.store.engine import make_engine
from workers.store.ledger import Ledger

pytestmark = pytest.mark.timeout(120)


def test_build_stores_the_promised_mix_and_the_round_republishes_the_stale(
    sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = build(sqlite_url, 1000, "b")
    assert out["records"] == 1000
    engine = make_engine(sqlite_url)
    ledger = Ledger(engine)
    info = ledger.batch("b")
    counts = ledger.counts(info.id)
    assert (counts["succeeded"], counts["failed"], counts["queued"]) == (950, 40, 10)
    assert export_batch(ledger, info, tmp_path / "b.jsonl") == 1000
    engine.dispose()
    figures = measure(sqlite_url, redis_url, "b")
    assert figures["republished"] == 10  # every queued one was stamped stale (10 < 100)
    assert figures["status_reads_s"] > 0 and figures["reconcile_s"] > 0

"""Versioned dedupe: what a record's fingerprint covers, and reuse of stored results; plus
how votes on one record are aggregated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.sources import file_source
from producer.storing import store_source
from workers.judge import aggregate_votes
from workers.spec import Spec, load_spec, work_fingerprint
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import BatchInfo, Outcome

pytestmark = pytest.mark.timeout(60)

RECORD = {"id": "r1", "question": "2+2?", "answer": "4"}


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """On SQLite and on PostgreSQL (marked ``postgres``)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def test_fingerprint_covers_input_spec_model_and_sampling_parameters() -> None:
    judge = load_spec("judge")
    base = work_fingerprint(judge, "m")(RECORD)
    assert base == work_fingerprint(load_spec("judge"), "m")(dict(reversed(RECORD.items())))
    assert len(base) == 64
    hotter = Spec.model_validate({**judge.model_dump(), "params": {"temperature": 0.7}})
    other_prompt = Spec.model_validate({**judge.model_dump(), "system": "Grade harshly."})
    changed = {
        "input": work_fingerprint(judge, "m")({**RECORD, "answer": "5"}),
        "model": work_fingerprint(judge, "other-model")(RECORD),
        "params": work_fingerprint(hotter, "m")(RECORD),
        "prompt": work_fingerprint(other_prompt, "m")(RECORD),
    }
    assert base not in changed.values() and len(set(changed.values())) == 4


def _batch(ledger: Ledger, name: str, spec: Spec, model: str = "m") -> BatchInfo:
    info, _ = ledger.create_batch(
        name=name,
        spec_name=spec.name,
        spec=spec.model_dump(mode="json"),
        model=model,
        route="shared",
    )
    return info


def _finish_all(ledger: Ledger, info: BatchInfo) -> None:
    for r in iter_records(ledger.engine, info.id):
        c = ledger.claim(r.id, worker="w", instance="i", task_id=None, lease_seconds=30)
        assert c is not None
        out = {"score": int(r.input["answer"]), "reasoning": "ok"}
        ledger.succeed(c, Outcome(json.dumps(out), out, 10, 5, 12.0, {"instance": "i"}))


def test_identical_work_in_a_new_batch_reuses_results_and_changed_work_queues(
    ledger: Ledger, tmp_path: Path
) -> None:
    src = tmp_path / "r.jsonl"
    rows = [{"id": f"k{i}", "question": "q", "answer": str(i)} for i in range(5)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    judge = load_spec("judge")
    first = _batch(ledger, "one", judge)
    store_source(ledger, first, file_source(src), key_field="id")
    _finish_all(ledger, first)
    old = {r.key: r for r in iter_records(ledger.engine, first.id)}

    again = store_source(ledger, _batch(ledger, "two", judge), file_source(src), key_field="id")
    assert (again.added, again.reused) == (5, 5)
    for r in iter_records(ledger.engine, ledger.batch("two").id):
        src_rec = old[r.key]
        assert r.status == "succeeded" and r.reused_from == src_rec.id
        assert (r.output, r.output_text, r.provenance) == (
            src_rec.output,
            src_rec.output_text,
            src_rec.provenance,
        )

    no_reuse = store_source(
        ledger, _batch(ledger, "three", judge), file_source(src), key_field="id", reuse=False
    )
    assert (no_reuse.added, no_reuse.reused) == (5, 0)
    other_model = store_source(
        ledger, _batch(ledger, "four", judge, "m2"), file_source(src), key_field="id"
    )
    assert other_model.reused == 0
    assert ledger.counts(ledger.batch("four").id)["queued"] == 5
    # The first batch's results are untouched and still readable.
    assert {r.key: r.output for r in iter_records(ledger.engine, first.id)} == {
        k: r.output for k, r in old.items()
    }


def test_votes_give_mean_score_with_spread_and_majority_label() -> None:
    scores = aggregate_votes([{"score": s, "reasoning": f"r{s}"} for s in (6, 8, 7)])
    assert scores is not None
    assert scores["score"] == pytest.approx(7.0) and scores["reasoning"] == "r6"
    v = scores["votes"]
    assert (v["n"], v["min"], v["max"], v["scores"]) == (3, 6, 8, [6, 8, 7])
    assert v["stdev"] == pytest.approx(0.8165, abs=1e-3)
    labels = aggregate_votes([{"label": x} for x in ("pos", "neg", "pos", "neu", "pos")])
    assert labels is not None
    assert labels["label"] == "pos" and labels["votes"]["agreement"] == pytest.approx(0.6)
    assert labels["votes"]["counts"] == {"pos": 3, "neg": 1, "neu": 1}
    pair = aggregate_votes(
        [
            {"winner": "A", "consistent": True},
            {"winner": "tie", "consistent": False},
            {"winner": "A", "consistent": True},
        ]
    )
    assert pair is not None and pair["winner"] == "A" and pair["consistent"] is False
    assert aggregate_votes([None, None]) is None

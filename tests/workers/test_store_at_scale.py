"""The ledger's reads that must not grow with a batch: export's pages, status's tally, the
feeder's choice of batches, and the migration that gives an existing ledger their indexes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Executable, inspect, select, tuple_, update

from tests.records import add_records
from workers.store import summary
from workers.store.batches import active_batches_query
from workers.store.engine import make_engine
from workers.store.feeding import recent_latencies_query
from workers.store.ledger import Ledger
from workers.store.migrate import current_revision, head_revision, upgrade
from workers.store.models import CLAIMABLE, Record, Status
from workers.store.queries import iter_records, record_pages
from workers.store.values import Outcome

pytestmark = pytest.mark.timeout(120)

SCALE_INDEXES = {
    "ix_records_batch_seq",
    "ix_records_batch_progress",
    "ix_records_batch_started",
    "ix_records_batch_finished",
}


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def _batch(ledger: Ledger) -> int:
    info, _ = ledger.create_batch(
        name="big", spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    return info.id


def test_export_pages_are_bounded_and_keep_input_order_across_files(ledger: Ledger) -> None:
    batch = _batch(ledger)
    # Two files fed into one batch: their line numbers (seq) overlap.
    add_records(ledger, batch, ((f"a{i}", i, {"i": i}) for i in range(1, 60)))
    add_records(ledger, batch, ((f"b{i}", i, {"i": i}) for i in range(1, 45)))
    pages = list(record_pages(ledger.engine, batch, page=7))
    assert all(1 <= len(p) <= 7 for p in pages)
    got = [(r.seq, r.id) for p in pages for r in p]
    assert got == sorted(got)
    assert len(got) == len(set(got)) == 59 + 44
    assert [r.key for r in iter_records(ledger.engine, batch, chunk=5)][:4] == [
        "a1",
        "b1",
        "a2",
        "b2",
    ]


def test_an_export_page_is_one_index_range_not_a_scan(sqlite_url: str) -> None:
    """Each page starts where the last ended along ``ix_records_batch_seq``: no page reads
    or sorts the whole batch (what made exporting 10^5 records take minutes)."""
    q = (
        select(Record)
        .where(Record.batch_id == 1, tuple_(Record.seq, Record.id) > tuple_(10, 10))
        .order_by(Record.seq, Record.id)
        .limit(1000)
    )
    plan = _sqlite_plan(sqlite_url, q)
    assert "ix_records_batch_seq" in plan
    assert "TEMP B-TREE" not in plan


def test_the_feeder_reads_only_batches_with_work_of_its_kind(ledger: Ledger) -> None:
    done, waiting, running = (
        ledger.create_batch(name=n, spec_name="judge", spec={}, model="m", route="shared")[0].id
        for n in ("done", "waiting", "running")
    )
    for batch in (done, waiting, running):
        add_records(ledger, batch, ((f"k{i}", i, {"i": i}) for i in range(3)))
    for batch in (done, running):
        ids = ledger.unpublished(batch, limit=3)
        ledger.mark_published(ids)
        claims = ledger.claim_many(ids, worker="w", instance="i", task_id="t", lease_seconds=60)
        for c in claims[: 3 if batch == done else 2]:
            assert ledger.succeed(c, Outcome("ok", {"s": 1}, 10, 3, 5.0, finish_reason="stop"))

    def names(**kw: object) -> list[str]:
        return [b.name for b in ledger.active_batches(**kw)]  # type: ignore[arg-type]

    assert names() == ["done", "waiting", "running"]
    assert names(holding=CLAIMABLE, unpublished=True) == ["waiting"]
    assert names(holding=(Status.RUNNING,)) == ["running"]
    ledger.mark_published(ledger.unpublished(waiting, limit=3))
    assert names(holding=CLAIMABLE, unpublished=True) == []
    assert names(holding=CLAIMABLE) == ["waiting"]


def test_the_feeders_choice_of_batches_is_one_index_seek_per_batch(sqlite_url: str) -> None:
    plan = _sqlite_plan(sqlite_url, active_batches_query(holding=CLAIMABLE, unpublished=True))
    assert "SEARCH records USING INDEX ix_records_batch_status" in plan
    assert "SCAN records" not in plan


def test_the_hedgers_latency_sample_follows_finish_time(ledger: Ledger) -> None:
    """A slow instance's results belong to records published first: a sample in publish
    order would leave them out, and its tail would never be hedged."""
    batch = _batch(ledger)
    add_records(ledger, batch, ((f"k{i}", i, {"i": i}) for i in range(6)))
    ids = ledger.unpublished(batch, limit=6)
    ledger.mark_published(ids)
    slow, fast = ids[:2], ids[2:]  # the slow instance took the first published
    claims = {
        c.record_id: c
        for c in ledger.claim_many(ids, worker="w", instance="i", task_id="t", lease_seconds=60)
    }
    for rid in fast + slow:  # the slow instance finishes last
        instance, ms = ("slow", 4000.0) if rid in slow else ("fast", 100.0)
        outcome = Outcome("ok", {}, 1, 1, ms, provenance={"instance": instance})
        assert ledger.succeed(claims[rid], outcome)
    with ledger.engine.begin() as conn:  # the instance column, as a worker's claim sets it
        for rid in ids:
            name = "slow" if rid in slow else "fast"
            conn.execute(update(Record).where(Record.id == rid).values(instance=name))
    assert ledger.recent_latencies(batch, limit=2) == [("slow", 4.0), ("slow", 4.0)]
    assert (
        sorted(ledger.recent_latencies(batch, limit=6)) == [("fast", 0.1)] * 4 + [("slow", 4.0)] * 2
    )


def test_the_hedgers_latency_sample_is_one_index_range(sqlite_url: str) -> None:
    plan = _sqlite_plan(sqlite_url, recent_latencies_query().params(b_batch=1, b_limit=500))
    assert "SEARCH records USING INDEX ix_records_batch_finished" in plan
    assert "TEMP B-TREE" not in plan


def _sqlite_plan(url: str, query: Executable) -> str:
    """SQLite's ``EXPLAIN QUERY PLAN`` of ``query`` on a fresh ledger, in one line."""
    engine = make_engine(url)
    upgrade(engine)
    try:
        sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            return " ".join(str(row[-1]) for row in rows)
    finally:
        engine.dispose()


def test_the_tally_agrees_with_the_separate_counts(ledger: Ledger) -> None:
    batch = _batch(ledger)
    add_records(ledger, batch, ((f"k{i}", i, {"i": i}) for i in range(12)))
    ids = ledger.unpublished(batch, limit=12)
    a = ledger.claim_many(ids[:6], worker="w", instance="i1", task_id="t", lease_seconds=60)
    b = ledger.claim_many(ids[6:9], worker="w", instance="i2", task_id="t", lease_seconds=60)
    for c in a[:4]:
        assert ledger.succeed(c, Outcome("ok", {"s": 1}, 10, 3, 5.0, finish_reason="stop"))
    assert ledger.succeed(a[4], Outcome("cut", None, 7, 9, 5.0, finish_reason="length"))
    assert ledger.fail(b[0], kind="bad_request", message="400", prompt_tokens=5)
    assert ledger.retry_later(b[1], kind="server", message="503", delay=60)
    tally = summary.tally(ledger.engine, batch)
    assert tally.counts == ledger.counts(batch)
    assert tally.counts["succeeded"] == 5 and tally.counts["queued"] == 3
    assert tally.instances == ledger.instance_counts(batch)
    assert tally.finish_reasons == summary.finish_reasons(ledger.engine, batch)
    assert list(tally.finish_reasons) == ["stop", "length"]
    assert tally.usage == summary.usage(ledger.engine, batch) == summary.Usage(52, 21)


def test_the_migration_indexes_an_existing_ledger_and_keeps_its_records(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0003")
    ledger = Ledger(engine)
    batch = _batch(ledger)
    add_records(ledger, batch, ((f"k{i}", 500 - i, {"i": i}) for i in range(500)))
    before = {ix["name"] for ix in inspect(engine).get_indexes("records")}
    assert not SCALE_INDEXES & before
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    after = {ix["name"] for ix in inspect(engine).get_indexes("records")}
    assert after == before | SCALE_INDEXES
    seqs = [r.seq for r in iter_records(engine, batch, chunk=64)]
    engine.dispose()
    assert seqs == list(range(1, 501))

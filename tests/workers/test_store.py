"""The ledger on SQLite and PostgreSQL: migrations, dedupe, claims, leases."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from tests.records import add_records
from workers.errors import BatchNotFoundError, ConfigError
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import current_revision, ensure_schema, head_revision, upgrade
from workers.store.models import utcnow
from workers.store.queries import iter_records
from workers.store.values import Outcome

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url, pool_size=20)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def _batch(ledger: Ledger, name: str = "b1"):  # type: ignore[no-untyped-def]
    info, _ = ledger.create_batch(
        name=name, spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    return info


def _rows(n: int, start: int = 0) -> list[tuple[str, int, dict[str, object]]]:
    return [(f"k{i}", i, {"i": i, "text": f"record {i}"}) for i in range(start, start + n)]


def test_the_head_the_opener_knows_is_alembics_and_reads_back_from_a_migrated_ledger(
    database_url: str,
) -> None:
    from workers.store.opening import SCHEMA_HEAD, _stored_revision

    assert head_revision() == SCHEMA_HEAD
    engine = make_engine(database_url)
    try:
        assert _stored_revision(engine) is None
        upgrade(engine)
        assert _stored_revision(engine) == SCHEMA_HEAD == current_revision(engine)
    finally:
        engine.dispose()


def test_migration_creates_every_table_and_is_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(engine)
    ensure_schema(engine)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"batches", "records", "gpu_snapshots", "vllm_snapshots", "bad_lines"} <= tables


def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    """A column or index added to the models without a migration (or the reverse) fails."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from workers.store.models import Base

    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_a_deleted_batch_id_is_never_given_to_a_new_batch(database_url: str) -> None:
    """A worker caches a batch's spec by id for its life: a reused id would run the new
    batch with the deleted batch's spec."""
    engine = make_engine(database_url)
    upgrade(engine)
    worker_view, producer = Ledger(engine), Ledger(engine)
    try:
        first = _batch(producer, "first")
        newest = _batch(producer, "newest")
        assert worker_view.batch_by_id(newest.id).name == "newest"
        producer.delete_batch(newest.id)
        again, _ = producer.create_batch(
            name="again", spec_name="judge", spec={"template": "z"}, model="m", route="shared"
        )
        assert again.id not in (first.id, newest.id)
        assert worker_view.batch_by_id(again.id).spec == {"template": "z"}
    finally:
        engine.dispose()


def test_sqlite_ledger_of_the_old_schema_keeps_its_records_through_the_upgrade(
    sqlite_url: str,
) -> None:
    """The upgrade rebuilds ``batches``; with foreign keys on, dropping the old table would
    have taken every record with it through the cascade."""
    engine = make_engine(sqlite_url)
    try:
        upgrade(engine, "0004")
        ledger = Ledger(engine)
        kept, gone = _batch(ledger, "kept"), _batch(ledger, "gone")
        add_records(ledger, kept.id, _rows(300))
        add_records(ledger, gone.id, _rows(20))
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert ledger.counts(kept.id)["queued"] == 300
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            conn.exec_driver_sql(f"DELETE FROM batches WHERE id = {gone.id}")
            conn.commit()
        assert ledger.counts(gone.id)["queued"] == 0  # the cascade still reaches records
        assert ledger.counts(kept.id)["queued"] == 300
        assert _batch(ledger, "next").id > gone.id
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert mode == "wal"


def test_adding_the_same_keys_twice_adds_nothing(ledger: Ledger) -> None:
    b = _batch(ledger)
    assert add_records(ledger, b.id, _rows(5000), chunk=700) == 5000
    assert add_records(ledger, b.id, _rows(5100), chunk=700) == 100
    assert ledger.set_total(b.id) == 5100
    assert ledger.counts(b.id)["queued"] == 5100


def test_same_batch_name_with_another_spec_is_refused(ledger: Ledger) -> None:
    _batch(ledger)
    again, new = ledger.create_batch(
        name="b1", spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    assert not new
    with pytest.raises(ConfigError, match="another spec"):
        ledger.create_batch(
            name="b1", spec_name="judge", spec={"template": "y"}, model="m", route="shared"
        )
    with pytest.raises(BatchNotFoundError):
        ledger.batch("nope")
    assert again.name == "b1"


def test_only_one_of_many_racing_workers_claims_a_record(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(20))
    ids = ledger.unpublished(b.id, limit=100)
    wins: list[tuple[int, str]] = []
    lock = threading.Lock()

    def grab(worker: str) -> None:
        for rid in ids:
            claim = ledger.claim(rid, worker=worker, instance="i", task_id=None, lease_seconds=60)
            if claim is not None:
                with lock:
                    wins.append((rid, worker))

    threads = [threading.Thread(target=grab, args=(f"w{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r, _ in wins) == sorted(ids)
    assert ledger.counts(b.id)["running"] == 20


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_finish(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(1))
    (rid,) = ledger.unpublished(b.id, limit=1)
    first = ledger.claim(rid, worker="a", instance="i", task_id="t1", lease_seconds=30)
    assert first is not None and first.attempts == 1
    assert ledger.claim(rid, worker="b", instance="i", task_id="t2", lease_seconds=30) is None
    later = utcnow() + timedelta(seconds=31)
    second = ledger.claim(rid, worker="b", instance="i", task_id="t2", lease_seconds=30, now=later)
    assert second is not None and second.attempts == 2
    outcome = Outcome("late", None, 1, 1, 5.0)
    assert not ledger.succeed(first, outcome)
    assert ledger.succeed(second, Outcome("ok", {"score": 3}, 10, 4, 12.5))
    assert ledger.counts(b.id)["succeeded"] == 1
    (record,) = list(iter_records(ledger.engine, b.id))
    assert (record.output_text, record.output, record.worker) == ("ok", {"score": 3}, "b")
    assert record.lease_until is None and record.finished_at is not None


def test_a_chunk_is_claimed_in_one_statement_and_stored_in_one_transaction(
    ledger: Ledger,
) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(6))
    ids = ledger.unpublished(b.id, limit=6)
    taken = ledger.claim(ids[2], worker="other", instance="j", task_id=None, lease_seconds=30)
    assert taken is not None
    claims = ledger.claim_many(
        list(reversed(ids)), worker="w", instance="i", task_id="t", lease_seconds=30
    )
    # Every claimable one, in the order asked; the one another worker holds is left out.
    assert [c.record_id for c in claims] == [i for i in reversed(ids) if i != ids[2]]
    assert all(c.attempts == 1 and c.batch.id == b.id for c in claims)
    ok, failed, again = claims[0], claims[1], claims[2]
    with ledger.transaction() as conn:
        assert ledger.succeed(ok, Outcome("ok", {"score": 1}, 3, 2, 1.0), conn=conn)
        assert ledger.fail(failed, kind="bad_request", message="400", conn=conn)
        assert ledger.retry_later(again, kind="server", message="503", delay=30, conn=conn)
    counts = ledger.counts(b.id)
    assert (counts["succeeded"], counts["failed"], counts["retry"], counts["running"]) == (
        1,
        1,
        1,
        3,
    )
    # A worker that cannot run a message gives it back: only records still waiting go.
    add_records(ledger, b.id, [("late", 99, {"i": 99})])
    (late,) = ledger.unpublished(b.id, limit=1)
    running = [c.record_id for c in claims[3:]]
    assert ledger.give_back([*running, late], delay=0) == 1
    assert ledger.counts(b.id)["running"] == 3


def test_retry_then_fail_keeps_attempts_and_reason(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(1))
    (rid,) = ledger.unpublished(b.id, limit=1)
    claim = ledger.claim(rid, worker="a", instance="i", task_id=None, lease_seconds=30)
    assert claim is not None
    assert ledger.retry_later(claim, kind="server", message="503: engine dead")
    again = ledger.claim(rid, worker="a", instance="i", task_id=None, lease_seconds=30)
    assert again is not None and again.attempts == 2
    assert ledger.fail(again, kind="context_length", message="too long", raw=None)
    (record,) = list(iter_records(ledger.engine, b.id))
    assert (record.status, record.attempts, record.error_kind) == ("failed", 2, "context_length")
    assert ledger.claim(rid, worker="a", instance="i", task_id=None, lease_seconds=30) is None


def test_records_stream_back_in_input_order(ledger: Ledger) -> None:
    b = _batch(ledger)
    rows = _rows(2500)
    rows.reverse()
    add_records(ledger, b.id, rows)
    seqs = [r.seq for r in iter_records(ledger.engine, b.id, chunk=300)]
    assert seqs == list(range(2500))


def test_published_marks_leave_only_new_records_unpublished(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(10))
    first = ledger.unpublished(b.id, limit=100)
    ledger.mark_published(first)
    add_records(ledger, b.id, _rows(15))
    assert len(ledger.unpublished(b.id, limit=100)) == 5


def test_a_record_retried_after_its_batch_was_cancelled_ends_cancelled(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b.id, _rows(2))
    first, second = ledger.unpublished(b.id, limit=2)
    claim = ledger.claim(first, worker="a", instance="i", task_id=None, lease_seconds=30)
    assert claim is not None
    assert ledger.cancel(b.id) == 1  # the queued one; the running one finishes its attempt
    assert ledger.retry_later(claim, kind="server", message="503")
    counts = ledger.counts(b.id)
    assert counts["cancelled"] == 2 and counts["retry"] == 0
    assert ledger.claim(second, worker="a", instance="i", task_id=None, lease_seconds=30) is None

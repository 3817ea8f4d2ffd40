"""Batch lifecycle on the ledger: cancel, redrive, delete, OpenAI-like status words and
timestamps, and the attempts log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producer.progress import batch_progress
from tests.records import add_records
from workers.errors import StoreError
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import BatchInfo, Claim, Outcome

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """On SQLite and on PostgreSQL (marked ``postgres``)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def batch_of(ledger: Ledger, n: int, name: str = "b") -> tuple[BatchInfo, list[int]]:
    info, _ = ledger.create_batch(
        name=name, spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    add_records(ledger, info.id, [(f"k{i}", i, {"i": i}) for i in range(n)])
    return info, [r.id for r in iter_records(ledger.engine, info.id)]


def claim(ledger: Ledger, record_id: int) -> Claim:
    c = ledger.claim(record_id, worker="w", instance="i1", task_id=None, lease_seconds=60)
    assert c is not None
    return c


def status(ledger: Ledger, name: str = "b") -> dict[str, object]:
    return batch_progress(ledger, ledger.batch(name)).as_dict()


def test_status_moves_like_an_openai_batch(ledger: Ledger) -> None:
    _, ids = batch_of(ledger, 3)
    s = status(ledger)
    assert s["status"] == "validating" and isinstance(s["created_at"], int)
    assert s["in_progress_at"] is None
    first = claim(ledger, ids[0])
    assert status(ledger)["status"] == "in_progress"
    ledger.succeed(first, Outcome("t", None, 1, 1, 1.0))
    second, third = claim(ledger, ids[1]), claim(ledger, ids[2])
    assert status(ledger)["status"] == "finalizing"  # nothing waits; the last two run
    ledger.succeed(second, Outcome("t", None, 1, 1, 1.0))
    ledger.fail(third, kind="bad_request", message="400")
    s = status(ledger)
    assert s["status"] == "completed"
    assert s["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert isinstance(s["in_progress_at"], int) and isinstance(s["completed_at"], int)
    assert s["created_at"] <= s["in_progress_at"] <= s["completed_at"]  # type: ignore[operator]


def test_cancel_skips_waiting_records_and_lets_running_ones_finish(ledger: Ledger) -> None:
    info, ids = batch_of(ledger, 5)
    running = claim(ledger, ids[0])
    assert ledger.cancel(info.id) == 4
    assert ledger.claim(ids[1], worker="w", instance="i", task_id=None, lease_seconds=9) is None
    assert status(ledger)["status"] == "cancelling"
    assert ledger.active_batches() == []  # the feeder stops feeding it
    assert ledger.succeed(running, Outcome("t", None, 1, 1, 1.0))
    s = status(ledger)
    assert s["status"] == "cancelled" and isinstance(s["cancelled_at"], int)
    assert ledger.counts(info.id)["cancelled"] == 4 and ledger.counts(info.id)["succeeded"] == 1
    # Redrive: the cancelled records wait again and the batch is active again.
    assert ledger.requeue_cancelled(info.id) == 4
    assert ledger.counts(info.id)["queued"] == 4
    assert [b.name for b in ledger.active_batches()] == ["b"]
    assert status(ledger)["status"] == "in_progress"


def test_delete_refuses_while_records_run_unless_forced(ledger: Ledger) -> None:
    info, ids = batch_of(ledger, 7)
    other, _ = batch_of(ledger, 2, name="other")
    claim(ledger, ids[0])
    with pytest.raises(StoreError, match="1 records of the batch are running"):
        ledger.delete_batch(info.id)
    assert ledger.delete_batch(info.id, force=True, chunk=3) == 7
    assert [b.name for b in ledger.batches()] == ["other"]
    assert ledger.counts(other.id)["queued"] == 2


def test_attempts_log_keeps_every_failed_attempt(ledger: Ledger) -> None:
    info, ids = batch_of(ledger, 1)
    ledger.retry_later(claim(ledger, ids[0]), kind="server", message="503: busy")
    ledger.retry_later(claim(ledger, ids[0]), kind="timeout", message="timeout: 10s")
    last = claim(ledger, ids[0])
    ledger.fail(last, kind="bad_request", message="400: no")
    # A stale claim (attempt 1) cannot write to the log any more.
    assert not ledger.retry_later(Claim(ids[0], info, "k0", {}, 1), kind="server", message="late")
    [r] = list(iter_records(ledger.engine, info.id))
    log = r.attempts_log
    assert [(e["attempt"], e["kind"], e["outcome"]) for e in log] == [
        (1, "server", "retry"),
        (2, "timeout", "retry"),
        (3, "bad_request", "failed"),
    ]
    assert all(e["instance"] == "i1" and e["at"] for e in log)

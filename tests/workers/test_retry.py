"""Retry policy, and a worker runtime whose retries and give-backs wait in the ledger."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ops.sim.launcher import SimFleet
from workers import errors
from workers.async_client import AsyncLLMClient
from workers.engine import AsyncEngine
from workers.fleet import InstanceConfig
from workers.health import HealthGate
from workers.retry import GIVE_BACK_DELAY, Action, RetryPolicy
from workers.runtime import WorkerRuntime
from workers.settings import Settings
from workers.spec import load_spec
from workers.store.engine import make_engine
from workers.store.intake import IntakeRow, store_rows
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.models import Record, Status, utcnow

pytestmark = pytest.mark.timeout(120)


def policy(**kw: float) -> RetryPolicy:
    args = {"max_attempts": 3, "backoff_base": 1.0, "backoff_max": 10.0, **kw}
    return RetryPolicy(**args, rng=random.Random(1))  # type: ignore[arg-type]


def test_permanent_errors_fail_at_once_whatever_the_attempts_left() -> None:
    for error in (
        errors.ContextLengthError("too long"),
        errors.TruncatedError("cut at max_tokens"),
        errors.BadRequestError("400"),
        errors.TemplateError("no field"),
    ):
        decision = policy().after_error(1, error)
        assert decision.action is Action.FAIL and decision.reason == str(error)


def test_transient_errors_retry_with_growing_capped_backoff_then_fail() -> None:
    p = policy(backoff_max=5.0)
    delays = [p.after_error(n, errors.ServerError("503")).delay for n in (1, 2)]
    assert 0 <= delays[0] <= 1.0 and 0 <= delays[1] <= 2.0
    assert all(p.backoff(n) <= 5.0 for n in range(1, 40))
    last = p.after_error(3, errors.ServerError("503"))
    assert last.action is Action.FAIL and last.reason == "gave up after 3 attempts: 503"


def test_retry_after_is_a_floor_capped_by_the_longest_backoff() -> None:
    p = policy(backoff_max=10.0)
    assert p.after_error(1, errors.RateLimitedError("429", retry_after=7)).delay >= 7
    assert p.after_error(1, errors.RateLimitedError("429", retry_after=900)).delay == 10.0


def test_give_back_is_due_shortly_or_at_once_when_draining() -> None:
    assert policy().give_back("down").delay == GIVE_BACK_DELAY
    assert policy().give_back("draining", at_once=True).delay == 0.0


def test_only_refused_connections_count_against_the_instance() -> None:
    assert RetryPolicy.counts_against_instance(errors.ConnectError("refused"))
    assert not RetryPolicy.counts_against_instance(errors.ServerError("503"))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    engine = make_engine(f"sqlite:///{tmp_path / 'vfleet.db'}")
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def _records(ledger: Ledger, n: int) -> list[int]:
    spec = load_spec("judge")
    info, _ = ledger.create_batch(
        name="b", spec_name="judge", spec=spec.model_dump(), model="sim-model", route="shared"
    )
    rows: list[IntakeRow] = [(f"k{i}", i, {"question": "q", "answer": "a"}, None) for i in range(n)]
    store_rows(ledger, info.id, rows)
    ids = ledger.due(info.id, limit=n)
    ledger.mark_published(ids)
    return ids


def _record(ledger: Ledger, rid: int) -> Record:
    from sqlalchemy.orm import Session

    with Session(ledger.engine) as s:
        row = s.get(Record, rid)
        assert row is not None
        return row


def test_a_429_leaves_the_record_waiting_in_the_ledger_until_retry_after(
    ledger: Ledger,
) -> None:
    args = ["--ttft", "0", "--fail-rate", "1", "--fail-kinds", "429", "--retry-after", "30"]
    with SimFleet(extra_args=args) as sim:
        inst = InstanceConfig(name="a", base_url=sim.urls[0], model="sim-model")
        engine = AsyncEngine().start()
        client = AsyncLLMClient(inst, concurrency=4)
        runtime = WorkerRuntime(
            Settings(retry_backoff_max=60), inst, ledger, client, engine, worker_name="w@h"
        )
        (rid,) = _records(ledger, 1)
        before = utcnow()
        try:
            assert runtime.process([rid], worker="w@h", task_id="t1") == "retry 1"
        finally:
            engine.run(client.aclose())
            engine.stop()
    row = _record(ledger, rid)
    assert (row.status, row.error_kind, row.published_at) == (Status.RETRY, "rate_limit", None)
    assert row.not_before is not None and row.not_before >= before + timedelta(seconds=30)
    info = ledger.batch("b")
    assert ledger.due(info.id, limit=10) == []  # not due yet: the feeder leaves it
    assert ledger.waiting(info.id)
    assert ledger.due(info.id, limit=10, now=row.not_before) == [rid]


def test_a_closed_gate_gives_records_back_unclaimed(ledger: Ledger) -> None:
    inst = InstanceConfig(name="a", base_url="http://127.0.0.1:9/v1", model="sim-model")
    gate = HealthGate(inst.base_url, failures_to_close=1)
    gate.report_failure("connection refused")
    engine = AsyncEngine()  # never started: nothing is called
    client = AsyncLLMClient(inst, concurrency=4)
    runtime = WorkerRuntime(Settings(), inst, ledger, client, engine, gate=gate, worker_name="w@h")
    first, second = _records(ledger, 2)
    assert runtime.process([first], worker="w@h", task_id="t1") == "given back 1"
    row = _record(ledger, first)
    assert (row.status, row.attempts, row.published_at) == (Status.QUEUED, 0, None)
    assert row.not_before is not None
    info = ledger.batch("b")
    assert ledger.due(info.id, limit=10) == []  # due after the give-back delay
    assert ledger.due(info.id, limit=10, now=row.not_before) == [first]
    runtime.draining = True  # shutting down: given back due at once
    assert runtime.process([second], worker="w@h", task_id="t2") == "given back 1"
    assert ledger.due(info.id, limit=10, now=utcnow() + timedelta(seconds=0.1)) == [second]
    gate.close()

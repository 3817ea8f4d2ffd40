"""What one instance worker process holds: its ledger, its client, its instance, its gate.

The Celery task calls :meth:`WorkerRuntime.process` with the record ids of one message (a
chunk, :mod:`workers.dispatch`). For the chunk the runtime

1. claims every record in one statement (each under its own attempt number and lease);
2. runs them concurrently on the worker's event loop (:mod:`workers.engine`), each through
   :func:`workers.judge.judge_record_async` and the instance's async client, at most the
   instance's concurrency at once;
3. decides what each failure means (:class:`workers.retry.RetryPolicy`) and stores every
   result, failure and retry in one transaction, before the message is acked.

Everything that decides what happens to a record lives here, in :mod:`workers.judge` and in
:mod:`workers.retry`, testable without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import tenacity
from sqlalchemy.exc import DBAPIError

from workers import errors
from workers.engine import AsyncEngine
from workers.fleet import InstanceConfig
from workers.health import HealthGate
from workers.judge import AsyncChatClient, judge_record_async
from workers.logcontext import record_context
from workers.provenance import InstanceProvenance
from workers.retry import Action, Decision, RetryPolicy
from workers.settings import Settings
from workers.spec import Spec
from workers.store.ledger import Ledger
from workers.store.values import Claim, Outcome

logger = logging.getLogger(__name__)

T = TypeVar("T")
Result = Outcome | errors.RecordError
"""What one record's run gave: its outcome, or the error that ended its attempt."""


def _where(claim: Claim, instance: str, task_id: str | None) -> str:
    """A record's identity in the text of a log line (JSON lines get the same as fields,
    from :mod:`workers.logcontext`)."""
    return f"record {claim.record_id} batch {claim.batch.name} instance {instance} task {task_id}"


@dataclass
class WorkerRuntime:
    settings: Settings
    instance: InstanceConfig
    ledger: Ledger
    client: AsyncChatClient
    engine: AsyncEngine
    gate: HealthGate | None = None
    worker_name: str = "?"
    draining: bool = False
    provenance: InstanceProvenance | None = None
    policy: RetryPolicy | None = None
    _specs: dict[int, Spec] = field(default_factory=dict)
    _inflight: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = RetryPolicy.from_settings(self.settings)
        if self.provenance is None:
            self.provenance = InstanceProvenance(self.instance)
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(DBAPIError),
            stop=tenacity.stop_after_delay(self.settings.db_retry_seconds),
            wait=tenacity.wait_exponential(multiplier=0.2, max=5),
            before_sleep=lambda rs: logger.warning(
                "database unavailable (%s); retrying", rs.outcome.exception() if rs.outcome else "?"
            ),
            reraise=True,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        assert self.policy is not None
        return self.policy

    def _db(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call the ledger, riding out a database that is briefly away."""
        return self._retrying(fn, *args, **kwargs)

    def spec_for(self, claim: Claim) -> Spec:
        spec = self._specs.get(claim.batch.id)
        if spec is None:
            spec = self._specs[claim.batch.id] = Spec.model_validate(claim.batch.spec)
        return spec

    def inflight(self) -> list[tuple[int, int]]:
        """``(record_id, attempts)`` of the records this process is working on."""
        with self._lock:
            return list(self._inflight.items())

    def renew_leases(self) -> int:
        ids = [rid for rid, _ in self.inflight()]
        return self.ledger.renew(
            ids, worker=self.worker_name, lease_seconds=self.settings.lease_seconds
        )

    def release_all(self) -> int:
        """At shutdown: give back every unfinished claim so another worker takes it."""
        held = self.inflight()
        return self.ledger.release(held) if held else 0

    # -- a chunk of records ---------------------------------------------------------------

    def process(self, record_ids: Sequence[int], *, worker: str, task_id: str | None) -> str:
        """Claim, judge and store the records of one message; returns how they ended, e.g.
        ``succeeded 7, retry 1``: ``succeeded``, ``failed``, ``retry`` (waits in the ledger),
        ``given back`` (this worker cannot run them now: unclaimed, due again shortly),
        ``skipped`` (not claimable) or ``lost`` (another result was stored first)."""
        if self.draining:
            return self._give_back(record_ids, f"worker {self.worker_name} is shutting down")
        if self.gate is not None and not self.gate.healthy:
            return self._give_back(record_ids, f"instance {self.instance.name} is down")
        claims = self._db(
            self.ledger.claim_many,
            record_ids,
            worker=worker,
            instance=self.instance.name,
            task_id=task_id,
            lease_seconds=self.settings.lease_seconds,
        )
        ended: Counter[str] = Counter(skipped=len(record_ids) - len(claims))
        if ended["skipped"]:
            logger.info(
                "%s of %s records not claimable (done, owned elsewhere or unknown), task %s",
                ended["skipped"],
                len(record_ids),
                task_id,
            )
        if claims:
            with self._lock:
                self._inflight.update((c.record_id, c.attempts) for c in claims)
            try:
                ended.update(self._run(claims, task_id))
            finally:
                with self._lock:
                    for c in claims:
                        self._inflight.pop(c.record_id, None)
        return ", ".join(f"{status} {n}" for status, n in ended.items() if n)

    def _give_back(self, record_ids: Sequence[int], reason: str) -> str:
        decision = self.retry_policy.give_back(reason, at_once=self.draining)
        given = self._db(self.ledger.give_back, record_ids, delay=decision.delay)
        logger.debug("%s records given back: %s", given, reason)
        return f"given back {given}"

    def _run(self, claims: list[Claim], task_id: str | None) -> Counter[str]:
        provenance = self._provenance()
        max_model_len = provenance.get("max_model_len")
        results = self.engine.run(self._judge_all(claims, task_id, max_model_len))
        decisions = [self._decide(c, r) for c, r in zip(claims, results, strict=True)]
        return self._db(self._store, claims, results, decisions, provenance, task_id)

    async def _judge_all(
        self, claims: list[Claim], task_id: str | None, max_model_len: int | None
    ) -> list[Result]:
        return list(await asyncio.gather(*(self._judge(c, task_id, max_model_len) for c in claims)))

    async def _judge(self, claim: Claim, task_id: str | None, max_model_len: int | None) -> Result:
        # Each record's coroutine runs in a context of its own: its log lines name it.
        with record_context(
            record=claim.record_id,
            batch=claim.batch.name,
            instance=self.instance.name,
            task_id=task_id,
        ):
            try:
                spec = self.spec_for(claim)
                return await judge_record_async(
                    spec, claim.input, self.client, max_model_len=max_model_len
                )
            except errors.RecordError as e:
                return e

    def _decide(self, claim: Claim, result: Result) -> Decision | None:
        """What a failed record's error means (None for a success); a refused connection
        also counts against the instance's health."""
        if not isinstance(result, errors.RecordError):
            if self.gate is not None:
                self.gate.report_answer()
            return None
        policy = self.retry_policy
        if self.gate is not None and policy.counts_against_instance(result):
            self.gate.report_failure(str(result))
        elif self.gate is not None and isinstance(result, errors.ServerError):
            self.gate.report_server_error()
        return policy.after_error(claim.attempts, result)

    def _store(
        self,
        claims: list[Claim],
        results: list[Result],
        decisions: list[Decision | None],
        provenance: dict[str, Any],
        task_id: str | None,
    ) -> Counter[str]:
        """Every record's end of this attempt, in one transaction (all or nothing, so a
        database that went away meanwhile is ridden out by running it again)."""
        ended: Counter[str] = Counter()
        lines: list[tuple[Claim, int, str, tuple[object, ...]]] = []
        with self.ledger.transaction() as conn:
            for claim, result, decision in zip(claims, results, decisions, strict=True):
                where = _where(claim, self.instance.name, task_id)
                if isinstance(result, Outcome):
                    outcome = replace(result, provenance=provenance)
                    if self.ledger.succeed(claim, outcome, conn=conn):
                        ended["succeeded"] += 1
                    else:
                        # A hedge finished it first, or the lease expired and another
                        # worker took it: the stored result stands, this answer is dropped.
                        ended["lost"] += 1
                        lines.append(
                            (claim, logging.INFO, "%s: finished elsewhere first", (where,))
                        )
                    continue
                assert decision is not None
                if decision.action is Action.FAIL:
                    self.ledger.fail(
                        claim,
                        kind=result.kind,
                        message=decision.reason,
                        raw=result.raw,
                        prompt_tokens=result.prompt_tokens,
                        completion_tokens=result.completion_tokens,
                        finish_reason=result.finish_reason,
                        conn=conn,
                    )
                    ended["failed"] += 1
                    failed = (where, result.kind, decision.reason)
                    lines.append((claim, logging.WARNING, "%s failed (%s): %s", failed))
                else:
                    self.ledger.retry_later(
                        claim,
                        kind=result.kind,
                        message=str(result),
                        delay=decision.delay,
                        conn=conn,
                    )
                    ended["retry"] += 1
                    retry = (where, claim.attempts, str(result), decision.delay)
                    lines.append((claim, logging.INFO, "%s attempt %s: %s; retry in %.1fs", retry))
        for claim, level, text, args in lines:  # once stored: a rolled-back try says nothing
            with record_context(
                record=claim.record_id,
                batch=claim.batch.name,
                instance=self.instance.name,
                task_id=task_id,
            ):
                logger.log(level, text, *args)
        return ended

    def _provenance(self) -> dict[str, Any]:
        """Where results of this worker come from (instance, host, GPUs, model id,
        max_model_len), read from the instance and refreshed now and then."""
        assert self.provenance is not None
        return self.provenance.get()

    # -- hedges ----------------------------------------------------------------------------

    def hedge(self, record_ids: Sequence[int], *, worker: str) -> str:
        """Run records that other instances are running, and store each answer that comes
        first (:mod:`workers.hedging`). Best effort: an error or a lost race changes
        nothing, the owners' attempts go on."""
        if self.draining or (self.gate is not None and not self.gate.healthy):
            return f"skipped {len(record_ids)}"
        ended: Counter[str] = Counter()
        for record_id in record_ids:
            with record_context(record=record_id, instance=self.instance.name):
                ended[self._hedge(record_id, worker=worker)] += 1
        return ", ".join(f"{status} {n}" for status, n in ended.items())

    def _hedge(self, record_id: int, *, worker: str) -> str:
        peeked = self._db(self.ledger.peek_running, record_id)
        if peeked is None or peeked[1] == self.instance.name:
            return "skipped"
        claim, owner = peeked
        provenance = self._provenance()
        result = self.engine.run(self._judge(claim, None, provenance.get("max_model_len")))
        if isinstance(result, errors.RecordError):
            logger.info("record %s: hedge on %s failed (%s)", record_id, self.instance.name, result)
            return "skipped"
        outcome = replace(result, provenance={**provenance, "hedged_from": owner})
        stored = self._db(
            self.ledger.succeed_hedge, claim, outcome, worker=worker, instance=self.instance.name
        )
        return "succeeded" if stored else "skipped"

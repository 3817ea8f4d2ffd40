"""What one instance worker process holds: its ledger, its client, its instance, its gate.

The Celery task calls :meth:`WorkerRuntime.process`; everything that decides what happens
to a record lives here and in :mod:`workers.judge`, testable without a broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import tenacity
from sqlalchemy.exc import DBAPIError

from workers import errors
from workers.fleet import InstanceConfig
from workers.health import HealthGate
from workers.judge import ChatClient, judge_record
from workers.logcontext import record_context
from workers.provenance import InstanceProvenance
from workers.retry import Action, RetryPolicy
from workers.settings import Settings
from workers.spec import Spec
from workers.store.ledger import Ledger
from workers.store.values import Claim

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Where:
    """A record's identity in the text of a log line (JSON lines get the same as fields,
    from :mod:`workers.logcontext`)."""

    def __init__(self, claim: Claim, instance: str, task_id: str | None) -> None:
        self.text = f"record {claim.record_id} batch {claim.batch.name} instance {instance}"
        self.text += f" task {task_id}"

    def __str__(self) -> str:
        return self.text


@dataclass
class WorkerRuntime:
    settings: Settings
    instance: InstanceConfig
    ledger: Ledger
    client: ChatClient
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

    @property
    def retry_policy(self) -> RetryPolicy:
        assert self.policy is not None
        return self.policy

    def _db(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call the ledger, riding out a database that is briefly away."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(DBAPIError),
            stop=tenacity.stop_after_delay(self.settings.db_retry_seconds),
            wait=tenacity.wait_exponential(multiplier=0.2, max=5),
            before_sleep=lambda rs: logger.warning(
                "database unavailable (%s); retrying", rs.outcome.exception() if rs.outcome else "?"
            ),
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)

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

    def process(self, record_id: int, *, worker: str, task_id: str | None) -> str:
        """Claim and judge one record; return what became of it: ``succeeded``, ``failed``,
        ``retry`` (it waits in the ledger), ``given back`` (this worker cannot run it now:
        unclaimed, due again shortly), ``skipped`` (not claimable) or ``lost`` (another
        result was stored first). Every line logged meanwhile names the record."""
        with record_context(record=record_id, instance=self.instance.name, task_id=task_id) as ctx:
            return self._process(record_id, ctx, worker=worker, task_id=task_id)

    def _process(
        self, record_id: int, ctx: dict[str, Any], *, worker: str, task_id: str | None
    ) -> str:
        if self.draining:
            return self._give_back(record_id, f"worker {self.worker_name} is shutting down")
        if self.gate is not None and not self.gate.healthy:
            return self._give_back(record_id, f"instance {self.instance.name} is down")
        claim = self._db(
            self.ledger.claim,
            record_id,
            worker=worker,
            instance=self.instance.name,
            task_id=task_id,
            lease_seconds=self.settings.lease_seconds,
        )
        if claim is None:
            logger.info(
                "record %s: not claimable (done, owned elsewhere or unknown), task %s",
                record_id,
                task_id,
            )
            return "skipped"
        ctx["batch"] = claim.batch.name
        with self._lock:
            self._inflight[record_id] = claim.attempts
        try:
            return self._run(claim, task_id)
        finally:
            with self._lock:
                self._inflight.pop(record_id, None)

    def _give_back(self, record_id: int, reason: str) -> str:
        decision = self.retry_policy.give_back(reason, at_once=self.draining)
        self._db(self.ledger.give_back, record_id, delay=decision.delay)
        logger.debug("record %s given back: %s", record_id, reason)
        return "given back"

    def hedge(self, record_id: int, *, worker: str) -> str:
        """Run a record that another instance is running, and store the answer if it comes
        first (:mod:`workers.hedging`). Best effort: an error or a lost race changes
        nothing, the owner's attempt goes on."""
        with record_context(record=record_id, instance=self.instance.name):
            return self._hedge(record_id, worker=worker)

    def _hedge(self, record_id: int, *, worker: str) -> str:
        if self.draining or (self.gate is not None and not self.gate.healthy):
            return "skipped"
        peeked = self._db(self.ledger.peek_running, record_id)
        if peeked is None or peeked[1] == self.instance.name:
            return "skipped"
        claim, owner = peeked
        try:
            outcome = judge_record(self.spec_for(claim), claim.input, self.client)
        except errors.RecordError as e:
            logger.info("record %s: hedge on %s failed (%s)", record_id, self.instance.name, e)
            return "skipped"
        provenance = {**self._provenance(), "hedged_from": owner}
        outcome = replace(outcome, provenance=provenance)
        stored = self._db(
            self.ledger.succeed_hedge, claim, outcome, worker=worker, instance=self.instance.name
        )
        return "succeeded" if stored else "skipped"

    def _run(self, claim: Claim, task_id: str | None) -> str:
        where = _Where(claim, self.instance.name, task_id)
        try:
            outcome = judge_record(self.spec_for(claim), claim.input, self.client)
        except errors.RecordError as e:
            return self._failed_attempt(claim, e, where)
        outcome = replace(outcome, provenance=self._provenance())
        if not self._db(self.ledger.succeed, claim, outcome):
            # A hedge finished it first, or the lease expired and another worker took it:
            # the stored result stands, this answer is dropped.
            logger.info("%s: finished elsewhere first; answer dropped", where)
            return "lost"
        return "succeeded"

    def _provenance(self) -> dict[str, Any]:
        """Where results of this worker come from (instance, host, GPUs, model id,
        max_model_len), read once from the instance."""
        with self._lock:
            if self.provenance is None:
                self.provenance = InstanceProvenance(self.instance)
        return self.provenance.get()

    def _failed_attempt(self, claim: Claim, e: errors.RecordError, where: _Where) -> str:
        policy = self.retry_policy
        if self.gate is not None and policy.counts_against_instance(e):
            self.gate.report_failure(str(e))
        decision = policy.after_error(claim.attempts, e)
        if decision.action is Action.FAIL:
            self._db(
                self.ledger.fail,
                claim,
                kind=e.kind,
                message=decision.reason,
                raw=e.raw,
                prompt_tokens=e.prompt_tokens,
                completion_tokens=e.completion_tokens,
                finish_reason=e.finish_reason,
            )
            logger.warning("%s failed (%s): %s", where, e.kind, decision.reason)
            return "failed"
        self._db(self.ledger.retry_later, claim, kind=e.kind, message=str(e), delay=decision.delay)
        logger.info(
            "%s attempt %s: %s; retry in %.1fs",
            where,
            claim.attempts,
            e,
            decision.delay,
        )
        return "retry"

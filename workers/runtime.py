"""What one instance worker process holds: its ledger, its client, its instance, its gate.

The Celery task calls :meth:`WorkerRuntime.process`; everything that decides what happens
to a record lives here and in :mod:`workers.judge`, testable without a broker.
"""

from __future__ import annotations

import logging
import random
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
from workers.provenance import InstanceProvenance
from workers.settings import Settings
from workers.spec import Spec
from workers.store.ledger import Claim, Ledger

logger = logging.getLogger(__name__)

T = TypeVar("T")
GIVE_BACK_DELAY = 2.0
# A refused or reset connection says the server may be gone: it counts as one bad health
# observation (the next /health probe confirms or clears it). A 5xx answer does not: the
# server is there, and vLLM's /health says itself when its engine is dead.
_INSTANCE_DOWN = (errors.ConnectError,)


class RetryLater(Exception):
    """Publish the record again after ``countdown`` seconds (its status says why)."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


class GiveBack(RetryLater):
    """This worker's instance is down: hand the message to another instance, unclaimed."""


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1``: full-jitter exponential backoff.

    A server's ``Retry-After`` is a floor: we never come back sooner than it asked.
    """
    r = rng or random
    delay = r.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class _Where:
    """A record's identity in log lines: in the text, and as fields for JSON logs."""

    def __init__(self, claim: Claim, instance: str, task_id: str | None) -> None:
        self.extra = {
            "record": claim.record_id,
            "batch": claim.batch.name,
            "instance": instance,
            "task_id": task_id,
        }

    def __str__(self) -> str:
        e = self.extra
        return (
            f"record {e['record']} batch {e['batch']} instance {e['instance']} task {e['task_id']}"
        )


@dataclass
class WorkerRuntime:
    settings: Settings
    instance: InstanceConfig
    ledger: Ledger
    client: ChatClient
    gate: HealthGate | None = None
    worker_name: str = "?"
    draining: bool = False
    provenance: InstanceProvenance | None = None  # issue 8
    _specs: dict[int, Spec] = field(default_factory=dict)
    _inflight: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        """Claim and judge one record; return its new status.

        Raises :class:`GiveBack` while the instance is down and :class:`RetryLater` when a
        transient error leaves attempts to spare.
        """
        if self.draining:
            raise GiveBack(0.0, f"worker {self.worker_name} is shutting down")
        if self.gate is not None and not self.gate.healthy:
            raise GiveBack(GIVE_BACK_DELAY, f"instance {self.instance.name} is down")
        try:
            claim = self._db(
                self.ledger.claim,
                record_id,
                worker=worker,
                instance=self.instance.name,
                task_id=task_id,
                lease_seconds=self.settings.lease_seconds,
            )
        except DBAPIError as e:
            raise RetryLater(self.settings.retry_backoff_base, f"store unavailable: {e}") from e
        if claim is None:
            logger.info(
                "record %s: not claimable (done, owned elsewhere or unknown), task %s",
                record_id,
                task_id,
                extra={"record": record_id, "task_id": task_id, "instance": self.instance.name},
            )
            return "skipped"
        with self._lock:
            self._inflight[record_id] = claim.attempts
        try:
            return self._run(claim, task_id)
        finally:
            with self._lock:
                self._inflight.pop(record_id, None)

    def hedge(self, record_id: int, *, worker: str) -> str:
        """Run a record that another instance is running, and store the answer if it comes
        first (:mod:`workers.hedging`). Best effort: an error or a lost race changes
        nothing, the owner's attempt goes on."""
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
        except errors.TransientError as e:
            return self._transient(claim, e, where)
        except errors.PermanentError as e:
            self._db(
                self.ledger.fail,
                claim,
                kind=e.kind,
                message=str(e),
                raw=e.raw,
                prompt_tokens=e.prompt_tokens,
                completion_tokens=e.completion_tokens,
                finish_reason=e.finish_reason,
            )
            logger.warning("%s failed (%s): %s", where, e.kind, e, extra=where.extra)
            return "failed"
        outcome = replace(outcome, provenance=self._provenance())  # issue 8: provenance
        if not self._db(self.ledger.succeed, claim, outcome):
            # A hedge finished it first, or the lease expired and another worker took it:
            # the stored result stands, this answer is dropped.
            logger.info("%s: finished elsewhere first; answer dropped", where, extra=where.extra)
            return "lost"
        return "succeeded"

    # -- issue 8: provenance of results (instance, host, GPUs, model id, max_model_len) ---

    def _provenance(self) -> dict[str, Any]:
        with self._lock:
            if self.provenance is None:
                self.provenance = InstanceProvenance(self.instance)
        return self.provenance.get()

    def _transient(self, claim: Claim, e: errors.TransientError, where: _Where) -> str:
        if self.gate is not None and isinstance(e, _INSTANCE_DOWN):
            self.gate.report_failure(str(e))
        if claim.attempts >= self.settings.max_attempts:
            self._db(
                self.ledger.fail,
                claim,
                kind=e.kind,
                message=f"gave up after {claim.attempts} attempts: {e}",
            )
            logger.warning(
                "%s failed after %s attempts: %s", where, claim.attempts, e, extra=where.extra
            )
            return "failed"
        self._db(self.ledger.retry_later, claim, kind=e.kind, message=str(e))
        delay = backoff(
            claim.attempts,
            base=self.settings.retry_backoff_base,
            cap=self.settings.retry_backoff_max,
            retry_after=e.retry_after,
        )
        logger.info(
            "%s attempt %s: %s; retry in %.1fs", where, claim.attempts, e, delay, extra=where.extra
        )
        raise RetryLater(delay, str(e))

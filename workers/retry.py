"""What happens to a record after a failed attempt: the one place retry policy lives.

Every path that decides between failing a record, retrying it later and handing it to
another instance asks :class:`RetryPolicy`:

* a **permanent** error (:class:`workers.errors.PermanentError`: context length, template,
  truncated or invalid output, any other 4xx) fails the record at once;
* a **transient** error (connect, timeout, 429, 5xx) is retried after a full-jitter
  exponential backoff that never comes sooner than the server's ``Retry-After``, until
  ``max_attempts`` attempts were made;
* a record this worker **cannot run now** (its instance's gate is closed, the worker is
  shutting down) is **given back** unclaimed, due again after :data:`GIVE_BACK_DELAY`.

A retry or give-back waits in the ledger (status ``retry`` or ``queued``, unpublished, with
``not_before``), never in Redis: the feeder publishes it when it is due. So Redis holds no
delayed (ETA/countdown) message and stays a bounded window whatever the error rate.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from workers import errors

if TYPE_CHECKING:
    from workers.settings import Settings

GIVE_BACK_DELAY = 2.0
"""Seconds before a given-back record is published again (a closed gate's instance has
cancelled its shared-queue consumer by then, so it goes to the others)."""

TRANSIENT_STATUSES = (408, 409, 429)
"""4xx answers worth retrying (timeout, conflict, rate limit); every 5xx is too."""

_CONTEXT_MARKERS = ("maximum context length", "context length", "context_length")
# vLLM >= 0.11 refuses a max_tokens above the context with a 400 that never says "context":
# "max_tokens=5000 cannot be greater than max_model_len=1024. Please request fewer output
# tokens. (parameter=max_tokens, value=5000)", param "max_tokens".
_MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")
_MAX_TOKENS_MARKERS = ("max_model_len", "maximum context length", "too large")

INSTANCE_DOWN_ERRORS: tuple[type[errors.RecordError], ...] = (errors.ConnectError,)
"""Failed calls that count as a bad health observation of the instance. A refused or reset
connection says the server may be gone; a 5xx does not (the server is there, and vLLM's
/health says itself when its engine is dead)."""


def error_for_status(
    status: int, message: str, *, param: str | None = None, retry_after: float | None = None
) -> errors.RecordError:
    """The error an HTTP error answer of an OpenAI-compatible server stands for: transient
    (5xx, 408, 409, 429: retried) or permanent (a prompt or ``max_tokens`` over the context,
    any other 4xx: the record fails). Every client vfleet has maps its answers through here.
    """
    msg = message.splitlines()[0][:500] if message else f"HTTP {status}"
    if status == 429:
        return errors.RateLimitedError(f"429: {msg}", retry_after=retry_after)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return errors.ServerError(f"{status}: {msg}", retry_after=retry_after)
    lower = msg.lower()
    if status == 400 and _names_max_tokens(param, lower):
        return errors.ContextLengthError(
            f"max_tokens is over the model's context (lower the spec's max_tokens): {msg}"
        )
    if status == 400 and any(m in lower for m in _CONTEXT_MARKERS):
        return errors.ContextLengthError(f"context length: {msg}")
    return errors.BadRequestError(f"{status}: {msg}")


def _names_max_tokens(param: str | None, lower: str) -> bool:
    named = param in _MAX_TOKENS_PARAMS or any(p in lower for p in _MAX_TOKENS_PARAMS)
    return named and any(m in lower for m in _MAX_TOKENS_MARKERS)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (numeric form), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Action(StrEnum):
    FAIL = "fail"
    RETRY = "retry"
    GIVE_BACK = "give_back"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay: float = 0.0
    """Seconds from now until the record is due again (``retry`` and ``give_back``)."""


class RetryPolicy:
    """Decides the fate of a record after an attempt. Pure: no I/O, safe across threads."""

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_base: float,
        backoff_max: float,
        give_back_delay: float = GIVE_BACK_DELAY,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.give_back_delay = give_back_delay
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff_base,
            backoff_max=settings.retry_backoff_max,
        )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: full-jitter exponential backoff,
        capped at ``backoff_max``; a server's ``Retry-After`` is a floor (also capped)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** max(0, attempt - 1)))
        delay = self._rng.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def after_error(self, attempts: int, error: errors.RecordError) -> Decision:
        """The decision for a claimed record whose attempt number ``attempts`` raised
        ``error``."""
        if not isinstance(error, errors.TransientError):
            return Decision(Action.FAIL, str(error))
        if attempts >= self.max_attempts:
            return Decision(Action.FAIL, f"gave up after {attempts} attempts: {error}")
        return Decision(Action.RETRY, str(error), self.backoff(attempts, error.retry_after))

    def give_back(self, reason: str, *, at_once: bool = False) -> Decision:
        """The decision for a record this worker will not run now (it stays unclaimed)."""
        return Decision(Action.GIVE_BACK, reason, 0.0 if at_once else self.give_back_delay)

    @staticmethod
    def counts_against_instance(error: errors.RecordError) -> bool:
        """Whether a failed call is evidence that the instance is down (its health gate)."""
        return isinstance(error, INSTANCE_DOWN_ERRORS)

    @property
    def longest_wait(self) -> float:
        """The longest a retried record waits before it is due again."""
        return max(self.backoff_max, self.give_back_delay)

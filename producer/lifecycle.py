"""Cancel a batch, or put its failed (and cancelled) records back in front of the fleet:
what ``vfleet cancel`` and ``vfleet retry`` do, and :class:`producer.api.BatchHandle` too."""

from __future__ import annotations

from dataclasses import dataclass

from producer.enqueue import Stack, publish


@dataclass(frozen=True)
class Cancelled:
    cancelled: int
    """Waiting records that became cancelled (they never run)."""
    running: int
    """Records running when the batch was cancelled: they finish."""


@dataclass(frozen=True)
class Retried:
    failed: int
    """Failed records queued again."""
    revived: int
    """Cancelled records queued again."""
    published: int
    """Of those, how many were published now (the feeders publish the rest)."""


def cancel_batch(stack: Stack, name: str) -> Cancelled:
    """Cancel batch ``name``. Raises :class:`~workers.errors.BatchNotFoundError`."""
    info = stack.ledger.batch(name)
    n = stack.ledger.cancel(info.id)
    return Cancelled(n, stack.ledger.counts(info.id)["running"])


def retry_batch(
    stack: Stack, name: str, *, error_kind: str | None = None, cancelled: bool = False
) -> Retried:
    """Queue batch ``name``'s failed records again (only those of ``error_kind``, if
    given; the cancelled ones too with ``cancelled``), attempts from zero, and publish.
    Running it again after a crash is safe.

    Raises :class:`~workers.errors.BatchNotFoundError` and
    :class:`~producer.errors.PublishError` (queued again in the ledger, not published).
    """
    stack.fleet_required = False
    info = stack.ledger.batch(name)
    n = stack.ledger.requeue(info.id, error_kind=error_kind)
    revived = stack.ledger.requeue_cancelled(info.id) if cancelled else 0
    stored = f"batch {name}: {n + revived} records queued again"
    published = publish(stack, stored) if n + revived else 0
    return Retried(n, revived, published)

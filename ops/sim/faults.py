"""Injected failures: which request fails, and how.

``--fail-rate R --fail-kinds 429,500,503,hang,reset``: each completion request fails with
probability R, the kind drawn uniformly from the list. Draws come from an RNG seeded with
``--seed`` and the port, so a run is reproducible while a retried request gets a fresh draw.
"""

from __future__ import annotations

import random

from ops.sim.errors import SimRequestError

RATE_LIMITED = "Too many requests: the simulator injected a rate limit."


class FaultPlan:
    """Decides, request by request, whether and how to fail."""

    def __init__(self, *, rate: float, kinds: tuple[str, ...], seed: int, port: int) -> None:
        self._rate = rate
        self._kinds = kinds
        self._rng = random.Random(f"{seed}:faults:{port}")

    def draw(self) -> str | None:
        """The failure kind for the next request, or None to serve it."""
        if self._rate <= 0.0 or self._rng.random() >= self._rate:
            return None
        return self._rng.choice(self._kinds)


def status_error(kind: str, retry_after: int) -> SimRequestError:
    """The HTTP error for an injected ``429``, ``500`` or ``503``."""
    if kind == "429":
        return SimRequestError(
            429, RATE_LIMITED, error_type="RateLimitError",
            headers={"Retry-After": str(retry_after)},
        )  # fmt: skip
    if kind == "503":
        return SimRequestError(
            503, "The server is temporarily unable to handle the request (injected).",
            error_type="ServiceUnavailableError",
        )  # fmt: skip
    return SimRequestError(
        500, "Internal server error (injected by the simulator).", error_type="InternalServerError"
    )

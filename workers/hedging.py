"""Which running records to run a second time at the end of a batch (hedged requests).

When nothing of a batch is left waiting, its last records hold up the whole batch if they
run on a slow instance, or run long by bad luck. A faster instance with free slots can run
them again: the first result stored wins (:meth:`workers.store.ledger.Ledger.succeed_hedge`)
and the slower copy's answer is dropped, so each record still has one result. A record is
hedged at most once, and only in the batch's tail, so the extra work stays bounded by
what the fleet would otherwise leave idle.

A running record is hedged onto instance F when either

* a fresh run on F is expected to finish well before the current one: ``now + median(F) +
  margin x median(F) < started + median(owner)``; or
* it is a straggler: it has run ``after`` times longer than its instance's median.

Medians come from the batch's recent results per instance.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

MIN_RESULTS = 5
"""Results an instance needs in the batch before its median latency is trusted."""
MARGIN = 0.5
"""A hedge must be expected to win by this fraction of the faster instance's median."""


@dataclass(frozen=True)
class Running:
    record_id: int
    instance: str
    elapsed: float
    """Seconds since its current attempt started."""


def medians(latencies: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Median latency (seconds) per instance with at least :data:`MIN_RESULTS` results."""
    by: dict[str, list[float]] = defaultdict(list)
    for instance, seconds in latencies:
        by[instance].append(seconds)
    return {i: statistics.median(v) for i, v in by.items() if len(v) >= MIN_RESULTS}


def pick_hedges(
    running: Iterable[Running],
    latency: dict[str, float],
    *,
    candidates: list[str],
    after: float,
    limit: int,
) -> list[tuple[int, str]]:
    """``(record_id, instance)`` pairs to run again, the most overdue first.

    ``latency`` is the median per instance (:func:`medians`); ``candidates`` the instances
    that may take hedges (up, serving the model). Targets are spread over the candidates
    faster than the owner, fastest first.
    """
    known = [c for c in candidates if c in latency]
    if not known or limit <= 0:
        return []
    fastest = min(known, key=lambda c: latency[c])
    fresh = latency[fastest] * (1 + MARGIN)
    scored: list[tuple[float, Running]] = []
    for r in running:
        own = latency.get(r.instance)
        if own is None:
            continue
        remaining = own - r.elapsed
        slow = r.instance != fastest and fresh < remaining
        straggler = after > 0 and r.elapsed > after * own
        if slow or straggler:
            scored.append((remaining - fresh, r))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    picked: list[tuple[int, str]] = []
    turn = 0
    by_speed = sorted(known, key=lambda c: latency[c])
    for _, r in scored[:limit]:
        faster = [c for c in by_speed if c != r.instance and latency[c] <= latency[r.instance]]
        if not faster:
            continue
        picked.append((r.record_id, faster[turn % len(faster)]))
        turn += 1
    return picked

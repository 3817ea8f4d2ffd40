"""The ledger: SQL as the source of truth for batches and records.

Redis only carries record ids; everything that decides a record's fate is a statement
here. :class:`Ledger` is a thin facade over one module per concern:

* :mod:`workers.store.batches`: create (race-safe), look up, cancel, redrive, delete;
* :mod:`workers.store.claims`: the record state machine (claim, succeed, fail, retry,
  give back, renew, release, hedges), one conditional UPDATE per change;
* :mod:`workers.store.feeding`: what the feeder, reconciler and hedger read;
* :mod:`workers.store.queries`: counts and times for the views.

Records come in through :func:`workers.store.intake.store_rows`; the values handed out
(:class:`~workers.store.values.BatchInfo`, :class:`~workers.store.values.Claim`,
:class:`~workers.store.values.Outcome`) live in :mod:`workers.store.values`, without SQL.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from workers.store.batches import BatchStore
from workers.store.claims import ClaimStore
from workers.store.feeding import FeedingStore
from workers.store.queries import QueryStore
from workers.store.values import BatchInfo


class Ledger(BatchStore, ClaimStore, FeedingStore, QueryStore):
    """Reads and moves records. Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._batches: dict[int, BatchInfo] = {}
        self._lock = threading.Lock()

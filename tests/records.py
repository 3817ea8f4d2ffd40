"""Records into a test ledger through the path production takes (the enqueue's intake)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.store.intake import DEFAULT_INSERT_CHUNK, store_rows
from workers.store.ledger import Ledger


def add_records(
    ledger: Ledger,
    batch_id: int,
    rows: Iterable[tuple[str, int, dict[str, Any]]],
    *,
    chunk: int = DEFAULT_INSERT_CHUNK,
) -> int:
    """Store ``(key, seq, input)`` rows in the batch; returns how many were new."""
    intake = ((key, seq, data, None) for key, seq, data in rows)
    return store_rows(ledger, batch_id, intake, chunk=chunk).added

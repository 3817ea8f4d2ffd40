"""One record as vfleet shows it outside the ledger: what ``vfleet export`` writes per
record and what :meth:`producer.api.BatchHandle.results` yields."""

from __future__ import annotations

from typing import Any

from workers.store.models import Record

META_FIELDS = (  # in this order in every export
    "key",
    "status",
    "attempts",
    "instance",
    "worker",
    "error_kind",
    "error",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "finished_at",
)


def record_dict(r: Record) -> dict[str, Any]:
    """One exported record: its input, the model's text, the parsed answer and metadata."""
    out: dict[str, Any] = {m: getattr(r, m) for m in META_FIELDS}
    out["finished_at"] = r.finished_at.isoformat() if r.finished_at else None
    out["input"] = r.input
    out["output_text"] = r.output_text
    out["output"] = r.output
    return out

"""Queue names: the topology every producer and worker agrees on."""

from __future__ import annotations

SHARED_PREFIX = "llm."
INSTANCE_PREFIX = "inst."
SCAN_QUEUE = "scan"
PROCESS_RECORD_TASK = "vfleet.process_record"


def shared_queue(model: str) -> str:
    """The queue every instance serving ``model`` consumes (pull-based routing)."""
    return f"{SHARED_PREFIX}{model}"


def instance_queue(instance: str) -> str:
    """The queue only ``instance``'s workers consume (pinned and round-robin routing)."""
    return f"{INSTANCE_PREFIX}{instance}"

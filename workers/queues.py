"""Queue and task names: the topology every producer, beat and worker agrees on."""

from __future__ import annotations

SHARED_PREFIX = "llm."
INSTANCE_PREFIX = "inst."
SCAN_QUEUE = "scan"

# Every task vfleet registers, by name: producers, beat and workers agree on these.
PROCESS_RECORDS_TASK = "vfleet.process_records"
RECONCILE_TASK = "vfleet.reconcile"
SCAN_GPUS_TASK = "vfleet.scan_gpus"
SCAN_VLLM_TASK = "vfleet.scan_vllm"
PRUNE_SNAPSHOTS_TASK = "vfleet.prune_snapshots"


def shared_queue(model: str) -> str:
    """The queue every instance serving ``model`` consumes (pull-based routing)."""
    return f"{SHARED_PREFIX}{model}"


def instance_queue(instance: str) -> str:
    """The queue only ``instance``'s workers consume (pinned and round-robin routing)."""
    return f"{INSTANCE_PREFIX}{instance}"

"""Beat's scan tasks: thin wrappers around :class:`workers.scan.runtime.ScanRuntime`.

They run on the ``scan`` queue's worker (``vfleet scan-worker``). A failed scan is logged
and not retried: the next beat tick scans again, and every beat entry expires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from sqlalchemy.exc import SQLAlchemyError

from ops.errors import OpsError
from workers.errors import VfleetError
from workers.queues import PRUNE_SNAPSHOTS_TASK, SCAN_GPUS_TASK, SCAN_QUEUE, SCAN_VLLM_TASK
from workers.state import state_of

if TYPE_CHECKING:  # the SSH stack loads when a scan runs, not in every process that
    # builds the app (a producer's `vfleet enqueue` never scans)
    from workers.scan.runtime import ScanRuntime

logger = logging.getLogger(__name__)

_EXPECTED = (SQLAlchemyError, OpsError, VfleetError, OSError)


def _guarded(task: Task, what: str, call: Callable[[ScanRuntime], Any]) -> Any:
    try:
        return call(state_of(task.app).scan_runtime())
    except _EXPECTED as e:
        logger.warning("%s failed (task %s): %s: %s", what, task.request.id, type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


def register_scan_tasks(app: Celery) -> None:
    opts: dict[str, Any] = {"bind": True, "queue": SCAN_QUEUE, "ignore_result": True}

    @app.task(name=SCAN_GPUS_TASK, **opts)  # type: ignore[untyped-decorator]
    def scan_gpus(self: Task) -> Any:
        return _guarded(self, "GPU scan", lambda rt: rt.scan_gpus().as_dict())

    @app.task(name=SCAN_VLLM_TASK, **opts)  # type: ignore[untyped-decorator]
    def scan_vllm(self: Task) -> Any:
        return _guarded(self, "vLLM scan", lambda rt: rt.scan_vllm())

    @app.task(name=PRUNE_SNAPSHOTS_TASK, **opts)  # type: ignore[untyped-decorator]
    def prune_snapshots(self: Task) -> Any:
        return _guarded(self, "snapshot pruning", lambda rt: rt.prune())

    _ = (scan_gpus, scan_vllm, prune_snapshots)

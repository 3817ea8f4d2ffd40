"""Beat's scan tasks: thin wrappers around :class:`workers.scan.runtime.ScanRuntime`.

They run on the ``scan`` queue's worker (``vfleet scan-worker``). A failed scan is logged
and not retried: the next beat tick scans again, and every beat entry expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import SQLAlchemyError

from ops.errors import OpsError
from workers.celery_app import fleet_of, settings_of
from workers.errors import VfleetError
from workers.monitor_settings import build_monitor_settings
from workers.queues import SCAN_QUEUE
from workers.scan.runtime import ScanRuntime, build_scan_runtime

logger = logging.getLogger(__name__)

SCAN_GPUS_TASK = "vfleet.scan_gpus"
SCAN_VLLM_TASK = "vfleet.scan_vllm"
PRUNE_SNAPSHOTS_TASK = "vfleet.prune_snapshots"
RECONCILE_TASK = "vfleet.reconcile"  # registered by the reconciler; only scheduled here

_EXPECTED = (SQLAlchemyError, OpsError, VfleetError, OSError)
_SCAN_RUNTIME_ATTR = "vfleet_scan_runtime"
_build_lock = threading.Lock()


def install_scan_runtime(app: Celery, runtime: ScanRuntime) -> None:
    """Attach the scan runtime ``vfleet scan-worker`` built at its entry point."""
    setattr(app, _SCAN_RUNTIME_ATTR, runtime)


def scan_runtime(app: Celery) -> ScanRuntime:
    """The app's scan runtime; built on first use from the app's settings and the
    environment when the worker was started some other way (plain ``celery worker``)."""
    with _build_lock:
        runtime = getattr(app, _SCAN_RUNTIME_ATTR, None)
        if runtime is None:
            runtime = build_scan_runtime(settings_of(app), fleet_of(app), build_monitor_settings())
            install_scan_runtime(app, runtime)
    assert isinstance(runtime, ScanRuntime)
    return runtime


def _guarded(task: Task, what: str, call: Callable[[ScanRuntime], Any]) -> Any:
    try:
        return call(scan_runtime(task.app))
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

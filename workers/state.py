"""What a Celery app carries for vfleet's tasks: one :class:`AppState`, attached by
:func:`workers.celery_app.create_app` and read by every task through :func:`state_of`.

It holds the settings and the fleet, plus what the process that runs the tasks built at
its entry point: an instance worker's :class:`~workers.runtime.WorkerRuntime`
(``vfleet worker``) or a scan worker's :class:`~workers.scan.runtime.ScanRuntime`
(``vfleet scan-worker``). A worker started some other way (``celery -A workers.app worker``)
gets its scan runtime and feeder built on first use, once, here.

Tasks import this module, never :mod:`workers.celery_app`, so the app factory can register
the tasks without an import circle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from workers.fleet import Fleet
from workers.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from workers.feeder import Feeder
    from workers.runtime import WorkerRuntime
    from workers.scan.runtime import ScanRuntime

_ATTR = "vfleet_state"


@dataclass
class AppState:
    settings: Settings
    fleet: Fleet
    worker: WorkerRuntime | None = None
    """An instance worker's runtime (``vfleet worker``)."""
    scan: ScanRuntime | None = None
    """A scan worker's runtime (``vfleet scan-worker``), or built on first use."""
    _feeder: Feeder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def worker_runtime(self) -> WorkerRuntime:
        """The instance worker's runtime. Raises RuntimeError in any other process."""
        if self.worker is None:
            raise RuntimeError("this worker has no vfleet runtime: start it with `vfleet worker`")
        return self.worker

    def scan_runtime(self) -> ScanRuntime:
        """The scan runtime, built from the settings the first time it is needed."""
        with self._lock:
            if self.scan is None:
                from workers.scan.runtime import build_scan_runtime

                self.scan = build_scan_runtime(self.settings, self.fleet)
            return self.scan

    def feeder(self, app: Celery) -> Feeder:
        """The feeder of beat's reconcile task, built the first time it is needed."""
        with self._lock:
            if self._feeder is None:
                from workers.broker import redis_client
                from workers.dispatch import Dispatcher
                from workers.feeder import Feeder
                from workers.store.opening import open_ledger

                self._feeder = Feeder(
                    ledger=open_ledger(self.settings),
                    dispatcher=Dispatcher(app),
                    redis_client=redis_client(self.settings.broker_url),
                    fleet=self.fleet,
                    settings=self.settings,
                )
            return self._feeder


def attach_state(app: Celery, state: AppState) -> None:
    setattr(app, _ATTR, state)


def state_of(app: Celery) -> AppState:
    """The :class:`AppState` of an app built by :func:`workers.celery_app.create_app`."""
    state = getattr(app, _ATTR, None)
    if not isinstance(state, AppState):
        raise RuntimeError("this Celery app was not built by workers.celery_app.create_app")
    return state

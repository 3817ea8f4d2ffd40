"""``vfleet.reconcile``: beat's periodic feed-and-reconcile, on the ``scan`` queue.

Instance workers already do this in their housekeeping thread; the beat entry covers a
fleet whose workers are all busy or gated, and makes the schedule visible in Flower.
"""

from __future__ import annotations

import functools
import logging

from celery import Celery, Task

from workers.broker import redis_client
from workers.celery_app import fleet_of, settings_of
from workers.dispatch import Dispatcher
from workers.feeder import Feeder
from workers.store.opening import open_ledger

logger = logging.getLogger(__name__)

RECONCILE_TASK = "vfleet.reconcile"


def register_maintenance_tasks(app: Celery) -> None:
    @functools.cache
    def feeder() -> Feeder:
        settings = settings_of(app)
        return Feeder(
            ledger=open_ledger(settings),
            dispatcher=Dispatcher(app),
            redis_client=redis_client(settings.broker_url),
            fleet=fleet_of(app),
            settings=settings,
        )

    @app.task(name=RECONCILE_TASK, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def reconcile(self: Task) -> dict[str, int]:
        f = feeder()
        result = {"fed": f.feed(), "republished": f.reconcile()}
        logger.info("reconcile task %s: %s", self.request.id, result)
        return result

    _ = reconcile

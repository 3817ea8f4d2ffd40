"""``vfleet.reconcile``: beat's periodic feed-and-reconcile, on the ``scan`` queue.

Instance workers already do this in their housekeeping thread; the beat entry covers a
fleet whose workers are all busy or gated, and makes the schedule visible in Flower.
"""

from __future__ import annotations

import logging

from celery import Celery, Task

from workers.queues import RECONCILE_TASK
from workers.state import state_of

logger = logging.getLogger(__name__)


def register_maintenance_tasks(app: Celery) -> None:
    @app.task(name=RECONCILE_TASK, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def reconcile(self: Task) -> dict[str, int]:
        feeder = state_of(self.app).feeder(self.app)
        result = {"fed": feeder.feed(), "republished": feeder.reconcile()}
        logger.info("reconcile task %s: %s", self.request.id, result)
        return result

    _ = reconcile

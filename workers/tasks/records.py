"""The per-record task: claim, judge, store, ack (see :mod:`workers.runtime`)."""

from __future__ import annotations

import logging

from celery import Celery, Task

from workers.celery_app import runtime_of
from workers.queues import PROCESS_RECORD_TASK, shared_queue
from workers.runtime import RetryLater, WorkerRuntime

logger = logging.getLogger(__name__)


def register_record_tasks(app: Celery) -> None:
    @app.task(name=PROCESS_RECORD_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def process_record(self: Task, record_id: int, hedge: bool = False) -> str:
        runtime: WorkerRuntime = runtime_of(self.app)
        worker = self.request.hostname or "?"
        if hedge:  # a second run of a record in a batch's tail (workers.hedging)
            return runtime.hedge(int(record_id), worker=worker)
        try:
            return runtime.process(int(record_id), worker=worker, task_id=self.request.id)
        except RetryLater as e:
            # Back onto the shared queue, so any instance serving the model can take it.
            queue = shared_queue(runtime.instance.model)
            raise self.retry(countdown=e.countdown, queue=queue, exc=e) from e

    _ = process_record

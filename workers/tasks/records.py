"""The per-record task: claim, judge, store, ack (see :mod:`workers.runtime`).

It never asks Celery to retry: a record that must wait (a transient error, a closed gate)
waits in the ledger and the feeder publishes it again when due (:mod:`workers.retry`).
"""

from __future__ import annotations

from celery import Celery, Task

from workers.queues import PROCESS_RECORD_TASK
from workers.state import state_of


def register_record_tasks(app: Celery) -> None:
    @app.task(name=PROCESS_RECORD_TASK, bind=True, max_retries=0)  # type: ignore[untyped-decorator]
    def process_record(self: Task, record_id: int, hedge: bool = False) -> str:
        runtime = state_of(self.app).worker_runtime()
        worker = self.request.hostname or "?"
        if hedge:  # a second run of a record in a batch's tail (workers.hedging)
            return runtime.hedge(int(record_id), worker=worker)
        return runtime.process(int(record_id), worker=worker, task_id=self.request.id)

    _ = process_record

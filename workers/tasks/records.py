"""The record task: claim, judge and store a chunk of records, then ack
(see :mod:`workers.runtime`).

It never asks Celery to retry: a record that must wait (a transient error, a closed gate)
waits in the ledger and the feeder publishes it again when due (:mod:`workers.retry`).
"""

from __future__ import annotations

from celery import Celery, Task

from workers.queues import PROCESS_RECORDS_TASK
from workers.state import state_of


def register_record_tasks(app: Celery) -> None:
    @app.task(name=PROCESS_RECORDS_TASK, bind=True, max_retries=0)  # type: ignore[untyped-decorator]
    def process_records(self: Task, record_ids: list[int] | int, hedge: bool = False) -> str:
        runtime = state_of(self.app).worker_runtime()
        ids = [int(i) for i in (record_ids if isinstance(record_ids, list) else [record_ids])]
        worker = self.request.hostname or "?"
        if hedge:  # a second run of records in a batch's tail (workers.hedging)
            return runtime.hedge(ids, worker=worker)
        return runtime.process(ids, worker=worker, task_id=self.request.id)

    _ = process_records

"""Publishing record ids to Redis, routed as the batch asks.

* ``shared``: every id goes to ``llm.<model>``; each instance's workers pull what they can
  handle, so a fast instance takes more and a dead one takes nothing.
* ``round-robin``: ids are pushed to ``inst.<name>`` queues in turn (the seeds' approach,
  kept as a baseline).
* ``pinned``: ids go to the named instances' queues only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from celery import Celery

from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.queues import PROCESS_RECORD_TASK, instance_queue, shared_queue
from workers.routes import Route
from workers.store.ledger import BatchInfo


def route_targets(route: Route, model: str, fleet: Fleet, pinned: Sequence[str]) -> list[str]:
    """The instances a batch is pushed to (empty for ``shared``).

    Raises :class:`ConfigError` when the fleet has no instance serving ``model`` or a
    pinned instance is unknown or serves another model.
    """
    serving = [i.name for i in fleet.instances if i.model == model]
    if route is Route.SHARED:
        if pinned:
            raise ConfigError("--instance is only for --route pinned or round-robin")
        return []
    if not pinned:
        if not serving:
            raise ConfigError(f"no instance in the fleet file serves model {model!r}")
        if route is Route.PINNED:
            raise ConfigError("--route pinned needs --instance NAME (repeatable)")
        return serving
    for name in pinned:
        inst = fleet.instance(name)
        if inst.model != model:
            raise ConfigError(f"instance {name} serves {inst.model!r}, not {model!r}")
    return list(pinned)


class Dispatcher:
    """Sends ``vfleet.process_record`` messages; one per record id."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._rr: dict[int, Iterator[str]] = {}

    def _queues(self, batch: BatchInfo) -> Iterator[str]:
        if batch.route == Route.SHARED or not batch.targets:
            return itertools.repeat(shared_queue(batch.model))
        if batch.id not in self._rr:
            self._rr[batch.id] = itertools.cycle([instance_queue(t) for t in batch.targets])
        return self._rr[batch.id]

    def publish(self, batch: BatchInfo, record_ids: Sequence[int]) -> None:
        """Publish one message per id over a single broker connection."""
        queues = self._queues(batch)
        with self.app.producer_or_acquire() as producer:
            for rid, queue in zip(record_ids, queues, strict=False):
                self.app.send_task(
                    PROCESS_RECORD_TASK,
                    args=[rid],
                    queue=queue,
                    routing_key=queue,
                    producer=producer,
                )

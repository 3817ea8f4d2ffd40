"""Publishing record ids to Redis, routed as the batch asks.

* ``shared``: every id goes to ``llm.<model>``; each instance's workers pull what they can
  handle, so a fast instance takes more and a dead one takes nothing.
* ``round-robin``: ids are pushed to ``inst.<name>`` queues in turn (the seeds' approach,
  kept as a baseline), skipping instances reported down.
* ``pinned``: ids go to the named instances' queues only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

from celery import Celery

from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.queues import PROCESS_RECORDS_TASK, instance_queue, shared_queue
from workers.routes import Route
from workers.store.values import BatchInfo

PUBLISH_BATCH = 1000
"""Redis commands buffered before a publish pipeline is sent."""


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


def live_targets(batch: BatchInfo, down: AbstractSet[str]) -> list[str]:
    """The instances a pushed batch goes to now: ``round-robin`` skips those in ``down``,
    ``pinned`` keeps them (its records wait for their instance)."""
    if batch.route == Route.PINNED:
        return list(batch.targets)
    return [t for t in batch.targets if t not in down]


CHUNKS_PER_INSTANCE = 2
"""A message carries about this fraction of an instance's concurrency: enough records to
spread the per-message cost (claim, events, ack, commit, the feeder's publish) thin, few
enough that a worker holds little more than it runs. On 32-slot instances halves cost
about an eighth less CPU per record than quarters, at the same rate (docs/BENCHMARKS.md)."""


def chunk_size(fleet: Fleet, model: str, chunk_max: int) -> int:
    """Records per message for ``model``: half the smallest concurrency among the
    instances serving it, at least 1 and at most ``chunk_max``. Feeder and workers agree on
    it (a worker runs ``ceil(concurrency / chunk) + 1`` messages at once)."""
    serving = [i.concurrency for i in fleet.instances if i.model == model]
    smallest = min(serving) if serving else 1
    return max(1, min(chunk_max, smallest // CHUNKS_PER_INSTANCE))


def chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


class Dispatcher:
    """Sends ``vfleet.process_records`` messages, each with a chunk of record ids."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._turn: dict[int, int] = {}

    def _queues(self, batch: BatchInfo, n: int, down: AbstractSet[str]) -> list[str]:
        if batch.route == Route.SHARED or not batch.targets:
            return [shared_queue(batch.model)] * n
        targets = live_targets(batch, down)
        if not targets:
            raise ConfigError(f"batch {batch.name}: every instance it is routed to is down")
        turn = self._turn.get(batch.id, 0)
        self._turn[batch.id] = turn + n
        return [instance_queue(targets[(turn + i) % len(targets)]) for i in range(n)]

    def publish(
        self,
        batch: BatchInfo,
        record_ids: Sequence[int],
        *,
        chunk: int = 1,
        down: AbstractSet[str] = frozenset(),
    ) -> None:
        """Publish ``record_ids`` in messages of up to ``chunk`` ids, over one connection.

        ``round-robin`` deals the messages to its instances in turn, skipping those in
        ``down``; ``pinned`` does not skip (its records wait for their instance). The
        messages (and their ``task-sent`` events, which go through the same producer) are
        buffered in kombu's publish batch and sent to Redis in pipelines of up to
        :data:`PUBLISH_BATCH` commands: one round trip per window.
        """
        parts = chunks(record_ids, max(1, chunk))
        self._send(zip(parts, self._queues(batch, len(parts), down), strict=True))

    def publish_hedges(self, hedges: Sequence[tuple[int, str]]) -> None:
        """Ask each instance of ``(record_id, instance)`` to run that running record again
        (see :mod:`workers.hedging`), through its own queue."""
        self._send((([rid], instance_queue(name)) for rid, name in hedges), hedge=True)

    def _send(self, routed: Iterable[tuple[list[int], str]], *, hedge: bool = False) -> None:
        kwargs = {"hedge": True} if hedge else None
        with self.app.producer_or_acquire() as producer, producer.batch(PUBLISH_BATCH):
            for ids, queue in routed:
                self.app.send_task(
                    PROCESS_RECORDS_TASK,
                    args=[ids],
                    kwargs=kwargs,
                    queue=queue,
                    routing_key=queue,
                    producer=producer,
                )

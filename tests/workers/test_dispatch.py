"""How record ids travel: in chunks sized from the fleet, one message per chunk."""

from __future__ import annotations

import pytest
import redis

from workers.broker import live_messages
from workers.celery_app import create_app
from workers.dispatch import Dispatcher, chunk_size, chunks
from workers.fleet import Fleet, InstanceConfig
from workers.queues import instance_queue
from workers.settings import Settings
from workers.store.values import BatchInfo
from workers.worker_main import task_threads


def _fleet(*concurrency: int, model: str = "m") -> Fleet:
    return Fleet.of(
        [
            InstanceConfig(
                name=f"i{n}", base_url=f"http://127.0.0.1:{9000 + n}/v1", model=model, concurrency=c
            )
            for n, c in enumerate(concurrency)
        ]
    )


@pytest.mark.parametrize(
    ("concurrency", "chunk_max", "expected"),
    [((32, 32), 32, 16), ((128,), 32, 32), ((128,), 8, 8), ((4, 64), 32, 2), ((16, 3), 32, 1)],
)
def test_a_message_carries_half_the_smallest_concurrency(
    concurrency: tuple[int, ...], chunk_max: int, expected: int
) -> None:
    assert chunk_size(_fleet(*concurrency), "m", chunk_max) == expected


def test_a_worker_runs_enough_messages_to_fill_its_concurrency() -> None:
    assert task_threads(32, 8) == 5  # 4 chunks in flight, one being claimed or stored
    assert task_threads(30, 8) == 5
    assert task_threads(4, 1) == 5
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_round_robin_deals_whole_messages_and_the_reconciler_reads_every_id(
    redis_url: str,
) -> None:
    fleet = _fleet(8, 8)
    app = create_app(Settings(broker_url=redis_url), fleet=fleet)
    batch = BatchInfo(1, "b", "judge", {}, "m", "round-robin", ("i0", "i1"))
    Dispatcher(app).publish(batch, list(range(1, 11)), chunk=2)
    client = redis.Redis.from_url(redis_url)
    try:
        queues = [instance_queue("i0"), instance_queue("i1")]
        assert [client.llen(q) for q in queues] == [3, 2]
        assert sorted(live_messages(client, queues)) == list(range(1, 11))
    finally:
        client.close()

"""The beat's schedule and its single-beat Redis lock (real Redis)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from workers.beat import BeatAlreadyRunningError, BeatLock, beat_schedule
from workers.keys import BEAT_LOCK
from workers.queues import SCAN_QUEUE
from workers.settings import Settings


def test_every_entry_goes_to_the_scan_queue_and_expires_before_the_next_tick(
    clean_env: dict[str, str],
) -> None:
    schedule = beat_schedule(Settings())
    assert {e["task"]: e["schedule"] for e in schedule.values()} == {
        "vfleet.scan_gpus": 30.0,
        "vfleet.scan_vllm": 10.0,
        "vfleet.prune_snapshots": 600.0,
        "vfleet.reconcile": 15.0,
    }
    for entry in schedule.values():
        assert entry["options"]["queue"] == SCAN_QUEUE
        assert 0 < entry["options"]["expires"] < entry["schedule"]


def test_intervals_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VFLEET_GPU_SCAN_INTERVAL", "5")
    monkeypatch.setenv("VFLEET_SNAPSHOT_RETENTION", "60")
    m = Settings()
    assert beat_schedule(m)["scan-gpus"]["schedule"] == 5.0
    assert m.snapshot_retention == 60.0 and m.health_ttl == 30


def test_second_beat_is_refused_and_lock_is_refreshed_then_released(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    first = BeatLock(client, ttl=3)
    with first:
        with pytest.raises(BeatAlreadyRunningError, match="another beat is running"):
            BeatLock(client, ttl=3).acquire()
        time.sleep(4.5)  # longer than the TTL: only the refresh (every 1 s) keeps it
        assert client.get(BEAT_LOCK) == first.token.encode()
    assert client.get(BEAT_LOCK) is None
    client.close()


def test_a_beat_that_lost_its_lock_stops(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    lost = threading.Event()
    lock = BeatLock(client, ttl=1.5, on_lost=lost.set)
    lock.acquire()
    client.set(BEAT_LOCK, "someone-else")
    assert lost.wait(5)
    lock.release()
    assert client.get(BEAT_LOCK) == b"someone-else", "never delete another beat's lock"
    client.close()

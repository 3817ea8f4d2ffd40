"""The feeder's round lock and the shared jobs' turn against a real Redis, including one that
stalls mid-request."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import redis

from ops.redis_server import RedisServer
from tests.services import start_redis, wait_for
from workers.locks import RoundLock, Turn

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.process.send_signal(signal.SIGCONT)
    server.cleanup()


def test_one_holder_at_a_time_and_released_after_the_round(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    first = RoundLock(client, "vfleet:lock:test", token="a")
    with first as mine:
        assert mine
        with RoundLock(client, "vfleet:lock:test", token="b") as theirs:
            assert not theirs
    assert client.get("vfleet:lock:test") is None
    client.close()


def test_a_lock_request_that_ran_after_its_sender_gave_up_is_not_orphaned(
    own_redis: RedisServer,
) -> None:
    """A paused Redis runs a SET NX its sender already gave up on: the lock then holds a
    token nobody waits on. Its sender, acquiring with the same token, has it at once."""
    impatient = redis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    patient = redis.Redis.from_url(own_redis.url)
    lock = RoundLock(impatient, "vfleet:lock:feed", token="me", timeout=60)
    with lock as mine:  # a round as usual: Redis now knows the acquire script
        assert mine
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(redis.TimeoutError):
            lock.acquire(token="me")
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    wait_for(lambda: patient.get("vfleet:lock:feed") == b"me", timeout=10,
             what="the stalled SET NX to run")  # fmt: skip
    with RoundLock(patient, "vfleet:lock:feed", token="someone-else") as theirs:
        assert not theirs  # held, as a lock must be...
    with RoundLock(patient, "vfleet:lock:feed", token="me") as mine:
        assert mine  # ...but not lost to its own sender
    assert patient.get("vfleet:lock:feed") is None
    impatient.close()
    patient.close()


def test_a_turn_stays_with_the_worker_that_runs_rounds_and_passes_on_when_it_stops(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    name = "vfleet:turn:test"
    client.delete(name)
    mine = Turn(client, name, token="a", hold=1.0)
    theirs = Turn(client, name, token="b", hold=1.0)
    try:
        assert mine.take()
        assert not theirs.take()  # another worker skips its round
        assert mine.take()  # the holder's next round renews it
        assert not theirs.take()
        assert client.get(name) == b"a"
        # The holder's last round, then nothing: the turn lapses and the next one takes it.
        started = time.monotonic()
        wait_for(theirs.take, timeout=30, what="the turn to pass to the other worker")
        assert time.monotonic() - started >= 0.5  # not before the holder's turn ran out
        assert not mine.take()
        assert client.get(name) == b"b"
    finally:
        client.delete(name)
        client.close()


def _turn_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha"))


def test_a_worker_without_the_turn_asks_redis_again_only_when_the_holders_turn_would_lapse(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    name = "vfleet:turn:asks"
    client.delete(name)
    holder = Turn(client, name, token="a", hold=30)
    other = Turn(client, name, token="b", hold=30)
    try:
        assert holder.take()
        before = _turn_calls(client)
        assert not any(other.take() for _ in range(50))
        assert _turn_calls(client) - before == 1  # the first ask; the rest knew the answer
        assert holder.take()  # the holder's own rounds always ask: they renew the turn
        assert _turn_calls(client) - before == 2
    finally:
        client.delete(name)
        client.close()

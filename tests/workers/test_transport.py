"""vfleet's Redis transport (kombu's, with one client per channel) against a real Redis."""

from __future__ import annotations

from kombu import Connection, Queue

from workers.celery_app import create_app
from workers.redis_transport import Channel, Transport
from workers.settings import Settings


def test_apps_on_redis_urls_use_it(redis_url: str) -> None:
    app = create_app(Settings(broker_url=redis_url))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        assert isinstance(conn.default_channel, Channel)


def test_messages_round_trip_and_the_client_is_reused(redis_url: str) -> None:
    queue = Queue("vfleet-transport-test", routing_key="vfleet-transport-test")
    with Connection(redis_url, transport=Transport) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        with conn.Producer() as producer, producer.batch(10):
            for n in range(5):
                producer.publish({"n": n}, routing_key=queue.routing_key, declare=[queue])
        got: list[int] = []
        with conn.SimpleQueue(queue) as simple:
            for _ in range(5):
                message = simple.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
        assert got == [0, 1, 2, 3, 4]
        assert channel._create_client() is first
        # kombu drops its pool after a connection error; the next client uses the new one.
        channel._disconnect_pools()
        again = channel._create_client()
        assert again is not first and again.connection_pool is channel.pool
        assert again.ping()

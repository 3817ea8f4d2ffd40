"""kombu's Redis transport, reusing one client object per channel.

kombu builds a new ``redis.Redis`` (on the channel's connection pool) for every
synchronous command it sends: each ack, each publish, each event. Building one costs more
CPU than the command (``Redis.__init__`` copies the response-callback table): in a profiled
worker it was 9% of all the time holding the GIL (docs/BENCHMARKS.md). A ``redis.Redis`` is
thread-safe (every command borrows a pooled connection), so one per channel serves all
threads; a new one is made when kombu replaces the pool (after a connection error).

Used for ``redis://`` broker URLs (see :func:`workers.celery_app.celery_config`); other
schemes keep kombu's own transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "workers.redis_transport:Transport"


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._sync_client
        if client is None or client.connection_pool is not pool:
            client = self._sync_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel

"""kombu's Redis transport, made to survive a broker restart and to reuse its clients.

**Surviving a restart.** When the broker connection drops, Celery's consumer (5.7) first
``collect()``s the kombu ``Connection``, which clears the transport's ``client``, and then
``close()``s it, which closes its default channel a second time. That close restores the
channel's unacked messages through a new connection pool, built from ``transport.client``:
kombu raises ``AttributeError('NoneType' object has no attribute 'hostname')``, which is
not a connection error, so Celery gives up with "Unrecoverable error" and the worker exits.
The same happens to a worker thread acking a message on a channel already closed. Neither
kombu 5.7.0 nor Celery 5.7.0 (the newest releases) guards it; kombu#582 is the same symptom
from 2016 on another path. :class:`Channel` turns "the transport's client is gone" into
``redis.ConnectionError``, the error kombu and Celery expect from a lost broker: the close
or ack is given up like any other that meets a dead broker, and the consumer reconnects.
Nothing is lost by it: messages left unacked are either gone with the restarted Redis or
restored after ``visibility_timeout``, and the ledger's reconciler republishes their records.

**Client reuse.** kombu builds a new ``redis.Redis`` (on the channel's connection pool) for
every synchronous command it sends: each ack, each publish, each event. Building one costs
more CPU than the command (``Redis.__init__`` copies the response-callback table): in a
profiled worker it was 9% of all the time holding the GIL (docs/BENCHMARKS.md). A
``redis.Redis`` is thread-safe (every command borrows a pooled connection), so one per
channel serves all threads; a new one is made when kombu replaces the pool.

Used for ``redis://`` broker URLs (see :func:`workers.celery_app.celery_config`); other
schemes keep kombu's own transport.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

TRANSPORT = "workers.redis_transport:Transport"


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _sync_client: Any = None

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the broker connection of this channel was released")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

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

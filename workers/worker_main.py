"""Run one instance worker: a Celery worker plus its housekeeping, bounded on shutdown.

The worker runs ``ceil(concurrency / chunk) + 1`` Celery threads, each on one message of a
chunk of records (:func:`workers.dispatch.chunk_size`); the records' calls all run on one
event loop (:mod:`workers.engine`) through :class:`workers.async_client.AsyncLLMClient`, at
most ``concurrency`` at once.

Shutdown (SIGTERM, as systemd and ``vfleet workers`` send it) is Celery's warm shutdown:
no new messages, running tasks finish. Tasks that have not started give their records back
to the ledger at once (the feeder republishes them). If running calls outlast
``Settings.shutdown_grace``, their claims are released in SQL too and the process exits:
nothing is left running under a lease nobody renews.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from workers.async_client import AsyncLLMClient
from workers.broker import redis_client as broker_client
from workers.celery_app import create_app
from workers.dispatch import Dispatcher, chunk_size
from workers.engine import AsyncEngine
from workers.errors import ConfigError
from workers.feeder import Feeder
from workers.fleet import Fleet, InstanceConfig
from workers.health import GateListener, HealthGate, Probe
from workers.housekeeping import Housekeeper
from workers.provenance import InstanceProvenance
from workers.queues import instance_queue, shared_queue
from workers.runtime import WorkerRuntime
from workers.settings import Settings
from workers.state import state_of
from workers.store.opening import open_ledger

logger = logging.getLogger(__name__)

CELERY_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def node_name(instance: str) -> str:
    """The Celery node name of an instance's worker: ``NAME@host``."""
    return f"{instance}@{socket.gethostname()}"


def run_worker(
    settings: Settings,
    fleet: Fleet,
    inst: InstanceConfig,
    *,
    concurrency: int,
    loglevel: str = "INFO",
) -> None:
    """Start the worker and block until it stops."""
    settings.check()
    # One INFO line per HTTP request (and per health probe, every second) costs CPU and
    # says nothing the task lines do not.
    for noisy in ("httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # Celery's two INFO lines per record ("received", "succeeded in") cost 5% of a busy
    # worker's CPU and bury the lines that matter (vfleet logs retries and failures
    # itself, Flower shows every task); `--loglevel DEBUG` brings them back.
    if loglevel.upper() != "DEBUG":
        for chatty in CELERY_PER_TASK_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
    app = create_app(settings, fleet=fleet)
    hostname = node_name(inst.name)
    threads = task_threads(concurrency, chunk_size(fleet, inst.model, settings.chunk_max))
    ledger = open_ledger(settings, pool_size=threads + 4)
    # An instance reached through SSH (`via`): the client and the health gate talk to a
    # supervised in-process tunnel's local port instead (workers.tunnels), closed when the
    # worker returns.
    tunnel = None
    if inst.via is not None:
        from workers.tunnels import open_instance_tunnel

        tunnel = open_instance_tunnel(inst, fleet, settings)
    served = tunnel.instance if tunnel is not None else inst
    engine = AsyncEngine(name=f"vfleet-engine-{inst.name}").start()
    client = AsyncLLMClient(
        served,
        concurrency=concurrency,
        timeout=settings.request_timeout,
        connect_timeout=settings.connect_timeout,
    )
    gate = HealthGate(served.base_url, api_key=_api_key(served))
    runtime = WorkerRuntime(
        settings,
        inst,
        ledger,
        client,
        engine,
        gate=gate,
        worker_name=hostname,
        provenance=InstanceProvenance(provenance_instance(inst, served)),
    )
    state_of(app).worker = runtime
    queues = [shared_queue(inst.model), instance_queue(inst.name)]
    redis_client = broker_client(settings.broker_url)
    keeper = Housekeeper(
        runtime=runtime,
        redis_client=redis_client,
        feeder=Feeder(
            ledger=ledger,
            dispatcher=Dispatcher(app),
            redis_client=redis_client,
            fleet=fleet,
            settings=settings,
        ),
    )
    gate.add_listener(consumer_switch(app, inst.name, hostname, queues, keeper.publish_health))
    _connect_signals(runtime, keeper)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={threads}",
            f"--hostname={hostname}",
            f"--queues={','.join(queues)}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    engine.run(client.aclose())
    engine.stop()
    if tunnel is not None:
        tunnel.close()


def task_threads(concurrency: int, chunk: int) -> int:
    """Celery threads of a worker: enough messages of ``chunk`` records to keep
    ``concurrency`` requests in flight, plus one being claimed or stored meanwhile."""
    return -(-concurrency // chunk) + 1


def provenance_instance(inst: InstanceConfig, served: InstanceConfig) -> InstanceConfig:
    """The instance provenance asks: where this worker reaches it (a ``via`` instance's
    tunnel), named after the host it runs on rather than the tunnel's local end."""
    if served is inst:
        return inst
    return served.model_copy(update={"host": inst.host or inst.via})


def _api_key(inst: InstanceConfig) -> str | None:
    try:
        return inst.api_key()
    except ConfigError:
        return None  # the calls themselves fail with the reason


def consumer_switch(
    app: Celery,
    instance: str,
    hostname: str,
    queues: list[str],
    publish: Callable[[], object],
) -> GateListener:
    """The gate listener of an instance worker: a closed gate (its probe or failed calls,
    whichever closed it) stops consuming ``queues``, an open one consumes them again; the
    flip is logged and published to the health key at once."""

    def switch(up: bool, probe: Probe) -> None:
        logger.warning("instance %s is %s (%s)", instance, "up" if up else "DOWN", probe.detail)
        publish()
        # Broadcast to ourselves: the consumer changes queues in its own thread.
        for queue in queues:
            if up:
                app.control.add_consumer(queue, destination=[hostname], reply=False)
            else:
                app.control.cancel_consumer(queue, destination=[hostname], reply=False)

    return switch


def _connect_signals(runtime: WorkerRuntime, keeper: Housekeeper) -> None:
    def ready(**_: Any) -> None:
        keeper.start()

    def shutting_down(**_: Any) -> None:
        runtime.draining = True
        keeper.stop()
        timer = threading.Timer(runtime.settings.shutdown_grace, _give_up, args=(runtime,))
        timer.daemon = True
        timer.start()

    def shutdown(**_: Any) -> None:
        released = runtime.release_all()
        if released:
            logger.warning("gave back %s unfinished records at shutdown", released)

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
    signals.worker_shutdown.connect(shutdown, weak=False)


def _give_up(runtime: WorkerRuntime) -> None:
    """Shutdown grace is over: release what is still running and leave."""
    released = runtime.release_all()
    logger.warning(
        "shutdown grace (%ss) over: gave back %s running records, exiting",
        runtime.settings.shutdown_grace,
        released,
    )
    logging.shutdown()
    os._exit(0)

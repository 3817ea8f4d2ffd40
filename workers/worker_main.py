"""Run one instance worker: a Celery worker plus its housekeeping, bounded on shutdown.

Shutdown (SIGTERM, as systemd and ``vfleet workers`` send it) is Celery's warm shutdown:
no new messages, running tasks finish. Tasks that have not started are given back to the
shared queue at once. If running calls outlast ``Settings.shutdown_grace``, their claims
are released in SQL (the feeder republishes them) and the process exits: nothing is left
running under a lease nobody renews.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from workers.broker import redis_client as broker_client
from workers.celery_app import create_app, install_runtime
from workers.dispatch import Dispatcher
from workers.feeder import Feeder
from workers.fleet import Fleet, InstanceConfig
from workers.health import HealthGate
from workers.housekeeping import Housekeeper
from workers.llm import LLMClient
from workers.queues import instance_queue, shared_queue
from workers.runtime import WorkerRuntime
from workers.settings import Settings
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
    ledger = open_ledger(settings, pool_size=concurrency + 4)
    # An instance reached through SSH (`via`): the client and the health gate talk to a
    # supervised in-process tunnel's local port instead (workers.tunnels), closed when the
    # worker returns.
    tunnel = None
    if inst.via is not None:
        from workers.tunnels import open_instance_tunnel

        tunnel = open_instance_tunnel(inst, fleet)
    served = tunnel.instance if tunnel is not None else inst
    client = LLMClient(
        served, timeout=settings.request_timeout, connect_timeout=settings.connect_timeout
    )
    runtime = WorkerRuntime(
        settings, inst, ledger, client, gate=HealthGate(served.base_url), worker_name=hostname
    )
    install_runtime(app, runtime)
    queues = [shared_queue(inst.model), instance_queue(inst.name)]
    redis_client = broker_client(settings.broker_url)

    def on_gate_change(up: bool) -> None:
        # Broadcast to ourselves: the consumer changes queues in its own thread.
        for queue in queues:
            if up:
                app.control.add_consumer(queue, destination=[hostname], reply=False)
            else:
                app.control.cancel_consumer(queue, destination=[hostname], reply=False)

    keeper = Housekeeper(
        runtime=runtime,
        redis_client=redis_client,
        on_gate_change=on_gate_change,
        feeder=Feeder(
            ledger=ledger,
            dispatcher=Dispatcher(app),
            redis_client=redis_client,
            fleet=fleet,
            settings=settings,
        ),
    )
    _connect_signals(runtime, keeper)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--hostname={hostname}",
            f"--queues={','.join(queues)}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    if tunnel is not None:
        tunnel.close()


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

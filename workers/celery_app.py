"""The Celery app factory: one configuration for producers, workers, beat and Flower."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from workers.fleet import Fleet
from workers.queues import SCAN_QUEUE, instance_queue, shared_queue
from workers.redis_transport import TRANSPORT as REDIS_TRANSPORT
from workers.settings import Settings
from workers.state import AppState, attach_state
from workers.tasks import register_tasks

# Ctrl-C / SIGQUIT (cold shutdown) waits this long for running tasks; SIGTERM is bounded by
# Settings.shutdown_grace (see workers.worker_main). systemd's TimeoutStopSec must exceed both.
DEFAULT_SOFT_SHUTDOWN_TIMEOUT = 25.0


def declared_queues(fleet: Fleet) -> list[Queue]:
    """The queues of ``fleet``: one shared per model, one per instance, and ``scan``."""
    names = [shared_queue(m) for m in fleet.models()]
    names += [instance_queue(i.name) for i in fleet.instances]
    names.append(SCAN_QUEUE)
    return [Queue(n, routing_key=n) for n in names]  # type: ignore[no-untyped-call]


def celery_config(settings: Settings, fleet: Fleet) -> dict[str, Any]:
    """The Celery settings vfleet's delivery semantics rely on (see DESIGN.md)."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # kombu's Redis transport re-delivers an unacked message this long after fetch.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Results live in SQL; Redis only carries record ids.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": declared_queues(fleet),
        "task_create_missing_queues": True,
        # Flower sees only what events say.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_soft_shutdown_timeout": DEFAULT_SOFT_SHUTDOWN_TIMEOUT,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
    if settings.broker_url.startswith("redis://"):
        config["broker_transport"] = REDIS_TRANSPORT  # kombu's, with clients reused
    return config


def create_app(settings: Settings, *, fleet: Fleet | None = None) -> Celery:
    """Build a configured Celery app with vfleet's tasks registered and its
    :class:`~workers.state.AppState` attached (the entry point adds its runtime)."""
    fleet = fleet or Fleet()
    app = Celery("vfleet", set_as_current=False)
    app.conf.update(celery_config(settings, fleet))
    attach_state(app, AppState(settings, fleet))
    register_tasks(app)
    return app

"""The Celery app for Celery's own command line: ``celery -A workers.app ...``.

::

    celery -A workers.app inspect ping
    celery -A workers.app inspect active_queues
    celery -A workers.app control cancel_consumer llm.MODEL -d gpu1-8001@host
    celery -A workers.app events

It is :func:`workers.celery_app.create_app` on the settings and fleet file of the
environment (``VFLEET_BROKER_URL``, ``VFLEET_FLEET_FILE``, ...), the same app every ``vfleet``
command builds. Celery needs a module-level app, so this module, and only this one, reads
the environment when imported. Instance workers are started with ``vfleet worker``, which
gives each its runtime (ledger, client, health gate); ``celery -A workers.app worker -Q scan``
runs a scan worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

from celery import Celery
from pydantic import ValidationError

from workers.celery_app import create_app
from workers.errors import VfleetError
from workers.fleet import load_fleet
from workers.settings import Settings


def build_app() -> Celery:
    """The app of the environment's settings and fleet file (an absent file: no fleet)."""
    settings = Settings()
    return create_app(settings, fleet=load_fleet(Path(settings.fleet_file), required=False))


try:
    app = build_app()
except (VfleetError, ValidationError) as e:  # a bad fleet file or setting: one line
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        why = "VFLEET_" + "_".join(str(p) for p in first["loc"]).upper() + f": {first['msg']}"
    else:
        why = str(e)
    print(f"vfleet: error: {why}", file=sys.stderr)
    raise SystemExit(1) from None

"""Celery tasks: thin wrappers that decode a message and call plain functions."""

from __future__ import annotations

from celery import Celery

from workers.tasks.maintenance import register_maintenance_tasks
from workers.tasks.records import register_record_tasks
from workers.tasks.scan import register_scan_tasks


def register_tasks(app: Celery) -> None:
    register_record_tasks(app)
    register_maintenance_tasks(app)
    register_scan_tasks(app)

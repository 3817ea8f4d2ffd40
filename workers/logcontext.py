"""Which record a line of log is about, wherever in the stack it is written.

The runtime opens a :func:`record_context` while it works on a record; the logging filter
(:class:`producer.logs.RecordContextFilter`) reads :func:`current` and puts ``batch``,
``record``, ``instance`` and ``task_id`` on every line written meanwhile, by vfleet's code
or a library's. A :class:`contextvars.ContextVar` is per thread (each task of the threads
pool runs in its own), so concurrent records never mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FIELDS = ("batch", "record", "instance", "task_id")

_current: ContextVar[dict[str, Any] | None] = ContextVar("vfleet_record", default=None)


@contextmanager
def record_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Lines logged inside carry ``fields`` (a dict the caller may update, e.g. with the
    batch once the record is claimed)."""
    values = {k: v for k, v in fields.items() if k in FIELDS}
    token = _current.set(values)
    try:
        yield values
    finally:
        _current.reset(token)


def current() -> dict[str, Any]:
    """The fields of the record being worked on in this thread ({} outside one)."""
    return dict(_current.get() or {})

"""Logging for every ``vfleet`` entry point: plain text or one JSON object per line.

Only the CLI root configures logging (:func:`configure_logging`); modules just
``logging.getLogger(__name__)``. Both formats:

* carry ``batch``, ``record``, ``instance`` and ``task_id`` where a line is about a record:
  from ``extra=`` when the caller gave them, else from the Celery task a trace line is about
  or the one being run, else from the record the runtime is working on in this thread
  (:mod:`workers.logcontext`);
* never show a secret: passwords in URLs are masked and every value given to
  :func:`redact` is replaced by ``***``.

With ``json``, a Celery worker prints nothing that is not a JSON line: its banner is
suppressed and the few lines Celery writes straight to the terminal go through logging.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from workers import logcontext
from workers.queues import PROCESS_RECORDS_TASK
from workers.settings import mask_url

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
DEFAULT_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RECORD_FIELDS = logcontext.FIELDS
MASK = "***"
_MIN_SECRET_LEN = 4
_ARGS_REPR = re.compile(r"^[(\[]\s*\[?\s*(\d+)\s*\]?\s*,?\s*[)\]]$")
# LogRecord attributes that are not ``extra=`` fields.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Redactor:
    """Masks passwords in URLs and any registered secret value in a piece of text."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, values: Iterable[str | None]) -> None:
        # Very short values would mask half of every line; they are no secret anyway.
        self.secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LEN)

    def __call__(self, text: str) -> str:
        text = mask_url(text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


class RecordContextFilter(logging.Filter):
    """Sets ``batch``, ``record``, ``instance`` and ``task_id`` on every record (None if unknown).

    ``defaults`` holds process-wide values (a worker's instance name).
    """

    def __init__(self) -> None:
        super().__init__()
        self.defaults: dict[str, Any] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {k: getattr(record, k, None) for k in RECORD_FIELDS}
        if any(v is None for v in fields.values()):
            _fill(fields, _from_trace_args(record))
            _fill(fields, _from_current_task())
            _fill(fields, logcontext.current())
            _fill(fields, self.defaults)
        for key, value in fields.items():
            setattr(record, key, value)
        return True


def _fill(fields: dict[str, Any], found: dict[str, Any]) -> None:
    for key, value in found.items():
        if fields.get(key) is None and value is not None:
            fields[key] = value


def _record_id(task_name: object, args: object) -> int | None:
    """The record a task message is about, when it carries exactly one (a chunk's lines
    name their records through :mod:`workers.logcontext`)."""
    if task_name != PROCESS_RECORDS_TASK:
        return None
    if isinstance(args, list | tuple) and args:
        first = args[0]
        if isinstance(first, list) and len(first) == 1:
            first = first[0]
        return first if isinstance(first, int) else None
    if isinstance(args, str) and (m := _ARGS_REPR.match(args.strip())):
        return int(m[1])
    return None


def _from_trace_args(record: logging.LogRecord) -> dict[str, Any]:
    """Celery's trace lines ("Task x[id] received/succeeded") pass a dict as ``args``."""
    args = record.args
    if not isinstance(args, dict) or "id" not in args:
        return {}
    return {"task_id": args.get("id"), "record": _record_id(args.get("name"), args.get("args"))}


def _from_current_task() -> dict[str, Any]:
    if "celery" not in sys.modules:  # never import Celery just to log
        return {}
    from celery import current_task

    task = current_task._get_current_object()
    if task is None or task.request.id is None:
        return {}
    request = task.request
    hostname = request.hostname or ""
    return {
        "task_id": request.id,
        "record": _record_id(task.name, request.args),
        "instance": hostname.split("@", 1)[0] or None,
    }


class TextFormatter(logging.Formatter):
    """The classic one-line format, redacted, with record fields appended when known."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(DEFAULT_TEXT_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        task_id = getattr(record, "task_id", None)
        if task_id is not None and task_id not in text:
            text = f"{text} [task {task_id}]"
        return self.redactor(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record fields, extras."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in data and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        data = {k: v for k, v in data.items() if v is not None}
        return self.redactor(json.dumps(data, default=str, ensure_ascii=False))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (like ``logging.lastResort``)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class _VfleetHandler(_StderrHandler):
    """Our handler on the root logger (replaced, not stacked, on a second configure)."""

    def __init__(self, formatter: logging.Formatter, context: RecordContextFilter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.addFilter(context)
        self.context = context


def configure_logging(level: int | str, log_format: str = "text") -> _VfleetHandler:
    """Send every log line to stderr in ``log_format`` (``text`` or ``json``) at ``level``.

    Returns the installed handler. Raises :class:`ValueError` for an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (use text or json)")
    redactor = Redactor()
    context = RecordContextFilter()
    formatter: logging.Formatter = (
        JsonFormatter(redactor) if log_format == "json" else TextFormatter(redactor)
    )
    handler = _VfleetHandler(formatter, context)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _VfleetHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Celery gives its task logger a text handler of its own unless it has one already.
    task_logger = logging.getLogger("celery.task")
    for old in [h for h in task_logger.handlers if isinstance(h, _VfleetHandler)]:
        task_logger.removeHandler(old)
    task_logger.addHandler(handler)
    if log_format == "json":
        # Warnings (Celery's SecurityWarning, deprecations) become JSON lines too.
        logging.captureWarnings(True)
        _json_celery_worker(context)
    return handler


def redact(*values: str | None) -> None:
    """Never log these values (passwords, API keys): every line shows ``***`` instead."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, _VfleetHandler) and isinstance(
            formatter, TextFormatter | JsonFormatter
        ):
            formatter.redactor.add(values)


def url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host/...``, if any."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _json_celery_worker(context: RecordContextFilter) -> None:
    """In a Celery worker: no banner, the instance on every line, prints through logging."""
    from celery import signals

    def on_init(sender: str | None = None, instance: Any = None, **_kw: Any) -> None:
        if instance is not None:
            instance.quiet = True
        if sender:
            context.defaults["instance"] = str(sender).split("@", 1)[0]
        _route_celery_prints()

    signals.celeryd_init.connect(on_init, weak=False)


def _route_celery_prints() -> None:
    # Celery writes a few lines ("worker: Warm shutdown (MainProcess)") straight to the
    # terminal's file descriptor; in JSON mode they become log records instead.
    from celery.apps import worker as celery_worker

    say = logging.getLogger("celery.apps.worker")

    def safe_say(msg: str, f: object = None) -> None:
        say.info("%s", str(msg).strip())

    celery_worker.safe_say = safe_say

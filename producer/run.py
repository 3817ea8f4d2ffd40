"""``vfleet run``: from a file to its results in one command.

Enqueue (:func:`producer.enqueue.enqueue`), start a worker for each instance that serves the
batch and has none alive (a Celery ping names the live ones, ``INSTANCE@host``; a worker on
another machine counts), keep those running while following the batch (a worker that dies is
restarted, :class:`~producer.supervise.Supervisor`), export, and stop the workers it started.
Interrupted, it stops them the same way and the batch stays stored: the same command again
adds nothing, starts what is missing and picks up where the fleet left off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from producer.enqueue import Stack
from producer.errors import PublishError
from producer.sources import Source
from producer.supervise import ProcessGroup, Supervisor, settings_env, vfleet_argv
from workers.store.values import BatchInfo

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

DEFAULT_LOG_DIR = Path("vfleet-logs")
PING_TIMEOUT = 1.0

# The export a run writes by default: in the family of its input.
_OUTPUT_FORMATS = {"parquet": "parquet", "csv": "csv", "tsv": "csv"}


def alive_instances(app: Celery, *, timeout: float = PING_TIMEOUT) -> set[str]:
    """The instances some live worker is bound to: the ``INSTANCE`` of each ``INSTANCE@host``
    that answers a ping. Raises :class:`PublishError` when the broker cannot be asked."""
    from kombu.exceptions import KombuError

    try:
        replies = app.control.ping(timeout=timeout) or []
    except (KombuError, OSError) as e:
        raise PublishError(
            f"the broker did not take a ping ({str(e).splitlines()[0]}); "
            "the batch stays stored: re-run the same command"
        ) from e
    return {str(name).partition("@")[0] for reply in replies for name in reply}


def serving(stack: Stack, batch: BatchInfo) -> list[str]:
    """The instances that can run the batch: those it is pushed to, or every instance
    serving its model."""
    if batch.targets:
        return list(batch.targets)
    return [i.name for i in stack.fleet.instances if i.model == batch.model]


def default_output(source: Source, batch: str) -> tuple[Path, str]:
    """Where a run writes its results unless told, and in which export format:
    ``BATCH.results.parquet`` for Parquet input, ``.csv`` for CSV and TSV, OpenAI batch
    output for OpenAI batch files, else JSONL."""
    if source.fmt.requests:
        return Path(f"{batch}.results.jsonl"), "openai"
    fmt = _OUTPUT_FORMATS.get(source.fmt.name, "jsonl")
    return Path(f"{batch}.results.{fmt}"), fmt


class RunWorkers:
    """The workers a run starts: one per instance of ``names`` that no live worker serves
    (none with ``start`` false: a batch already done), supervised until the ``with`` block
    ends, then stopped (SIGTERM: each gives back what it holds within its shutdown grace)."""

    def __init__(
        self,
        stack: Stack,
        names: list[str],
        *,
        start: bool = True,
        log_dir: Path = DEFAULT_LOG_DIR,
    ) -> None:
        self.stack = stack
        self.names = names
        self.start = start
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self.supervisor = Supervisor(self.group)
        self.started: list[str] = []
        self.alive: set[str] = set()

    def __enter__(self) -> RunWorkers:
        self.stack.settings.check()
        self.alive = alive_instances(self.stack.celery) & set(self.names)
        missing = [n for n in self.names if n not in self.alive] if self.start else []
        if missing:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        env = settings_env(self.stack.settings)
        try:
            for name in missing:
                argv = vfleet_argv("worker", "--instance", name)
                log = self.log_dir / f"worker-{name}.log"
                self.supervisor.start(name, argv, env=env, log=log)
                self.started.append(name)
        except BaseException:  # Ctrl-C half-way: stop what did start
            self.group.stop()
            raise
        return self

    def poll(self) -> None:
        """Restart a started worker that died (call it while following the batch)."""
        self.supervisor.poll()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.started:
            logger.info("stopping the workers this run started: %s", ", ".join(self.started))
        self.group.stop()

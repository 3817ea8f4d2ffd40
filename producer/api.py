"""vfleet from Python: submit records, wait with a progress bar, read the results back.

    from producer.api import submit

    handle = submit(df, spec="judge", batch="judge-v1", fleet="fleet.toml", key="id")
    handle.wait()                 # a progress bar in a terminal or a notebook
    scores = handle.to_pandas()   # input.*, output.score (int), output.reasoning, status...

:func:`submit` takes what the CLI takes, through the same code (:func:`producer.enqueue.
enqueue`): records as a path (JSONL, CSV, TSV, Parquet, OpenAI batch file), a pandas
DataFrame, a ``datasets.Dataset`` or an iterable of dicts; the same settings (``VFLEET_*``
variables, ``.env``; keyword arguments override them, as CLI flags do). Submitting the same
records to the same batch again adds nothing. Workers do the work: ``vfleet workers``, or
``vfleet run`` for a file. Errors are those of vfleet's tree (:mod:`producer.errors`,
:mod:`workers.errors`), each with a one-line message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from producer import extras
from producer.context import Context
from producer.enqueue import EnqueueOptions, enqueue
from producer.errors import WaitTimeoutError
from producer.lifecycle import Cancelled, Retried, cancel_batch, retry_batch
from producer.progress import BatchProgress, batch_progress
from producer.readers.base import DEFAULT_MAX_RECORD_BYTES
from producer.records import record_dict
from producer.sources import source_of
from producer.storing import EnqueueReport
from workers.errors import ConfigError, StoreError
from workers.routes import Route
from workers.settings import Settings, build_settings
from workers.spec import Spec
from workers.store.queries import iter_records
from workers.store.values import BatchInfo

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BatchHandle", "submit"]

DEFAULT_POLL = 1.0
"""Seconds between two readings of the ledger while waiting."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _store_errors(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """A database error while reading a batch becomes a one-line :class:`StoreError`."""

    @wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as e:
            raise _ledger_failed(e) from e

    return wrapper


def _ledger_failed(e: SQLAlchemyError) -> StoreError:
    first = (str(e).splitlines() or [type(e).__name__])[0]
    return StoreError(f"the ledger failed: {type(e).__name__}: {first}")


def _settings(fleet: str | Path | None, overrides: dict[str, Any]) -> Settings:
    """Settings from the environment and ``.env``, ``overrides`` on top (unknown names
    refused: a misspelt setting must not pass unnoticed)."""
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (see `vfleet config show`)")
    return build_settings(fleet_file=fleet, **overrides)


def _route(route: str) -> Route:
    try:
        return Route(route)
    except ValueError:
        known = ", ".join(r.value for r in Route)
        raise ConfigError(f"unknown route {route!r} (use one of: {known})") from None


def submit(
    records: object,
    spec: str | Spec | None = None,
    batch: str | None = None,
    fleet: str | Path | None = None,
    *,
    key: str | None = None,
    format: str | None = None,
    model: str | None = None,
    labels: Sequence[str] | None = None,
    votes: int | None = None,
    route: str = Route.SHARED.value,
    instances: Sequence[str] = (),
    strict: bool = False,
    reuse: bool = True,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    **settings: Any,
) -> BatchHandle:
    """Store ``records`` as batch ``batch`` and publish them; returns its handle.

    ``records``: a path, a DataFrame, a ``datasets.Dataset`` or an iterable of dicts (in
    memory, ``batch`` is required). ``spec``: a built-in name, a spec TOML file or a
    :class:`~workers.spec.Spec` (default: the format's, ``judge``). ``fleet``: the fleet
    file (default: ``VFLEET_FLEET_FILE``, ``fleet.toml``). ``key``: the field that keys
    records (default: ``custom_id``, else a hash of the record). ``format``: a file's format,
    or ``"openai"`` for dicts that are OpenAI batch requests. The rest are ``vfleet
    enqueue``'s options; ``**settings`` override :class:`~workers.settings.Settings` fields
    (``database_url=``, ``broker_url=``...).

    Raises :class:`~workers.errors.ConfigError` (bad settings, spec, fleet or input),
    :class:`~producer.errors.EnqueueError` (nothing to enqueue, ``strict`` found bad
    records), :class:`~workers.errors.StoreError` and :class:`~producer.errors.PublishError`.
    """
    context = Context(_settings(fleet, settings))
    try:
        source = source_of(records, format)
        options = EnqueueOptions(
            batch=batch,
            spec=spec,
            labels=labels,
            votes=votes,
            model=model,
            route=_route(route),
            instances=instances,
            key=key,
            strict=strict,
            max_record_bytes=max_record_bytes,
            reuse=reuse,
        )
        report = enqueue(context, source, options)
    except BaseException:
        context.close()
        raise
    return BatchHandle(context, report.batch, report)


class BatchHandle:
    """A submitted batch: its progress, its results, and cancel and retry. The batch lives
    in the ledger; the handle only reads it (any process may, by name: :meth:`open`)."""

    def __init__(
        self, context: Context, batch: BatchInfo, report: EnqueueReport | None = None
    ) -> None:
        self._context = context
        self.batch = batch
        self.report = report
        """What :func:`submit` read and stored (None for a handle from :meth:`open`)."""

    @classmethod
    def open(cls, batch: str, fleet: str | Path | None = None, **settings: Any) -> BatchHandle:
        """The handle of an existing batch. Raises :class:`~workers.errors.BatchNotFoundError`."""
        context = Context(_settings(fleet, settings))
        context.fleet_required = False
        try:
            return cls(context, context.ledger.batch(batch))
        except BaseException:
            context.close()
            raise

    @property
    def name(self) -> str:
        return self.batch.name

    def __repr__(self) -> str:
        return f"<BatchHandle {self.name!r}>"

    # -- progress ------------------------------------------------------------------------

    @_store_errors
    def progress(self) -> BatchProgress:
        """How far the batch has got, now."""
        ledger = self._context.ledger
        return batch_progress(ledger, ledger.batch(self.name))

    @_store_errors
    def status(self) -> dict[str, Any]:
        """The batch as ``vfleet status BATCH --json`` prints it: an OpenAI batch object
        (``request_counts``, ``errors``, ``usage``...) with vfleet's counts beside."""
        ledger = self._context.ledger
        return batch_progress(ledger, ledger.batch(self.name), details=True).as_dict()

    def wait(
        self, progress: bool = True, *, timeout: float | None = None, poll: float = DEFAULT_POLL
    ) -> dict[str, Any]:
        """Block until every record is done (succeeded, failed or cancelled); returns
        :meth:`status`. ``progress`` shows a bar (tqdm: a widget in Jupyter, text in a
        terminal). Raises :class:`~producer.errors.WaitTimeoutError` after ``timeout``
        seconds; the batch goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(self.name) if progress else None
        try:
            while True:
                now = self.progress()
                if bar is not None:
                    bar.show(now)
                if now.complete:
                    return self.status()
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"batch {self.name}: {now.done} of {now.total} done after {timeout:g}s"
                    )
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    # -- results -------------------------------------------------------------------------

    def results(self) -> Iterator[dict[str, Any]]:
        """Every record in input order, streamed: ``key``, ``status``, ``input``, ``output``
        (the parsed answer), ``output_text``, ``error`` and the metadata ``vfleet export``
        writes. Records not finished yet come with their status and no output."""
        try:
            info = self._fresh()
            for r in iter_records(self._context.ledger.engine, info.id):
                yield record_dict(r)
        except SQLAlchemyError as e:
            raise _ledger_failed(e) from e

    @_store_errors
    def to_pandas(self) -> pd.DataFrame:
        """The records as a DataFrame, in input order: ``input.<field>`` per input field,
        ``output.<field>`` typed by the spec's schema (nullable ``Int64`` scores, ``string``
        labels...), ``output`` and ``output_text``, and the metadata ``vfleet export``
        writes. Needs pandas and pyarrow (``pip install 'vfleet[pandas]'``)."""
        pandas = extras.require("pandas", extra=extras.PANDAS, what="to_pandas()")
        pa = extras.require("pyarrow", extra=extras.PANDAS, what="to_pandas()")
        from producer.export_parquet import record_batches, schema

        info = self._fresh()
        batches = record_batches(iter_records(self._context.ledger.engine, info.id), info)
        table = pa.Table.from_batches(list(batches), schema=schema(info))
        nullable = {pa.int64(): pandas.Int64Dtype(), pa.bool_(): pandas.BooleanDtype()}
        frame = table.to_pandas(types_mapper=nullable.get)
        inputs = [json.loads(text) if text else {} for text in frame.pop("input")]
        expanded = pandas.DataFrame.from_records(inputs, index=frame.index).add_prefix("input.")
        result: pd.DataFrame = pandas.concat(
            [frame[["key"]], expanded, frame.drop(columns="key")], axis=1
        )
        return result

    @_store_errors
    def export(self, path: str | Path, format: str | None = None) -> int:
        """Write the results to ``path`` as ``vfleet export`` does (jsonl, csv, parquet or
        openai; default: the suffix); returns how many records were written."""
        from producer.export import export_batch

        return export_batch(self._context.ledger, self._fresh(), Path(path), format)

    # -- lifecycle -----------------------------------------------------------------------

    @_store_errors
    def cancel(self) -> Cancelled:
        """Cancel the batch: waiting records are never run, running ones finish."""
        return cancel_batch(self._context, self.name)

    @_store_errors
    def retry(self, error_kind: str | None = None, *, cancelled: bool = False) -> Retried:
        """Queue failed records again (of ``error_kind`` only, if given; the cancelled ones
        too with ``cancelled``), as ``vfleet retry`` does."""
        return retry_batch(self._context, self.name, error_kind=error_kind, cancelled=cancelled)

    def close(self) -> None:
        """Close the handle's database connections (a later call opens them again)."""
        self._context.close()

    def __enter__(self) -> BatchHandle:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _fresh(self) -> BatchInfo:
        self.batch = self._context.ledger.batch(self.name)
        return self.batch


class _Bar:
    """A tqdm bar over a batch's done records (``tqdm.auto``: a widget in Jupyter)."""

    def __init__(self, name: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(desc=name, unit="rec", dynamic_ncols=True)

    def show(self, p: BatchProgress) -> None:
        c = p.counts
        self._bar.total = p.total
        self._bar.n = p.done
        self._bar.set_postfix(ok=c["succeeded"], failed=c["failed"], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

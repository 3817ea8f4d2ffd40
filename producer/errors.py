"""The errors of the ``producer`` package, under vfleet's one root
(:class:`workers.errors.VfleetError`)::

    VfleetError
    ├── ConfigError                 (workers.errors) settings, fleet file or input are wrong
    │   ├── ReaderError             producer.readers: the input as a whole cannot be read
    │   └── MissingExtraError       an optional dependency (pyarrow, pandas) is not installed
    ├── EnqueueError                the input cannot be enqueued: --strict with bad lines,
    │                               no record at all, a half-done enqueue (says what it kept)
    ├── PublishError                records are stored but could not be published
    └── WaitTimeoutError            a batch did not finish in the time a caller gave it

The CLI turns each into one line on stderr and exit code 1; the Python API
(:mod:`producer.api`) raises them as they are.
"""

from __future__ import annotations

from workers.errors import ConfigError, VfleetError


class EnqueueError(VfleetError):
    """The input cannot be enqueued (``--strict`` with bad lines, an empty file...)."""


class PublishError(VfleetError):
    """Records are stored but could not be published (the broker is away)."""


class MissingExtraError(ConfigError):
    """A feature needs an optional dependency that is not installed; the message names the
    extra that installs it (``pip install 'vfleet[parquet]'``)."""


class WaitTimeoutError(VfleetError):
    """A batch was not complete when the time given to wait for it ran out."""

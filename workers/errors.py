"""The errors of the ``workers`` package.

Every error vfleet raises on purpose descends from :class:`VfleetError`::

    VfleetError
    ├── ConfigError              settings, fleet file or input are wrong (user error)
    │   ├── SpecError            workers.spec: unknown spec, bad spec file, missing labels
    │   ├── ReaderError          producer.readers: unreadable input file
    │   └── LimitError           workers.store.limits: a name or key the ledger cannot hold
    ├── StoreError               the SQL ledger refused an operation
    │   └── BatchNotFoundError
    └── RecordError              something went wrong with one record
        ├── TransientError       worth retrying: the instance may answer next time
        │   ├── ConnectError     could not connect, connection reset
        │   ├── RequestTimeoutError  the request timed out
        │   ├── RateLimitedError 429, carries ``retry_after``
        │   └── ServerError      5xx, engine dead
        └── PermanentError       retrying cannot help: the record fails with a reason
            ├── ContextLengthError   prompt + max_tokens exceed the model's window
            ├── BadRequestError      any other 4xx
            ├── TemplateError        the spec's template cannot render this record
            ├── TruncatedError       the answer was cut by max_tokens (finish_reason length)
            └── OutputInvalidError   structured output stayed invalid after re-asks

A :class:`RecordError` raised after the instance answered carries what it answered
(``raw``, token counts, ``finish_reason``): a failed record keeps them in the ledger.

A record whose template cannot render is a :class:`TemplateError`: a permanent failure of
that one record, not of the spec. An answer that does not parse or validate is an
:class:`OutputInvalidError` (the judge re-asks; after the last re-ask it ends the record).
"""

from __future__ import annotations


class VfleetError(Exception):
    """Root of every error vfleet raises on purpose."""


class ConfigError(VfleetError):
    """Settings, fleet file or a spec are wrong; the message is one line for the user."""


class StoreError(VfleetError):
    """The SQL ledger refused an operation."""


class BatchNotFoundError(StoreError):
    """No batch has the given name."""


class RecordError(VfleetError):
    """Processing one record failed. ``kind`` is what lands in ``records.error_kind``.

    ``raw``, ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` are the last
    answer's, when the instance gave one.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        raw: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason


class TransientError(RecordError):
    """Worth retrying later, maybe on another instance."""

    kind = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConnectError(TransientError):
    kind = "connect"


class RequestTimeoutError(TransientError):
    kind = "timeout"


class RateLimitedError(TransientError):
    kind = "rate_limit"


class ServerError(TransientError):
    kind = "server"


class PermanentError(RecordError):
    """Retrying cannot help; the record is failed with this reason."""

    kind = "permanent"


class ContextLengthError(PermanentError):
    kind = "context_length"


class BadRequestError(PermanentError):
    kind = "bad_request"


class TemplateError(PermanentError):
    kind = "template"


class TruncatedError(PermanentError):
    """The answer stopped at ``max_tokens`` (finish_reason ``length``) and is unusable."""

    kind = "truncated"


class OutputInvalidError(PermanentError):
    """Structured output stayed invalid after every re-ask; ``raw`` keeps the last answer."""

    kind = "invalid_output"

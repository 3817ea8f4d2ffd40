"""How long the ledger's strings may be, the same on every store.

PostgreSQL refuses a ``VARCHAR(n)`` value over ``n`` characters (``DataError``) where
SQLite keeps it as it is; both also refuse, or mangle, a NUL character in text. The
limits come from the models, so they cannot drift from the schema, and are checked before
anything is written, with a message that names the value.
"""

from __future__ import annotations

from sqlalchemy import String

from workers.errors import ConfigError
from workers.store.models import BadLine, Batch, Record


def _length(column: object) -> int:
    kind = getattr(column, "type", None)
    assert isinstance(kind, String) and kind.length is not None
    return int(kind.length)


BATCH_NAME_CHARS = _length(Batch.__table__.c.name)
SPEC_NAME_CHARS = _length(Batch.__table__.c.spec_name)
MODEL_CHARS = _length(Batch.__table__.c.model)
KEY_CHARS = _length(Record.__table__.c.key)
SOURCE_CHARS = _length(BadLine.__table__.c.source)
CUSTOM_ID_CHARS = _length(BadLine.__table__.c.custom_id)
CODE_CHARS = _length(BadLine.__table__.c.code)


class LimitError(ConfigError):
    """A name, key or path is longer than the ledger stores, or holds a NUL character."""


def text_problem(what: str, value: str, limit: int) -> str | None:
    """Why ``value`` cannot be stored as ``what`` (one line), or None if it can."""
    if len(value) > limit:
        return f"{what} is {len(value)} characters, over the ledger's {limit}"
    if "\x00" in value:
        return f"{what} holds a NUL character"
    return None


def check_text(what: str, value: str, limit: int) -> str:
    """Return ``value``. Raises :class:`LimitError` if it cannot be stored as ``what``."""
    problem = text_problem(what, value, limit)
    if problem is not None:
        raise LimitError(problem)
    return value


def clip(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters (an ellipsis marks the cut), NULs escaped."""
    value = value.replace("\x00", "\\x00")
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"

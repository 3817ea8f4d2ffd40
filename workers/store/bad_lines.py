"""Input lines that did not become records, kept with their batch.

Every line of an input file either becomes a record or is stored here with its number, a
reason code, a one-line message and its text (cut to :data:`MAX_RAW_CHARS`): a malformed
or oversized line, a duplicate key, a blank line (``blank_line``, *skipped* rather than
bad). ``vfleet status`` counts them, ``vfleet report`` groups them by reason and ``vfleet
export --format openai`` writes them to the errors output, as OpenAI's batch errors do.

Lines are kept per source file: enqueuing a file again replaces that file's lines
(:func:`clear`, then :func:`add`), so they always say what the latest run of each file
found, and a re-run after a crash stores each line once (``(batch, source, line)`` is
unique and inserts skip what is there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from workers.store.limits import CODE_CHARS, CUSTOM_ID_CHARS, clip
from workers.store.models import BadLine, utcnow

BLANK_LINE = "blank_line"
"""The code of a blank line."""

SKIPPED_CODES = frozenset({BLANK_LINE})
"""Codes of lines that are skipped, not bad: they held nothing to run."""

MAX_RAW_CHARS = 1000
"""Characters of a bad line's text that are kept."""

MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class NewBadLine:
    """A line to store: its number, why it is not a record, and what it said."""

    line: int
    code: str
    message: str
    raw: str | None = None
    custom_id: str | None = None


def clear(engine: Engine, batch_id: int, source: str) -> int:
    """Forget the lines stored for ``source`` in the batch; returns how many went."""
    stmt = delete(BadLine).where(BadLine.batch_id == batch_id, BadLine.source == source)
    with engine.begin() as conn:
        return int(conn.execute(stmt).rowcount)


def add(engine: Engine, batch_id: int, source: str, lines: Sequence[NewBadLine]) -> int:
    """Store ``lines`` (texts cut to their bounds); returns how many were new."""
    if not lines:
        return 0
    now = utcnow()
    values = [
        {
            "batch_id": batch_id,
            "source": source,
            "line": b.line,
            "code": b.code[:CODE_CHARS],
            "message": clip(b.message, MAX_MESSAGE_CHARS),
            "raw": None if b.raw is None else clip(b.raw, MAX_RAW_CHARS),
            "custom_id": None if b.custom_id is None else clip(b.custom_id, CUSTOM_ID_CHARS),
            "created_at": now,
        }
        for b in lines
    ]
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(BadLine)
        .on_conflict_do_nothing(index_elements=["batch_id", "source", "line"])
        .returning(BadLine.id)
    )
    with engine.begin() as conn:
        return len(conn.execute(stmt, values).all())


def counts(engine: Engine, batch_id: int) -> dict[str, int]:
    """Stored lines of the batch per code, most frequent first."""
    q = (
        select(BadLine.code, func.count())
        .where(BadLine.batch_id == batch_id)
        .group_by(BadLine.code)
        .order_by(func.count().desc(), BadLine.code)
    )
    with engine.connect() as conn:
        return {str(code): int(n) for code, n in conn.execute(q)}


def split_counts(by_code: dict[str, int]) -> tuple[int, int]:
    """``(bad, skipped)`` of :func:`counts`."""
    skipped = sum(n for code, n in by_code.items() if code in SKIPPED_CODES)
    return sum(by_code.values()) - skipped, skipped


def examples(engine: Engine, batch_id: int, *, per_code: int = 3) -> dict[str, list[BadLine]]:
    """The first ``per_code`` lines of each code, in line order."""
    ranked = (
        select(
            BadLine.id,
            func.row_number()
            .over(partition_by=BadLine.code, order_by=(BadLine.line, BadLine.id))
            .label("rank"),
        )
        .where(BadLine.batch_id == batch_id)
        .subquery()
    )
    q = (
        select(BadLine)
        .join(ranked, ranked.c.id == BadLine.id)
        .where(ranked.c.rank <= per_code)
        .order_by(BadLine.line, BadLine.id)
    )
    out: dict[str, list[BadLine]] = {}
    with Session(engine, expire_on_commit=False) as s:
        for b in s.scalars(q):
            out.setdefault(b.code, []).append(b)
    return out


def iter_bad_lines(
    engine: Engine, batch_id: int, *, chunk: int = 1000, skipped: bool = True
) -> Iterator[BadLine]:
    """The batch's stored lines in line order, ``chunk`` at a time; without the skipped
    (blank) ones unless ``skipped``."""
    last_line, last_id = -1, -1
    while True:
        q = select(BadLine).where(
            BadLine.batch_id == batch_id,
            or_(BadLine.line > last_line, and_(BadLine.line == last_line, BadLine.id > last_id)),
        )
        if not skipped:
            q = q.where(BadLine.code.not_in(SKIPPED_CODES))
        q = q.order_by(BadLine.line, BadLine.id).limit(chunk)
        with Session(engine, expire_on_commit=False) as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield from rows
        last_line, last_id = rows[-1].line, rows[-1].id

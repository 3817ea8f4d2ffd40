"""JSON Lines: one JSON object per line.

Each line is judged alone, so one bad line costs only itself: a blank line is skipped,
and a line that is too long, not UTF-8, not JSON, not an object, nested deeper than
:data:`MAX_DEPTH` or holding a lone surrogate escape (``"\\ud800"``, which no UTF-8 text
can carry) or a number too large for a float is a :class:`BadRow` naming the column where
it breaks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from producer.readers import codes
from producer.readers.base import BadRow, Line, Row, decode, open_binary, raw_text, read_lines
from workers.store.bad_lines import BLANK_LINE

MAX_DEPTH = 100
"""Deepest nesting of arrays and objects accepted in a record."""

_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
# An exponent of three digits or more, or 309 digits in a row: maybe beyond a float.
_HUGE_NUMBER = re.compile(r"[eE][+]?\d{3,}|\d{309,}")
# A \uD800-\uDFFF escape: half of a surrogate pair, or a lone one (checked further).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def read_jsonl(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """Yield a :class:`Row` per JSON object line and a :class:`BadRow` per other line
    (blank ones included, as skipped), in file order.

    Raises :class:`ReaderError` only for what spoils the whole file (it cannot be
    opened, or its gzip data is corrupt).
    """
    with open_binary(path) as stream:
        for line in read_lines(stream, max_record_bytes):
            yield parse_line(line, max_record_bytes)


def parse_line(line: Line, max_record_bytes: int | None = None) -> Row | BadRow:
    """The line's object as a :class:`Row`, or a :class:`BadRow` saying what is wrong."""
    n = line.number
    if max_record_bytes is not None and line.size > max_record_bytes:
        return too_big(n, line.size, max_record_bytes, raw_text(line))
    text = decode(line)
    if isinstance(text, BadRow):
        return text
    if not text.strip():
        return BadRow(n, BLANK_LINE, "blank line (skipped)", raw=text)
    return parse_text(n, text)


def parse_text(n: int, text: str) -> Row | BadRow:
    """The object on line ``n`` (its text, without the line ending), or a :class:`BadRow`.

    ``NaN`` and ``Infinity`` are refused: they are not JSON and would not survive storage.
    """
    # A number too big for a float (1e400) would be stored as Infinity, which is no JSON
    # (PostgreSQL refuses it): check floats only on lines that may hold one.
    parse_float = _finite_float if _HUGE_NUMBER.search(text) else None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=parse_float)
    except json.JSONDecodeError as e:
        where = "at the end of the line" if e.pos >= len(text) else f"at column {e.pos + 1}"
        return BadRow(n, codes.INVALID_JSON, f"invalid JSON ({e.msg} {where})", raw=text)
    except RecursionError:
        return too_deep(n, text)
    except ValueError as e:
        return BadRow(n, codes.INVALID_JSON, f"invalid JSON ({e})", raw=text)
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), "a value")
        return BadRow(n, codes.NOT_AN_OBJECT, f"not a JSON object but {kind}", raw=text)
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(data) > MAX_DEPTH:
        return too_deep(n, text)
    if _SURROGATE_ESCAPE.search(text):
        problem = unicode_problem(data)
        if problem is not None:
            return BadRow(n, codes.INVALID_TEXT, problem, raw=text)
    return Row(n, data)


def too_big(number: int, size: int, limit: int, raw: str | None = None) -> BadRow:
    """The :class:`BadRow` of a record over the size limit."""
    return BadRow(
        number, codes.TOO_LARGE, f"record is {size} bytes, over the {limit}-byte limit", raw=raw
    )


def too_deep(number: int, raw: str) -> BadRow:
    return BadRow(number, codes.TOO_DEEP, f"JSON nested more than {MAX_DEPTH} levels deep", raw=raw)


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (0 for a scalar); no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level) for child in item)
    return deepest


def unicode_problem(data: Any) -> str | None:
    """Why ``data`` cannot be UTF-8 text (a lone surrogate), or None."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.start + 1]
        return f"text holds a lone surrogate \\u{ord(bad):04x}, which is not Unicode text"
    return None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is too large")
    return value

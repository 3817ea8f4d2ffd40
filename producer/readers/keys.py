"""Record keys: what makes a record unique within its batch (and enqueue idempotent)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from producer.readers import codes
from producer.readers.base import ReaderError
from workers.store.limits import KEY_CHARS, text_problem

CUSTOM_ID_FIELD = "custom_id"
"""The key field of OpenAI batch files, used when no key field is named."""

HASH_CHARS = 32
"""Hex digits of the SHA-256 content hash used as key when a record names none."""


class MissingKeyError(ReaderError):
    """The record lacks the key field, or its value cannot be a key (empty, not a string
    or number, too long for the ledger, holding a NUL). ``code`` says which."""

    def __init__(self, message: str, code: str = codes.INVALID_KEY) -> None:
        super().__init__(message)
        self.code = code


def record_key(data: Mapping[str, Any], key_field: str | None) -> str:
    """Return the record's key within its batch.

    With ``key_field``: ``str(data[key_field])``. Without: ``custom_id`` if the record has
    a non-empty one, else the first 32 hex digits of the SHA-256 of the record as canonical
    JSON (sorted keys, no spaces), so the same record always gets the same key.
    Raises :class:`MissingKeyError` if ``key_field`` is missing, null, empty, not a
    string or number, or longer than the ledger holds (:data:`KEY_CHARS`).
    """
    if key_field is not None:
        if key_field not in data:
            raise MissingKeyError(f"missing key field {key_field!r}", codes.MISSING_KEY)
        return _scalar_key(key_field, data[key_field])
    custom_id = data.get(CUSTOM_ID_FIELD)
    if custom_id is not None and str(custom_id).strip():
        return _scalar_key(CUSTOM_ID_FIELD, custom_id)
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:HASH_CHARS]


def _scalar_key(field: str, value: Any) -> str:
    if value is None or isinstance(value, dict | list):
        kind = "null" if value is None else type(value).__name__
        raise MissingKeyError(f"key field {field!r} is {kind}, not a string or number")
    key = str(value)
    if not key.strip():
        raise MissingKeyError(f"key field {field!r} is empty")
    problem = text_problem(f"key field {field!r}", key, KEY_CHARS)
    if problem is not None:
        raise MissingKeyError(problem)
    return key

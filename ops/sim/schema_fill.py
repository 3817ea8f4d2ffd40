"""Build a JSON value that satisfies a JSON Schema, drawing choices from a seeded RNG.

Supported: ``type`` (a list picks its first non-null type), ``const``, ``enum``, objects
(every property below a nesting depth, only required ones deeper), ``integer``/``number`` with
``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (draft 4 booleans too) and
``multipleOf``, strings with ``minLength``/``maxLength`` and common ``format`` values, arrays with
``items``/``prefixItems``/``minItems``/``maxItems``/``uniqueItems``, ``anyOf``/``oneOf`` (the first
branch), ``allOf`` (merged), and ``$ref`` to local definitions (``#/$defs/...``). ``pattern`` is
not honoured.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from ops.sim.vocabulary import WORDS

MAX_DEPTH = 6
_DEFAULT_SPAN = 100
_FORMATS: dict[str, str] = {
    "date-time": "2024-05-17T12:00:00Z",
    "date": "2024-05-17",
    "time": "12:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/item",
    "url": "https://example.com/item",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}

_TYPES = frozenset(("object", "array", "string", "integer", "number", "boolean", "null"))

Schema = Mapping[str, Any]


class SchemaFiller:
    """Fills one schema; ``root`` is where local ``$ref`` pointers resolve."""

    def __init__(self, root: Schema, rng: random.Random) -> None:
        self._root = root
        self._rng = rng
        self._fillers: dict[str, Callable[[Schema, int], Any]] = {
            "object": self._object,
            "array": self._array,
            "string": self._string,
            "integer": self._integer,
            "number": self._number,
            "boolean": lambda _schema, _depth: self._rng.random() < 0.5,
            "null": lambda _schema, _depth: None,
        }

    def fill(self, schema: Any, depth: int = 0) -> Any:
        """A value valid against ``schema``."""
        if not isinstance(schema, Mapping):
            return None if schema is False else self._words(1, 3)
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if schema.get("enum"):
            return copy.deepcopy(self._rng.choice(list(schema["enum"])))
        return self._fillers[_type_of(schema)](schema, depth)

    def _resolve(self, schema: Schema, depth: int) -> Schema:
        """Replace ``$ref``, ``anyOf``/``oneOf`` and ``allOf`` with one plain schema."""
        for _ in range(MAX_DEPTH * 4):
            if "$ref" in schema:
                rest = {key: value for key, value in schema.items() if key != "$ref"}
                schema = {**self._pointer(str(schema["$ref"])), **rest}
            elif schema.get("anyOf") or schema.get("oneOf"):
                key = "anyOf" if schema.get("anyOf") else "oneOf"
                rest = {k: v for k, v in schema.items() if k != key}
                schema = _merge(rest, self._resolve(schema[key][0], depth))
            elif schema.get("allOf"):
                merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    merged = _merge(merged, self._resolve(part, depth))
                schema = merged
            else:
                return schema
        return schema

    def _pointer(self, ref: str) -> Schema:
        if not ref.startswith("#"):
            return {}
        node: Any = self._root
        for raw in ref[1:].lstrip("/").split("/") if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}

    def _object(self, schema: Schema, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        value: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or depth < MAX_DEPTH:
                value[name] = self.fill(sub, depth + 1)
        for name in required - value.keys():
            value[name] = self._words(1, 3)
        extra = schema.get("additionalProperties", True) is not False
        while extra and len(value) < int(schema.get("minProperties", 0)):
            value[f"extra_{len(value)}"] = self.fill(schema.get("additionalProperties"), depth + 1)
        return value

    def _array(self, schema: Schema, depth: int) -> list[Any]:
        prefix = list(schema.get("prefixItems") or [])
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4..2019 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        count = low if depth >= MAX_DEPTH else self._rng.randint(max(low, min(1, high)), high)
        count = max(count, min(len(prefix), high))
        value: list[Any] = []
        seen: set[str] = set()
        for attempt in range(count * 5 + len(prefix)):
            if len(value) >= count:
                break
            sub = prefix[len(value)] if len(value) < len(prefix) else items
            element = self.fill(sub, depth + 1)
            key = repr(element)
            if schema.get("uniqueItems") and key in seen and attempt < count * 5 - 1:
                continue
            seen.add(key)
            value.append(element)
        return value

    def _string(self, schema: Schema, depth: int) -> str:
        low = int(schema.get("minLength", 0))
        high = int(schema.get("maxLength", max(low, 200)))
        text = _FORMATS.get(str(schema.get("format", ""))) or self._words(2, 12)
        while len(text) < low:
            text = f"{text} {self._words(1, 4)}"
        return text[:high].rstrip() if len(text[:high].rstrip()) >= low else text[:high]

    def _integer(self, schema: Schema, depth: int) -> int:
        low, high = _bounds(schema)
        first = math.ceil(low) if low is not None else None
        last = math.floor(high) if high is not None else None
        if _exclusive(schema, "Minimum") and first is not None and first == low:
            first += 1
        if _exclusive(schema, "Maximum") and last is not None and last == high:
            last -= 1
        span = _span(first, last)
        first, last = int(span[0]), int(span[1])
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            k_first, k_last = -(-first // step), last // step
            if k_first <= k_last:
                return self._rng.randint(k_first, k_last) * step
        return self._rng.randint(first, last) if first <= last else first

    def _number(self, schema: Schema, depth: int) -> float | int:
        low, high = _bounds(schema)
        if isinstance(schema.get("multipleOf"), int):
            return self._integer(schema, depth)
        first, last = _span(low, high)
        if first >= last:
            return first
        fraction = self._rng.uniform(0.1, 0.9)
        value = first + (last - first) * fraction
        rounded = round(value, 2)
        return rounded if first < rounded < last else value

    def _words(self, low: int, high: int) -> str:
        return " ".join(self._rng.choices(WORDS, k=self._rng.randint(low, high)))


def _type_of(schema: Schema) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        named = [kind for kind in declared if kind != "null"] or ["null"]
        declared = named[0]
    if isinstance(declared, str) and declared in _TYPES:
        return declared
    hints = (
        ("object", ("properties", "required", "additionalProperties")),
        ("array", ("items", "prefixItems", "minItems", "maxItems")),
        ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")),
    )
    for kind, keys in hints:
        if any(key in schema for key in keys):
            return kind
    return "string"


def _exclusive(schema: Schema, which: str) -> bool:
    """Whether the bound is exclusive: draft 4 uses a boolean next to minimum/maximum."""
    flag = schema.get(f"exclusive{which}")
    return flag is True or (isinstance(flag, int | float) and not isinstance(flag, bool))


def _bounds(schema: Schema) -> tuple[float | None, float | None]:
    """Lowest and highest allowed values; exclusive bounds are returned as-is (see _exclusive)."""
    found: list[float | None] = []
    for which in ("Minimum", "Maximum"):
        key = which.lower()
        exclusive = schema.get(f"exclusive{which}")
        values = [schema[key]] if isinstance(schema.get(key), int | float) else []
        if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
            values.append(exclusive)
        pick = max if which == "Minimum" else min
        found.append(pick(values) if values else None)
    return found[0], found[1]


def _span(low: float | None, high: float | None) -> tuple[float, float]:
    """Close open ends of a range ``_DEFAULT_SPAN`` away from the other end (or 0..span)."""
    if low is None:
        return (0, _DEFAULT_SPAN) if high is None else (high - _DEFAULT_SPAN, high)
    return (low, low + _DEFAULT_SPAN) if high is None else (low, high)


def _merge(base: Schema, extra: Schema) -> dict[str, Any]:
    """Shallow merge of two schemas; properties merged and required lists joined."""
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def fill_schema(schema: Schema, rng: random.Random) -> Any:
    """A JSON value valid against ``schema`` (see the module docstring for what is supported)."""
    return SchemaFiller(schema, rng).fill(schema)

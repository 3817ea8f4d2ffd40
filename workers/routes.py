"""Routing modes of a batch (see :mod:`workers.dispatch`)."""

from __future__ import annotations

from enum import StrEnum


class Route(StrEnum):
    SHARED = "shared"
    ROUND_ROBIN = "round-robin"
    PINNED = "pinned"

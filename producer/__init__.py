"""vfleet's producer: the ``vfleet`` command line and the Python API.

``from producer import submit`` is :func:`producer.api.submit` (imported on first use, so
the command line does not pay for it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BatchHandle", "submit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from producer import api

        return getattr(api, name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")

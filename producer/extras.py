"""Optional dependencies: imported when a feature needs them, with a one-line error naming
the extra that installs them when they are missing.

``pip install 'vfleet[parquet]'`` brings pyarrow (Parquet in and out), ``vfleet[pandas]``
pandas and pyarrow (DataFrames in, :meth:`producer.api.BatchHandle.to_pandas` out).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from producer.errors import MissingExtraError

PARQUET = "parquet"
PANDAS = "pandas"


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` saying that ``what`` (e.g.
    "reading Parquet") needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.partition(".")[0]
        raise MissingExtraError(
            f"{what} needs {top}, which is not installed: pip install 'vfleet[{extra}]'"
        ) from e

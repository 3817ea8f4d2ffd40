"""The errors of the benchmark harness.

::

    OpsError
    └── BenchError               a benchmark could not run or finish (ops.bench)
        ├── BenchSetupError      a service, worker or input could not be prepared
        └── BenchRunError        a run failed or did not finish in its time limit
"""

from __future__ import annotations

from ops.errors import OpsError


class BenchError(OpsError):
    """Root of the benchmark harness's errors."""


class BenchSetupError(BenchError):
    """Redis, the simulators, the workers or the input could not be prepared."""


class BenchRunError(BenchError):
    """A run failed, or did not finish within its time limit."""

"""Benchmarks of vfleet against the seeds' thread-pool approach and the fleet's capacity.

``run(options)`` starts its own Redis, simulated vLLM fleets and vfleet workers (through the
``vfleet`` CLI, in subprocesses: ``ops`` imports neither ``workers`` nor ``producer``), runs
the same records through every mode and scenario, runs the enqueue benchmark, and writes
``BENCHMARKS.md``, ``bench-*.png`` and ``bench-results.json`` into ``options.output_dir``.
``vfleet bench`` and ``python -m ops.bench`` are its command line.

Importing this package is cheap on purpose (the ``vfleet`` CLI registers ``bench`` on every
start): the harness, ``openai``, ``matplotlib`` and ``psutil`` load only when ``run`` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ops.bench.config import BenchOptions
from ops.bench.errors import BenchError, BenchRunError, BenchSetupError

if TYPE_CHECKING:
    from ops.bench.run import BenchSummary


def run(options: BenchOptions, **kwargs: Any) -> BenchSummary:
    """Run the benchmark; see :func:`ops.bench.run.run`."""
    from ops.bench.run import run as run_bench

    return run_bench(options, **kwargs)


__all__ = ["BenchError", "BenchOptions", "BenchRunError", "BenchSetupError", "BenchSummary", "run"]

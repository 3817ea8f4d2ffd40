"""Real ``vfleet`` processes released at once, for race tests.

The processes import vfleet (and what the store needs) first and then wait for a start
file, so that they all reach the contended step within milliseconds of each other (a
cold start takes a second or more, which would spread them out); then each runs the real
CLI, ``producer.cli.run``, and exits with its code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.services import ROOT

DRIVER = """
import os, sys, time
from producer.cli import run
import alembic.command, sqlalchemy, workers.store.ledger, workers.store.migrate  # imported now
import producer.enqueue, workers.store.intake
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
sys.exit(run(sys.argv[3:]))
"""


def run_together(
    tmp: Path, env: dict[str, str], argvs: list[list[str]], timeout: float = 180
) -> list[subprocess.CompletedProcess[str]]:
    """Start one process per argv, release them at once, and wait for all."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs, readies = [], []
    for n, argv in enumerate(argvs):
        ready = tmp / f"{go.name}-ready-{n}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(ready), str(go), *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, "the processes never got ready"
            assert all(p.poll() is None for p in procs), "a process died before the start"
            time.sleep(0.02)
        go.touch()
        results = []
        for p, argv in zip(procs, argvs, strict=True):
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

"""``vfleet bench --quick`` end to end: it runs, writes its report and plots, loses nothing.

Only that the harness works is checked, never a speed: the machine running the tests is
shared and its figures are noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.redis_server import redis_server_binary
from tests.services import missing, vfleet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_quick_bench_writes_report_and_plots_and_vfleet_loses_nothing(tmp_path: Path) -> None:
    if redis_server_binary() is None:
        missing("redis-server is not installed")
    out = tmp_path / "docs"
    out.mkdir()
    done = vfleet(
        "bench", "--quick", "--output", str(out), "--workdir", str(tmp_path / "work"),
        timeout=840,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    report = (out / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert report.startswith("# Benchmarks\n")
    assert "| target | measured |" in report
    for name in ("bench-completions-failure.png", "bench-instance-share.png"):
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in report

    doc = json.loads((out / "bench-results.json").read_text(encoding="utf-8"))
    modes = {run["mode"]: run for run in doc["runs"]}
    assert set(modes) == {"vfleet-shared", "vfleet-rr", "seeds-a", "seeds-b", "ideal"}
    for mode in ("vfleet-shared", "vfleet-rr"):
        tally = modes[mode]["tally"]
        assert tally["lost"] == 0, (mode, tally)
        assert tally["duplicated"] == 0, (mode, tally)
        assert tally["ok"] + tally["failed"] == modes[mode]["records"], (mode, tally)
    assert doc["enqueue"]["vfleet"]["items"] > 0

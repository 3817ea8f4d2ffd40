"""The ledger-at-scale benchmark's report: its section of docs/BENCHMARKS.md is replaced
in place or appended, and the other sections are left as they were."""

from __future__ import annotations

import pytest

from ops.bench.ledger_scale import SECTION, Measure, SizeResult, replace_section, section

pytestmark = pytest.mark.timeout(30)

DOC = "# Benchmarks\n\n## Enqueue\n\nfigures\n\n## Simulator\n\nmore figures\n"


def _result(records: int, export_rss: float) -> SizeResult:
    r = SizeResult(records, build_s=1.0, build_rss_mb=90.0, db_mb=1.5)
    r.commands = {
        "status": Measure(0.8, 70.0),
        "status --json": Measure(0.9, 71.0),
        "export": Measure(2.0, export_rss),
    }
    r.status_reads_s, r.reconcile_s, r.republished = 0.05, 0.02, 100
    return r


def _section(*results: SizeResult, database: str = "SQLite (WAL)") -> str:
    meta = dict.fromkeys(("command", "machine", "load_start", "load_end"), "x")
    return section(list(results), {**meta, "database": database, "date": "d", "repeat": "3"})


def test_the_section_is_appended_at_the_end_then_its_run_replaced_in_place() -> None:
    first = replace_section(DOC, _section(_result(10, 80.0)))
    assert first.startswith(DOC.rstrip("\n") + "\n\n" + SECTION + "\n")
    again = replace_section(first, _section(_result(10, 80.0), _result(1000, 81.0)))
    assert again.count(SECTION) == 1 and again.count("### SQLite (WAL)") == 1
    assert again.startswith(DOC.rstrip("\n")) and "| 1,000 |" in again


def test_another_databases_run_is_kept_and_so_is_what_follows() -> None:
    doc = (
        f"# Benchmarks\n\n{SECTION}\n\nintro\n\n### PostgreSQL\n\nold pg\n\n"
        "### SQLite (WAL)\n\nold sqlite\n\n## Simulator\n\nlast\n"
    )
    out = replace_section(doc, _section(_result(30, 80.0), database="PostgreSQL"))
    assert "old pg" not in out and "| 30 |" in out
    assert "intro" in out and "old sqlite" in out
    assert out.index("### PostgreSQL") < out.index("### SQLite (WAL)")
    assert out.endswith("old sqlite\n\n## Simulator\n\nlast\n")


def test_targets_say_met_or_not_with_the_figure() -> None:
    text = _section(_result(10, 80.0), _result(1_000_000, 200.0))
    assert "under 1 s on 1,000,000 records: **met** (0.80 s)" in text
    assert "flat memory: **not met** (peak RSS 80 MB on 10 records, 200 MB" in text

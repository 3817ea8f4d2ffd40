"""The cost of the ledger as a batch grows: ``vfleet status``, ``vfleet export`` and one
reconcile round on batches of 10^4, 10^5 and 10^6 stored records.

Reproduce: ``python -m ops.bench.ledger_scale --sizes 10000,100000,1000000
--out docs/BENCHMARKS.md`` (add ``--database-url postgresql+psycopg://HOST:5432/DB`` for
PostgreSQL: each size gets a scratch database created there and dropped after).

Per size, on a fresh ledger: ``python -m producer.bench_ledger build`` stores the batch
through the production intake and gives it a realistic mix (95% succeeded with a result,
4% failed, 1% queued, 100 of those published an hour ago with no message); then each
command runs as a child process of its own, timed from spawn to exit with its peak RSS
read from ``wait4``: ``vfleet status B``, ``vfleet status B --json``, ``vfleet export B -o
out.jsonl``; then ``python -m producer.bench_ledger reconcile`` times one
:meth:`Feeder.reconcile` round in-process against a private Redis. The figures are warm
(the database file sits in the page cache after the build); each command runs
``--repeat`` times and the table shows the fastest run and the highest peak RSS.

``ops/`` imports nothing of ours, so what needs the ledger's code in-process
(the build, the reconcile round) runs as ``producer.bench_ledger``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.redis_server import RedisServer

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_REPEAT = 3
SECTION = "## Ledger at scale"
STATUS_TARGET_S = 1.0
COMMAND_TIMEOUT = 3600.0
REPRODUCE = "python -m ops.bench.ledger_scale --sizes {sizes} --out docs/BENCHMARKS.md"


class LedgerScaleError(RuntimeError):
    """A child process of the benchmark failed."""


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_rss_mb: float


@dataclass
class SizeResult:
    records: int
    build_s: float = 0.0
    build_rss_mb: float = 0.0
    db_mb: float = 0.0
    commands: dict[str, Measure] = field(default_factory=dict)
    export_bytes: int = 0
    status_reads_s: float = 0.0
    reconcile_s: float = 0.0
    republished: int = 0


def run_measured(argv: Sequence[str], *, env: dict[str, str], stdout: Path) -> Measure:
    """Run ``argv`` to completion; its wall time and peak RSS (``wait4``'s ``ru_maxrss``).
    Raises :class:`LedgerScaleError` if it exits non-zero."""
    err = stdout.with_suffix(".err")
    with stdout.open("wb") as out, err.open("wb") as errfh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=errfh)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise LedgerScaleError(
            f"{' '.join(argv)} exited {proc.returncode}: {err.read_text(errors='replace')[-2000:]}"
        )
    return Measure(seconds, usage.ru_maxrss / 1024)  # Linux: kilobytes


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


@contextlib.contextmanager
def scratch_database(base_url: str | None, workdir: Path, records: int) -> Iterator[str]:
    """A fresh ledger URL for one size, removed afterwards: an SQLite file in ``workdir``,
    or a database created on the PostgreSQL server of ``base_url``."""
    if not base_url or base_url.startswith("sqlite"):
        path = workdir / f"ledger-{records}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    name = f"vfleet_ledger_scale_{os.getpid()}_{records}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _db_mb(url: str) -> float:
    """The ledger's size on disk: the SQLite file and its WAL, or the PostgreSQL database."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        files = [Path(f"{path}{s}") for s in ("", "-wal")]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
    finally:
        engine.dispose()
    return int(size or 0) / 1e6


def measure_size(records: int, *, base_url: str | None, workdir: Path, repeat: int) -> SizeResult:
    """Build a batch of ``records`` records on a scratch ledger and measure the commands."""
    result = SizeResult(records)
    batch = f"scale-{records}"
    with scratch_database(base_url, workdir, records) as url:
        env = {**os.environ, "VFLEET_DATABASE_URL": url}
        env.pop("VFLEET_FLEET_FILE", None)
        log = workdir / f"build-{records}.json"
        build = ("-m", "producer.bench_ledger", "build", "--database-url", url)
        m = run_measured(
            _python(*build, "--records", str(records), "--batch", batch), env=env, stdout=log
        )
        result.build_s, result.build_rss_mb = m.seconds, m.peak_rss_mb
        result.db_mb = _db_mb(url)
        vfleet = ("-m", "producer")
        out = workdir / "out.jsonl"
        commands = {
            "status": (*vfleet, "status", batch),
            "status --json": (*vfleet, "status", batch, "--json"),
            "export": (*vfleet, "export", batch, "-o", str(out)),
        }
        for name, argv in commands.items():
            runs = [
                run_measured(_python(*argv), env=env, stdout=workdir / "cmd.out")
                for _ in range(repeat)
            ]
            result.commands[name] = Measure(
                min(r.seconds for r in runs), max(r.peak_rss_mb for r in runs)
            )
            print(f"  {records:>9,} {name:<14} {result.commands[name]}", file=sys.stderr)
        result.export_bytes = out.stat().st_size
        out.unlink()
        with RedisServer() as redis_server:  # fresh: the round publishes what it finds
            argv = ("-m", "producer.bench_ledger", "measure", "--database-url", url)
            argv += ("--broker-url", redis_server.url, "--batch", batch)
            rec_log = workdir / f"measure-{records}.json"
            run_measured(_python(*argv), env=env, stdout=rec_log)
        figures = json.loads(rec_log.read_text())
        result.status_reads_s = figures["status_reads_s"]
        result.reconcile_s, result.republished = figures["reconcile_s"], figures["republished"]
    return result


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def table(results: Sequence[SizeResult]) -> list[str]:
    head = (
        "| records | build | ledger size | `status` | `status --json` | its ledger reads "
        "| `export` (jsonl) | export peak RSS | `status` peak RSS | reconcile round |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        c = r.commands
        size = f"{r.db_mb:,.0f} MB"
        lines.append(
            f"| {r.records:,} | {r.build_s:.0f} s | {size} | {c['status'].seconds:.2f} s "
            f"| {c['status --json'].seconds:.2f} s | {r.status_reads_s * 1000:.0f} ms "
            f"| {c['export'].seconds:.1f} s ({r.export_bytes / 1e6:,.0f} MB) "
            f"| {c['export'].peak_rss_mb:.0f} MB | {c['status'].peak_rss_mb:.0f} MB "
            f"| {r.reconcile_s * 1000:.0f} ms ({r.republished} re-published) |"
        )
    return lines


def targets(results: Sequence[SizeResult]) -> list[str]:
    if not results:
        return []
    big, small = results[-1], results[0]
    st = big.commands["status"].seconds
    grow = big.commands["export"].peak_rss_mb - small.commands["export"].peak_rss_mb
    flat = grow < 0.1 * small.commands["export"].peak_rss_mb
    return [
        f"- `vfleet status` under {STATUS_TARGET_S:.0f} s on {big.records:,} records: "
        f"**{'met' if st < STATUS_TARGET_S else 'not met'}** ({st:.2f} s).",
        f"- `vfleet export` at flat memory: **{'met' if flat else 'not met'}** "
        f"(peak RSS {small.commands['export'].peak_rss_mb:.0f} MB on {small.records:,} "
        f"records, {big.commands['export'].peak_rss_mb:.0f} MB on {big.records:,}).",
    ]


INTRO = (
    "One batch per size on a fresh ledger, stored through the production intake and given "
    "a realistic mix (95% succeeded with a result, 4% failed, 1% queued; 100 of the queued "
    "stamped published an hour ago with no message, for the reconciler). Each command is a "
    "child process timed from spawn to exit, Python start-up and imports included, the "
    "fastest of `--repeat` runs, peak RSS from `wait4`; the database is warm in the page "
    "cache. *its ledger reads* is what `status --json` reads from the ledger "
    "(`batch_progress`), timed in-process: the rest of a command's time is the interpreter "
    "and its imports (the 10,000 row is about that floor). *reconcile round* is one "
    "`Feeder.reconcile()` in-process against a private Redis."
)


def section(results: Sequence[SizeResult], meta: dict[str, str]) -> str:
    """The subsection of one run: ``### <database>``, how to reproduce it, the table and
    the targets."""
    lines = [
        f"### {meta['database']}",
        "",
        f"Reproduce: `{meta['command']}` (machine: {meta['machine']}; load average "
        f"{meta['load_start']} at the start and {meta['load_end']} at the end, the box being "
        f"shared; fastest of {meta['repeat']} runs; measured {meta['date']}).",
        "",
        *table(results),
        "",
        *targets(results),
        "",
    ]
    return "\n".join(lines)


def _block_end(doc: str, start: int, prefixes: tuple[str, ...]) -> int:
    """Where the block that starts at ``start`` ends: the next line that starts with one
    of ``prefixes``, or the end of ``doc``."""
    ends = [i + 1 for p in prefixes if (i := doc.find(f"\n{p}", start + 1)) >= 0]
    return min(ends, default=len(doc))


def replace_section(doc: str, text: str) -> str:
    """``doc`` with ``text`` (a ``### <database>`` subsection) in its ``## Ledger at scale``
    section: replacing the subsection of the same database, else after the others; the
    section is appended at the end of ``doc`` if it has none. Nothing else changes."""
    body = text.rstrip("\n") + "\n"
    at = doc.find(f"\n{SECTION}\n")
    if at < 0 and not doc.startswith(f"{SECTION}\n"):
        head = f"{SECTION}\n\n{INTRO}\n\n{body}"
        return doc.rstrip("\n") + "\n\n" + head if doc.strip() else head
    start = at + 1
    end = _block_end(doc, start, ("## ",))
    part = doc[start:end]
    heading = body.split("\n", 1)[0] + "\n"
    sub = part.find(f"\n{heading}")
    if sub < 0:
        part = part.rstrip("\n") + "\n\n" + body
    else:
        sub_end = _block_end(part, sub + 1, ("### ", "## "))
        part = part[: sub + 1] + body + ("\n" + part[sub_end:] if sub_end < len(part) else "")
    tail = doc[end:]
    return doc[:start] + part.rstrip("\n") + "\n" + ("\n" + tail if tail else "")


def _machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.ledger_scale")
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES))
    parser.add_argument(
        "--database-url",
        default=None,
        help="sqlite (default: files in a temporary folder) or a PostgreSQL URL whose "
        "server gets one scratch database per size, dropped after",
    )
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to update")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    load_start = _load()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vfleet-ledger-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in sizes:
            print(f"{n:,} records (load {_load()})", file=sys.stderr)
            results.append(
                measure_size(n, base_url=args.database_url, workdir=workdir, repeat=args.repeat)
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    backend = (args.database_url or "sqlite").split(":", 1)[0].split("+", 1)[0]
    meta = {
        "command": REPRODUCE.format(sizes=",".join(str(n) for n in sizes))
        + (" --database-url postgresql+psycopg://HOST/DB" if backend == "postgresql" else ""),
        "machine": _machine(),
        "database": "PostgreSQL" if backend == "postgresql" else "SQLite (WAL)",
        "load_start": load_start,
        "load_end": _load(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "repeat": str(args.repeat),
    }
    text = section(results, meta)
    print(text)
    if args.out is not None:
        doc = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        args.out.write_text(replace_section(doc, text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``vfleet demo``: the whole pipeline on one machine, on embedded defaults.

It starts (or finds) Redis, serves 4 simulated vLLM instances, runs one Celery worker per
instance, enqueues the bundled sample dataset with the ``judge`` spec, shows live
progress, prints a summary and stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from ops.redis_server import RedisServer, redis_server_binary
from ops.sim.launcher import SimFleet
from producer.context import Context
from producer.enqueue import EnqueueOptions, enqueue
from producer.export import export_batch
from producer.progress import BatchProgress
from producer.sources import file_source
from producer.supervise import ProcessGroup, settings_env, vfleet_argv, wait_for_workers
from producer.views import follow
from workers.errors import ConfigError
from workers.fleet import InstanceConfig
from workers.settings import DEFAULT_BROKER_URL, Settings

logger = logging.getLogger(__name__)

DEMO_MODEL = "sim-model"
DEMO_BATCH = "demo-judge"
DEFAULT_DEMO_CONCURRENCY = 16
DEFAULT_DEMO_TIMEOUT = 600.0
SIM_ARGS = (
    "--model",
    DEMO_MODEL,
    "--max-num-seqs",
    str(DEFAULT_DEMO_CONCURRENCY),
    "--ttft",
    "0.15",
    "--itl",
    "0.008",
    "--seed",
    "7",
)


def sample_dataset() -> Path:
    """The bundled sample records (questions with candidate answers to judge)."""
    return Path(str(files("producer") / "data" / "sample_records.jsonl"))


@dataclass(frozen=True)
class DemoResult:
    progress: BatchProgress
    wall_seconds: float
    export_path: Path
    workdir: Path


def _reachable(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def find_broker(stack: ExitStack) -> str:
    """A Redis URL for the demo: ``VFLEET_BROKER_URL`` if set, else a private redis-server,
    else a Redis on localhost. Raises :class:`ConfigError` with how to get one."""
    configured = os.environ.get("VFLEET_BROKER_URL")
    if configured:
        if not _reachable(configured):
            raise ConfigError(f"VFLEET_BROKER_URL={configured} does not answer PING")
        return configured
    if redis_server_binary() is not None:
        return stack.enter_context(RedisServer()).url
    if _reachable(DEFAULT_BROKER_URL):
        return DEFAULT_BROKER_URL
    raise ConfigError(
        "the demo needs Redis: install redis-server (apt-get install "
        "redis-server, brew install redis) or set VFLEET_BROKER_URL"
    )


def write_fleet(path: Path, instances: list[InstanceConfig]) -> None:
    lines = ["# written by `vfleet demo`: simulated vLLM instances", ""]
    for i in instances:
        lines += [
            "[[instances]]",
            f'name = "{i.name}"',
            f'base_url = "{i.base_url}"',
            f'model = "{i.model}"',
            f"concurrency = {i.concurrency}",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _prepare_workdir(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    for name in ("vfleet.db", "vfleet.db-wal", "vfleet.db-shm"):
        (workdir / name).unlink(missing_ok=True)
    return workdir


def run_demo(
    workdir: Path,
    *,
    instances: int,
    records: Path | None = None,
    console: Console,
    timeout: float = DEFAULT_DEMO_TIMEOUT,
) -> DemoResult:
    """Run the demo end to end; returns what the summary needs."""
    workdir = _prepare_workdir(workdir.resolve())
    with ExitStack() as stack:
        broker = find_broker(stack)
        console.print(f"[bold]broker[/] {broker}")
        sims = stack.enter_context(
            SimFleet(
                instances=instances, extra_args=SIM_ARGS, log_path=workdir / "logs" / "sim.log"
            )
        )
        fleet = [
            InstanceConfig(
                name=f"sim-{n + 1}",
                base_url=url,
                model=DEMO_MODEL,
                concurrency=DEFAULT_DEMO_CONCURRENCY,
            )
            for n, url in enumerate(sims.urls)
        ]
        write_fleet(workdir / "fleet.toml", fleet)
        console.print(
            f"[bold]fleet[/] {len(fleet)} simulated vLLM instances: " + ", ".join(sims.urls)
        )
        settings = Settings(
            broker_url=broker,
            database_url=f"sqlite:///{workdir}/vfleet.db",
            fleet_file=workdir / "fleet.toml",
        )
        context = Context(settings)
        stack.callback(context.close)
        context.ledger  # noqa: B018 (the schema exists before the workers start)
        group = stack.enter_context(ProcessGroup())
        env = settings_env(settings)
        for inst in fleet:
            group.start(
                inst.name,
                vfleet_argv("worker", "--instance", inst.name),
                env=env,
                log=workdir / "logs" / f"worker-{inst.name}.log",
            )
        console.print(
            f"[bold]workers[/] {len(fleet)} Celery workers (threads pool, "
            f"concurrency {DEFAULT_DEMO_CONCURRENCY} each)"
        )
        ready = wait_for_workers(context.celery, len(fleet))
        console.print(f"[bold]workers[/] {ready} of {len(fleet)} answer a ping")
        source = records or sample_dataset()
        started = time.monotonic()
        options = EnqueueOptions(batch=DEMO_BATCH, spec="judge", model=DEMO_MODEL, key="id")
        report = enqueue(context, file_source(source), options)
        console.print(
            f"[bold]enqueued[/] {report.added} records of {source.name} "
            f"(published {report.published_now}), judging..."
        )
        (progress,) = follow(
            context.ledger, [report.batch], console=console, refresh=0.5, timeout=timeout
        )
        wall = time.monotonic() - started
        export_path = workdir / "results.jsonl"
        export_batch(context.ledger, report.batch, export_path)
        if not progress.complete:
            raise ConfigError(f"demo did not finish in {timeout:.0f}s; logs in {workdir}/logs")
    return DemoResult(progress, wall, export_path, workdir)


def print_summary(result: DemoResult, console: Console) -> None:
    p = result.progress
    console.print()
    console.print(
        f"[bold green]done[/] {p.counts['succeeded']} succeeded, "
        f"{p.counts['failed']} failed of {p.total} records in "
        f"{result.wall_seconds:.1f}s ({p.total / result.wall_seconds:.1f} records/s)"
    )
    table = Table("instance", "records", "share", title="per instance")
    for inst, per in sorted(p.instances.items()):
        n = sum(per.values())
        table.add_row(inst, str(n), f"{100 * n / max(1, p.total):.0f}%")
    console.print(table)
    scores: Counter[int] = Counter()
    examples: list[dict[str, Any]] = []
    with result.export_path.open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out = rec.get("output") or {}
            if "score" in out:
                scores[int(out["score"])] += 1
                if len(examples) < 3:
                    examples.append(rec)
    console.print("scores: " + ", ".join(f"{s}: {n}" for s, n in sorted(scores.items())))
    for rec in examples:
        q = rec["input"]["question"]
        console.print(f"  [dim]{rec['key']}[/] {q[:70]}{'...' if len(q) > 70 else ''}")
        console.print(
            f"    score {rec['output']['score']}: {str(rec['output'].get('reasoning', ''))[:90]}"
        )
    console.print(f"results: {result.export_path}")
    console.print(
        f"inspect: VFLEET_DATABASE_URL=sqlite:///{result.workdir}/vfleet.db "
        "vfleet status demo-judge"
    )

"""``vfleet worker`` (one instance) and ``vfleet workers`` (the whole fleet)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from producer.context import Context
from producer.supervise import (
    ProcessGroup,
    Supervisor,
    TerminateOnSignal,
    settings_env,
    vfleet_argv,
)


def worker(
    ctx: typer.Context,
    instance: Annotated[str, typer.Option(help="Instance name from the fleet file.")],
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Requests in flight (default: the instance's concurrency)."),
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker bound to one instance: threads pool, its model's shared queue
    and its own pinned queue, named INSTANCE@host. SIGTERM stops it within the shutdown
    grace, giving back what it holds."""
    from workers.worker_main import run_worker

    c: Context = ctx.obj
    inst = c.fleet.instance(instance)
    run_worker(
        c.settings, c.fleet, inst, concurrency=concurrency or inst.concurrency, loglevel=loglevel
    )


def workers(ctx: typer.Context) -> None:
    """Start one worker per instance of the fleet file and keep them running: a worker that
    dies is started again (backoff from 1 s doubling to 60 s, a log line saying why).
    Ctrl-C or SIGTERM stops them all."""
    c: Context = ctx.obj
    c.settings.check()
    env = settings_env(c.settings)
    with TerminateOnSignal(), ProcessGroup() as group:
        supervisor = Supervisor(group)
        for inst in c.fleet.instances:
            supervisor.start(inst.name, vfleet_argv("worker", "--instance", inst.name), env=env)
        typer.echo(f"started {len(group.procs)} workers; Ctrl-C stops them", err=True)
        try:
            while True:
                supervisor.poll()
                time.sleep(0.5)
        except KeyboardInterrupt:
            typer.echo("stopping workers...", err=True)
        codes = group.stop()
    failed = {n: code for n, code in codes.items() if code not in (0, -15)}
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("workers")(workers)

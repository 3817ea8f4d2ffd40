"""``vfleet gpu``, ``vfleet vllm``, ``vfleet discover``, ``vfleet beat``, ``vfleet scan-worker``.

The views read the latest snapshots the beat's scans stored; ``--live`` scans now (and
stores what it saw) instead. SSH honours ``~/.ssh/config`` and known_hosts (see
:mod:`ops.ssh`); ``--accept-new-host-keys`` records keys of hosts seen for the first time.

Exit codes: 0 when every host (``gpu``, ``discover``) or instance (``vllm``) answered,
:data:`EXIT_SOME_FAILED` (3) when some did not (the rest is printed all the same), and the
CLI's usual 1 (a vfleet error), 2 (bad usage), 130 (interrupted).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.table import Table

from producer.context import Context

if TYPE_CHECKING:
    from ops.discover import FoundServer
    from ops.ssh.pool import SSHPool
    from workers.scan.runtime import ScanRuntime
    from workers.settings import Settings

DEFAULT_WATCH_INTERVAL = 2.0
DEFAULT_PORTS = "8000-8010"
EXIT_SOME_FAILED = 3
# `vllm --live` with no recent snapshot to measure token rates against reads the counters
# again this much later, so the rates it shows are this moment's.
LIVE_RATE_GAP = 1.0

SshConfigOpt = Annotated[
    Path | None,
    typer.Option("--ssh-config", envvar="VFLEET_SSH_CONFIG", help="ssh_config file to honour."),
]
KnownHostsOpt = Annotated[
    Path | None,
    typer.Option("--known-hosts", envvar="VFLEET_KNOWN_HOSTS", help="known_hosts file."),
]
AcceptNewOpt = Annotated[
    bool | None,
    typer.Option(
        "--accept-new-host-keys",
        envvar="VFLEET_ACCEPT_NEW_HOST_KEYS",
        help="Record host keys of hosts seen for the first time (changed keys stay refused).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LiveOpt = Annotated[bool, typer.Option("--live", help="Scan now (and store) instead of reading.")]
WatchOpt = Annotated[bool, typer.Option("--watch", "-w", help="Redraw until Ctrl-C.")]
IntervalOpt = Annotated[
    float, typer.Option("--interval", min=0.1, help="Seconds between redraws with --watch.")
]
CountOpt = Annotated[int, typer.Option("--watch-count", hidden=True, min=0)]


def _settings(
    c: Context,
    ssh_config: Path | None,
    known_hosts: Path | None,
    accept: bool | None,
    *,
    view: bool = True,
) -> Settings:
    """The command's settings: the root's, with its SSH flags on top."""
    # paramiko logs a traceback for every host that fails; our per-host errors say it once.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    # A view prints every failed host itself; the scans' warnings would say it twice.
    if view and logging.getLogger().level > logging.INFO:
        logging.getLogger("workers.scan").setLevel(logging.ERROR)
    return c.settings.with_overrides(
        ssh_config=ssh_config, known_hosts=known_hosts, accept_new_host_keys=accept
    )


def _runtime(c: Context, settings: Settings, *, redis: bool = False) -> ScanRuntime:
    import redis as redis_lib

    from workers.scan.runtime import ScanRuntime, build_ssh_pool

    client = redis_lib.Redis.from_url(c.settings.broker_url) if redis else None
    return ScanRuntime(
        settings, c.fleet, c.ledger.engine, build_ssh_pool(settings, c.fleet), client
    )


@contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr while a live scan runs (only on a terminal)."""
    if not sys.stderr.isatty() or total == 0:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)


def _show(
    render: Callable[[int], tuple[Any, RenderableType, bool]],
    *,
    as_json: bool,
    watch: bool,
    interval: float,
    count: int,
) -> bool:
    """Print once (JSON or a table), or redraw every ``interval`` until Ctrl-C. ``render``
    takes the console width and returns (data, table, all answered); returns the last
    "all answered"."""
    console = Console()
    if not watch:
        data, table, fine = render(console.width)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        else:
            console.print(table)
        return fine
    from rich.live import Live

    shown = 0
    fine = True
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                data, table, fine = render(console.width)
                if as_json:
                    live.console.print_json(json.dumps(data, default=str))
                else:
                    live.update(table, refresh=True)
                shown += 1
                if count and shown >= count:
                    return fine
                time.sleep(interval)
    except KeyboardInterrupt:
        return fine


def _exit(fine: bool) -> None:
    if not fine:
        raise typer.Exit(EXIT_SOME_FAILED)


def gpu(
    ctx: typer.Context,
    hosts: Annotated[list[str] | None, typer.Argument(help="Hosts (default: the fleet's).")] = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    live: LiveOpt = False,
    interval: IntervalOpt = DEFAULT_WATCH_INTERVAL,
    history: Annotated[int | None, typer.Option(min=1, help="Scans in the sparkline.")] = None,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
    watch_count: CountOpt = 0,
) -> None:
    """GPUs per host, idle ones first: state, utilisation, memory, processes, history.

    A GPU is idle when its utilisation is below VFLEET_IDLE_UTILIZATION (5%), its memory
    use below VFLEET_IDLE_MEMORY (5%) and it runs no compute process, in each of the last
    VFLEET_IDLE_SCANS (3) scans. Until that many scans agree it shows as "idle? N/3"; a
    reading nvidia-smi could not give ([Unknown Error], [N/A], MIG) is "unknown", never
    idle. A host that could not be read says why: UNREACHABLE, HOST KEY REFUSED, SSH LOGIN
    REFUSED, TIMEOUT (nvidia-smi ran longer than VFLEET_SSH_COMMAND_TIMEOUT, 30 s, and was
    killed on the host), NO NVIDIA-SMI, NVIDIA-SMI FAILED.

    Exit status 3 when some host could not be read (the others are printed all the same).
    """
    from producer.monitor_views import gpu_table
    from workers.scan.snapshots import gpu_view

    c: Context = ctx.obj
    c.fleet_required = False
    settings = _settings(c, ssh_config, known_hosts, accept_new_host_keys)
    names = list(hosts or []) or list(c.fleet.hosts)
    runtime = _runtime(c, settings) if live else None

    def render(width: int) -> tuple[Any, RenderableType, bool]:
        if runtime is not None:
            with _progress("scanning GPUs", len(names)) as step:
                runtime.scan_gpus(names, on_result=lambda _r: step())
        view = gpu_view(
            c.ledger.engine, names, history=history or settings.history, rule=settings.idle_rule
        )
        fine = not any(h.failed for h in view)
        return [h.as_dict() for h in view], gpu_table(view, width), fine

    try:
        fine = _show(render, as_json=as_json, watch=watch, interval=interval, count=watch_count)
    finally:
        if runtime is not None:
            runtime.ssh_pool.close()
    _exit(fine)


def vllm(
    ctx: typer.Context,
    instances: Annotated[
        list[str] | None, typer.Argument(help="Instances (default: the fleet's).")
    ] = None,
    watch: WatchOpt = False,
    as_json: JsonOpt = False,
    live: LiveOpt = False,
    interval: IntervalOpt = DEFAULT_WATCH_INTERVAL,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
    watch_count: CountOpt = 0,
) -> None:
    """Per instance: health, model, running, waiting, KV cache, prompt and generation tok/s.

    Up means /health answers 2xx, or, for endpoints without /health (404), /v1/models
    answers 2xx; refused connections and timeouts are down (the worker's health gate judges
    alike). Token rates are counter deltas over the last VFLEET_RATE_WINDOW (60) seconds of
    snapshots, reset when the server restarts; --live reads the counters twice when there
    is no recent snapshot.

    Exit status 3 when some instance is down or was never scanned (all are printed).
    """
    from producer.monitor_views import vllm_table
    from workers.scan.snapshots import vllm_view

    c: Context = ctx.obj
    settings = _settings(c, ssh_config, known_hosts, accept_new_host_keys)
    names = list(instances or [])
    for name in names:
        c.fleet.instance(name)  # unknown names fail here, with the known ones listed
    names = names or [i.name for i in c.fleet.instances]
    runtime = _runtime(c, settings, redis=True) if live else None
    scans = [0]

    def scan() -> None:
        assert runtime is not None
        with _progress("probing vLLM", len(names)) as step:
            runtime.scan_vllm(names, on_probe=lambda _t, _p: step())
        scans[0] += 1

    def render(width: int) -> tuple[Any, RenderableType, bool]:
        if runtime is not None:
            scan()
            if scans[0] == 1 and _rates_unknown(vllm_view(c.ledger.engine, names)):
                time.sleep(LIVE_RATE_GAP)
                scan()
        rows = vllm_view(c.ledger.engine, names)
        fine = all(r["taken_at"] is not None and r["healthy"] for r in rows)
        return rows, vllm_table(rows, width), fine

    try:
        fine = _show(render, as_json=as_json, watch=watch, interval=interval, count=watch_count)
    finally:
        if runtime is not None:
            runtime.close()
    _exit(fine)


def _rates_unknown(rows: list[dict[str, Any]]) -> bool:
    """Some instance has token counters but no rate yet (nothing recent to compare with)."""
    return any(
        r["healthy"]
        and r["generation_tokens_total"] is not None
        and r["generation_tokens_per_s"] is None
        for r in rows
    )


def _discover_host(
    pool: SSHPool, alias: str, ports: list[int], timeout: float
) -> list[FoundServer]:
    from ops.discover import REMOTE_LISTENERS_COMMAND, discover, parse_listeners
    from ops.endpoint import ChannelHttp

    listeners = parse_listeners(pool.run(alias, REMOTE_LISTENERS_COMMAND).stdout)
    http = ChannelHttp(lambda h, p: pool.open_channel(alias, h, p), timeout=timeout)
    public = pool.target(alias).hostname
    return discover(listeners, ports, http_client=http, host=alias, public_address=public)


def _discover_all(
    c: Context, settings: Settings, hosts: list[str], ports: list[int], local: bool
) -> tuple[list[FoundServer], dict[str, str]]:
    """Servers found (locally and on ``hosts``) and the hosts that could not be searched."""
    from ops.discover import discover, local_listeners
    from ops.endpoint import DirectHttp
    from workers.scan.runtime import build_ssh_pool

    found: list[FoundServer] = []
    if local:
        http = DirectHttp(timeout=settings.http_timeout)
        found += discover(local_listeners(), ports, http_client=http)
    if not hosts:
        return found, {}
    with build_ssh_pool(settings, c.fleet) as pool, _progress("discovering", len(hosts)) as step:
        results = pool.map(
            hosts,
            lambda a: _discover_host(pool, a, ports, settings.http_timeout),
            on_result=lambda _r: step(),
        )
    for r in results.values():
        found += r.value or []
    return found, {h: r.error.reason for h, r in results.items() if r.error is not None}


def _write_fleet(path: Path, servers: list[FoundServer], c: Context) -> list[FoundServer]:
    """Append ``[[instances]]`` for new servers to the fleet file; return those added."""
    from ops.discover import fleet_blocks
    from workers.errors import ConfigError
    from workers.fleet import parse_fleet

    fleet = c.fleet
    text, added = fleet_blocks(
        servers,
        known_names=[i.name for i in fleet.instances],
        known_urls=[(i.host, i.base_url) for i in fleet.instances],
        known_hosts=list(fleet.hosts),
    )
    if not added:
        return []
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    new = old + ("\n" if old and not old.endswith("\n") else "") + text
    parse_fleet(new, source=str(path))  # never write a file we could not read back
    try:
        path.write_text(new, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write fleet file {path}: {e.strerror}") from e
    return added


def discover(
    ctx: typer.Context,
    hosts: Annotated[
        list[str] | None, typer.Argument(help="SSH hosts to search (default: this machine).")
    ] = None,
    ports: Annotated[str, typer.Option(help="Ports to probe, e.g. 8000-8010,9000.")] = (
        DEFAULT_PORTS
    ),
    local: Annotated[
        bool | None, typer.Option("--local/--no-local", help="Search this machine too.")
    ] = None,
    write: Annotated[bool, typer.Option("--write", help="Add new servers to the fleet file.")] = (
        False
    ),
    as_json: JsonOpt = False,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
) -> None:
    """Find vLLM (OpenAI-compatible) servers by their listening ports and /v1/models.

    Exit status 3 when some host could not be searched (what was found is printed).
    """
    from ops.discover import parse_ports

    c: Context = ctx.obj
    c.fleet_required = False
    settings = _settings(c, ssh_config, known_hosts, accept_new_host_keys)
    names = list(hosts or [])
    found, failed = _discover_all(
        c, settings, names, parse_ports(ports), not names if local is None else local
    )
    added = _write_fleet(Path(c.settings.fleet_file), found, c) if write else []
    added_names = {s.name for s in added}
    if as_json:
        rows = [{**asdict(s), "name": s.name, "added": s.name in added_names} for s in found]
        typer.echo(json.dumps({"servers": rows, "failed_hosts": failed}, indent=2))
        _exit(not failed)
        return
    table = Table("name", "host", "base_url", "models", "max len", "fleet file", box=None)
    for s in found:
        note = "added" if s.name in added_names else ("" if not write else "already there")
        table.add_row(
            s.name,
            s.host or "local",
            s.base_url,
            ", ".join(s.models),
            str(s.max_model_len or "-"),
            note,
        )
    console = Console()
    console.print(table if found else "no OpenAI-compatible servers found")
    for host, why in failed.items():
        console.print(f"[bold red]{host}: {why}[/]", highlight=False)
    _exit(not failed)


def beat(
    ctx: typer.Context,
    pidfile: Annotated[Path | None, typer.Option(help="Pidfile (one beat per host).")] = None,
    schedule_file: Annotated[Path | None, typer.Option(help="Beat's schedule state file.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run celery beat: GPU and vLLM scans, snapshot pruning, the reconciler. Refuses to
    start while another beat holds the Redis beat lock."""
    import redis as redis_lib

    from workers.beat import BeatLock, beat_schedule
    from workers.celery_app import create_app

    c: Context = ctx.obj
    c.fleet_required = False
    settings = c.settings.with_overrides(beat_pidfile=pidfile, beat_schedule_file=schedule_file)
    app = create_app(c.settings, fleet=c.fleet)
    app.conf.beat_schedule = beat_schedule(settings)
    client = redis_lib.Redis.from_url(c.settings.broker_url)
    try:
        with BeatLock(client, ttl=settings.beat_lock_ttl):
            app.Beat(
                loglevel=loglevel,
                schedule=str(settings.beat_schedule_file),
                pidfile=str(settings.beat_pidfile),
            ).run()
    finally:
        client.close()


def scan_worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Scans at once.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run the small Celery worker that consumes the ``scan`` queue (threads pool)."""
    from workers.celery_app import create_app
    from workers.queues import SCAN_QUEUE
    from workers.scan.runtime import build_scan_runtime
    from workers.state import state_of

    c: Context = ctx.obj
    c.fleet_required = False
    settings = _settings(c, None, None, None, view=False)
    app = create_app(settings, fleet=c.fleet)
    runtime = build_scan_runtime(settings, c.fleet)
    state_of(app).scan = runtime
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency or settings.scan_concurrency}",
                "--hostname=scan@%h",
                f"--queues={SCAN_QUEUE}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        runtime.close()


def register(app: typer.Typer) -> None:
    app.command("gpu")(gpu)
    app.command("vllm")(vllm)
    app.command("discover")(discover)
    app.command("beat")(beat)
    app.command("scan-worker")(scan_worker)

"""``vfleet forward``, ``forwards``, ``serve``, ``sessions``, ``stop``: reach and start remote
vLLM servers over SSH.

``forward`` opens supervised in-process tunnels (paramiko, no ``ssh`` binary) and runs until
Ctrl-C or SIGTERM, recording them in a state file that ``forwards`` lists. ``serve`` starts
a server in a detached tmux session ``vfleet-<port>`` on a host (optionally with a
lifetime), ``sessions`` lists those, ``stop`` ends one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from producer.cli.monitor import (
    DEFAULT_PORTS,
    EXIT_SOME_FAILED,
    AcceptNewOpt,
    JsonOpt,
    KnownHostsOpt,
    SshConfigOpt,
    _settings,
)
from producer.context import Context

if TYPE_CHECKING:
    from ops.remote import RemoteServers, ServeSpec
    from ops.ssh.pool import SSHPool
    from ops.tunnels.state import ForwardEntry, ForwardsState
    from ops.tunnels.supervisor import SupervisedTunnel
    from workers.settings import Settings
    from workers.tunnels import ViaTarget

StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-file", envvar="VFLEET_FORWARDS_STATE", help="Forwards state file (JSON)."
    ),
]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--command",
        envvar="VFLEET_SERVE_COMMAND",
        help="Server command template: {model} {port} {gpus} {tp} {extra} {python}.",
    ),
]
TmuxSocketOpt = Annotated[
    str | None,
    typer.Option("--tmux-socket", envvar="VFLEET_TMUX_SOCKET", help="tmux -L socket name."),
]
_REFRESH = 30.0


def _state(path: Path | None) -> ForwardsState:
    from ops.tunnels.state import DEFAULT_STATE_FILE, ForwardsState

    return ForwardsState(path or DEFAULT_STATE_FILE)


def _pool(c: Context, settings: Settings) -> SSHPool:
    from workers.scan.runtime import build_ssh_pool

    return build_ssh_pool(settings, c.fleet)


# -- forward / forwards -------------------------------------------------------------------


def _targets(
    c: Context, pool: SSHPool, hosts: list[str], search: bool, ports: str, timeout: float
) -> list[ViaTarget]:
    from workers.tunnels import discover_targets, via_targets

    via = [] if hosts else via_targets(c.fleet)
    names = hosts or (list(c.fleet.hosts) if search or not via else [])
    found: list[ViaTarget] = []
    if names:
        found, failed = discover_targets(pool, names, ports, timeout=timeout)
        for host, why in failed.items():
            typer.echo(f"vfleet: {host}: {why}", err=True)
    seen = {(t.alias, t.remote_port) for t in via}
    return via + [t for t in found if (t.alias, t.remote_port) not in seen]


def _open(
    targets: list[ViaTarget],
    pool: SSHPool,
    first_port: int | None,
    interval: float,
    tunnels: list[SupervisedTunnel],
) -> None:
    """Start a tunnel per target into ``tunnels`` (so the caller closes those started if a
    later one fails)."""
    from ops.tunnels.errors import TunnelBindError
    from ops.tunnels.supervisor import SupervisedTunnel

    for n, t in enumerate(targets):
        wanted = first_port + n if first_port is not None else t.remote_port
        for port in (wanted, 0):  # the remote's port when free here, else any free port
            fwd = SupervisedTunnel(
                t.alias, t.remote_host, t.remote_port, ssh_pool=pool, local_port=port,
                name=t.name, check_interval=interval,
            )  # fmt: skip
            try:
                tunnels.append(fwd.start())
                break
            except TunnelBindError:
                if first_port is not None or port == 0:
                    raise


def _entries(tunnels: list[SupervisedTunnel]) -> list[ForwardEntry]:
    from ops.tunnels.state import ForwardEntry

    pid = os.getpid()
    out = []
    for t in tunnels:
        s = t.status
        out.append(
            ForwardEntry(
                pid,
                t.name,
                t.alias,
                t.remote_host,
                t.remote_port,
                t.local_port,
                s.model,
                s.state,
                s.detail,
                s.since,
            )
        )
    return out


def _forwards_table(entries: list[ForwardEntry]) -> Table:
    table = Table("name", "local port", "remote", "model", "state", "pid", box=None)
    for e in entries:
        loopback = e.remote_host in ("127.0.0.1", "localhost", "::1")
        remote = (
            f"{e.host}:{e.remote_port}" if loopback else f"{e.host}→{e.remote_host}:{e.remote_port}"
        )
        state = e.state + (f" ({e.detail})" if e.detail and e.state != "up" else "")
        table.add_row(e.name, str(e.local_port), remote, e.model or "-", state, str(e.pid))
    return table


@contextmanager
def _until_signal() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT; the old handlers come back afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def forward(
    ctx: typer.Context,
    hosts: Annotated[
        list[str] | None,
        typer.Argument(help="Hosts to search (default: the fleet's `via` instances)."),
    ] = None,
    ports: Annotated[str, typer.Option(help="Ports to search on hosts.")] = DEFAULT_PORTS,
    search: Annotated[
        bool, typer.Option("--discover", help="Search every fleet host too, not only `via`.")
    ] = False,
    local_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="First local port (default: remote's).")
    ] = None,
    check_interval: Annotated[float, typer.Option(min=0.2, help="Seconds between checks.")] = 5.0,
    state_file: StateOpt = None,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
) -> None:
    """Forward local ports to vLLM servers on fleet hosts through SSH; supervise them
    (reconnect with backoff) until Ctrl-C or SIGTERM."""
    c: Context = ctx.obj
    c.fleet_required = False
    settings = _settings(c, ssh_config, known_hosts, accept_new_host_keys)
    state = _state(state_file)
    console = Console(stderr=True)
    with _pool(c, settings) as pool, _until_signal() as stop:
        targets = _targets(c, pool, list(hosts or []), search, ports, settings.http_timeout)
        if not targets:
            raise typer.BadParameter("no servers to forward (no `via` instances, none found)")
        tunnels: list[SupervisedTunnel] = []
        try:
            _open(targets, pool, local_port, check_interval, tunnels)

            def save(_changed: object = None) -> None:
                state.update(os.getpid(), _entries(tunnels))

            for t in tunnels:
                t.on_change = save
            save()
            console.print(_forwards_table(_entries(tunnels)))
            console.print(f"forwarding {len(tunnels)} servers; Ctrl-C stops", highlight=False)
            while not stop.wait(_REFRESH):
                save()
        finally:
            for t in tunnels:
                t.on_change = None
                t.close()
            state.remove(os.getpid())


def forwards(ctx: typer.Context, state_file: StateOpt = None, as_json: JsonOpt = False) -> None:
    """List the forwards running on this machine (entries of dead processes are dropped)."""
    entries = _state(state_file).read()
    if as_json:
        typer.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    Console().print(_forwards_table(entries) if entries else "no forwards running")


# -- serve / sessions / stop ----------------------------------------------------------------


def _servers(
    c: Context, settings: Settings, template: str | None, sock: str | None
) -> RemoteServers:
    from ops.remote import DEFAULT_SERVE_COMMAND, RemoteServers

    return RemoteServers(
        ssh_pool=_pool(c, settings),
        command_template=template or DEFAULT_SERVE_COMMAND,
        tmux_socket=sock,
        http_timeout=settings.http_timeout,
    )


def _auto_gpus(c: Context, settings: Settings, host: str, count: int) -> tuple[int, ...]:
    """``count`` GPUs the latest stored scan of ``host`` calls idle (the idle rule held:
    never a GPU still warming up, nor one whose readings are unknown).

    Raises :class:`ops.remote.RemoteArgumentError` saying what the scan shows instead.
    """
    from ops.remote import RemoteArgumentError
    from workers.scan.snapshots import IDLE, UNKNOWN, WARMING, gpu_view

    rule = settings.idle_rule
    (view,) = gpu_view(c.ledger.engine, [host], history=1, rule=rule)
    hint = f"`vfleet gpu --live {host}` scans now"
    if view.taken_at is None or view.error:
        why = view.error or "it was never scanned"
        raise RemoteArgumentError(f"--gpus auto: no GPU scan of {host} to go by: {why} ({hint})")
    idle = [g.index for g in view.gpus if g.state == IDLE and g.index is not None]
    if len(idle) >= count:
        return tuple(idle[:count])
    warming = [g for g in view.gpus if g.state == WARMING]
    unknown = sum(1 for g in view.gpus if g.state == UNKNOWN)
    notes = []
    if warming:
        least = min(rule.scans - g.idle_scans for g in warming)
        notes.append(
            f"{len(warming)} more look idle but have been scanned idle only "
            f"{max(g.idle_scans for g in warming)} of the {rule.scans} times the idle rule "
            f"needs ({least} more scan{'s' if least > 1 else ''}: {hint}, or let beat scan)"
        )
    if unknown:
        notes.append(f"{unknown} report unknown readings and are never taken")
    raise RemoteArgumentError(
        f"--gpus auto: {host} has {len(idle)} idle GPUs in the latest scan, {count} needed"
        + ("; " + "; ".join(notes) if notes else f" ({hint})")
    )


def fleet_lines(spec: ServeSpec, model: str, *, known_host: bool) -> str:
    """TOML to add to the fleet file for a server started by ``serve``."""
    lines = [] if known_host else [f"[hosts.{json.dumps(spec.host)}]", ""]
    lines += [
        "[[instances]]",
        f"name = {json.dumps(f'{spec.host}-{spec.port}')}",
        f'base_url = "http://127.0.0.1:{spec.port}/v1"',
        f"model = {json.dumps(model)}",
        f"host = {json.dumps(spec.host)}",
        f"via = {json.dumps(spec.host)}",
    ]
    if spec.gpus:
        lines.append(f"gpus = [{', '.join(map(str, spec.gpus))}]")
    return "\n".join(lines) + "\n"


@contextmanager
def _waiting(what: str) -> Iterator[Callable[[float], None]]:
    """A spinner with elapsed time on stderr (on a terminal) while the server comes up."""
    if not Console(stderr=True).is_terminal:
        yield lambda _s: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn(what), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda _s: progress.update(task)


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="SSH host to start the server on.")],
    model: Annotated[str, typer.Option(help="Model to serve.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on the host's loopback.")],
    extra: Annotated[
        list[str] | None, typer.Argument(help="Extra server arguments, after --.")
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPU indices (0,1), or auto: GPUs the latest stored scan calls idle by the "
            "idle rule (see `vfleet gpu --help`; never one still 'idle?' or 'unknown')."
        ),
    ] = None,
    tp: Annotated[int | None, typer.Option(min=1, help="Tensor parallel size.")] = None,
    lifetime: Annotated[str | None, typer.Option(help="Stop after this long: 45m, 2h.")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for /v1/models.")] = 900,
    command: TemplateOpt = None,
    tmux_socket: TmuxSocketOpt = None,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
) -> None:
    """Start a vLLM server in a detached tmux session on HOST, wait until it answers, and
    print its fleet-file lines."""
    from ops.remote import ServeSpec, check_host, parse_duration, parse_gpus

    c: Context = ctx.obj
    c.fleet_required = False
    check_host(host)
    settings = _settings(c, ssh_config, known_hosts, accept_new_host_keys)
    chosen = (
        _auto_gpus(c, settings, host, tp or 1)
        if gpus == "auto"
        else parse_gpus(gpus or "")
        if gpus
        else ()
    )
    life = parse_duration(lifetime) if lifetime else None
    spec = ServeSpec.checked(
        host, model, port, gpus=chosen, tp=tp, lifetime=life, extra=extra or []
    )
    servers = _servers(c, settings, command, tmux_socket)
    with servers.pool:
        started = servers.launch(spec)
        typer.echo(f"started {spec.session} on {host}: {started}", err=True)
        with _waiting(f"waiting for {host}:{port}/v1/models") as tick:
            served = servers.wait_ready(spec, timeout=timeout, on_tick=tick)
    until = f", stops in {lifetime}" if lifetime else ""
    typer.echo(f"{host}:{port} serves {served}{until}; add to the fleet file:", err=True)
    typer.echo(fleet_lines(spec, served or model, known_host=host in c.fleet.hosts), nl=False)


def sessions(
    ctx: typer.Context,
    hosts: Annotated[list[str] | None, typer.Argument(help="Hosts (default: the fleet's).")] = None,
    as_json: JsonOpt = False,
    tmux_socket: TmuxSocketOpt = None,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
) -> None:
    """List the servers vfleet started (tmux sessions vfleet-<port>) on each host.

    Exit status 3 when some host could not be asked (the others are listed).
    """
    from ops.remote import check_host

    c: Context = ctx.obj
    c.fleet_required = False
    names = [check_host(h) for h in hosts or []] or list(c.fleet.hosts)
    servers = _servers(
        c, _settings(c, ssh_config, known_hosts, accept_new_host_keys), None, tmux_socket
    )
    with servers.pool:
        results = servers.pool.map(names, servers.sessions)
    found = [s for r in results.values() for s in r.value or []]
    failed = {h: r.error.reason for h, r in results.items() if r.error is not None}
    if as_json:
        rows = [s.as_dict() for s in found]
        typer.echo(json.dumps({"sessions": rows, "failed_hosts": failed}, indent=2))
    else:
        table = Table("host", "port", "model", "session", "up", "expires in", box=None)
        now = time.time()
        for s in found:
            up = f"{(now - s.created) / 60:.0f}m" if s.created else "-"
            left = f"{max(0.0, s.expires - now) / 60:.1f}m" if s.expires else "never"
            table.add_row(s.host, str(s.port), s.model or "-", s.name, up, left)
        console = Console()
        console.print(table if found else "no vfleet servers running")
        for host, why in failed.items():
            console.print(f"[bold red]{host}: {why}[/]", highlight=False)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def stop(
    ctx: typer.Context,
    server: Annotated[str, typer.Argument(help="HOST:PORT of a server `serve` started.")],
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the port.")] = 30,
    tmux_socket: TmuxSocketOpt = None,
    ssh_config: SshConfigOpt = None,
    known_hosts: KnownHostsOpt = None,
    accept_new_host_keys: AcceptNewOpt = None,
) -> None:
    """Stop a server vfleet started: end its tmux session and wait for its port to close."""
    from ops.remote import parse_host_port

    c: Context = ctx.obj
    c.fleet_required = False
    host, port = parse_host_port(server)
    servers = _servers(
        c, _settings(c, ssh_config, known_hosts, accept_new_host_keys), None, tmux_socket
    )
    with servers.pool:
        servers.stop(host, port, timeout=timeout)
    typer.echo(f"stopped {host}:{port}", err=True)


def register(app: typer.Typer) -> None:
    app.command("forward")(forward)
    app.command("forwards")(forwards)
    app.command("serve")(serve)
    app.command("sessions")(sessions)
    app.command("stop")(stop)

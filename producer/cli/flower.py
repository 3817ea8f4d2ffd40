"""``vfleet flower``: Flower on the configured broker, behind basic auth.

Credentials come from ``VFLEET_FLOWER_USER`` / ``VFLEET_FLOWER_PASSWORD`` or from
``--basic-auth-file`` (``user:password`` lines). Without them Flower does not start, unless
it listens on loopback only and ``--no-auth`` says so; even then its HTTP API stays closed
(Flower opens it only with ``FLOWER_UNAUTHENTICATED_API``, which we drop).

Two things Flower does not do on its own here:

* its ``/metrics`` (Prometheus: worker names, task counts) is open to anyone; here it needs
  the same credentials as the rest (:func:`guard_metrics`);
* its broker page and ``/api/queues/length`` pick a broker client by the scheme of the URL
  kombu prints, which for vfleet's own Redis transport class is that class's import path
  ("'redis' broker is not supported"); Flower's process gets kombu's transport of the same
  kind instead (:func:`flower_broker`): it only reads events and queue lengths.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from producer.context import Context
from producer.logs import redact
from workers.errors import ConfigError

if TYPE_CHECKING:
    from celery import Celery

DEFAULT_FLOWER_PORT = 5555
DEFAULT_FLOWER_ADDRESS = "127.0.0.1"
USER_ENV = "VFLEET_FLOWER_USER"
PASSWORD_ENV = "VFLEET_FLOWER_PASSWORD"
_UNAUTHENTICATED_API_ENV = "FLOWER_UNAUTHENTICATED_API"
_FLOWER_AUTH_ENVS = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH")
# URL schemes Flower has a broker client for (flower.utils.broker.Broker).
FLOWER_BROKER_SCHEMES = frozenset({"amqp", "amqps", "redis", "rediss", "redis+socket", "sentinel"})


def is_loopback(address: str) -> bool:
    """True when ``address`` can only be reached from this machine."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _check_pair(user: str, password: str, where: str) -> tuple[str, str]:
    if not user or not password:
        raise ConfigError(f"{where}: user and password must both be non-empty")
    # Flower splits its --basic-auth list on commas and each pair on the first colon.
    if ":" in user or "," in user or "," in password:
        raise ConfigError(f"{where}: user may not hold ':' or ',' and password may not hold ','")
    return user, password


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """``(user, password)`` pairs from ``user:password`` lines (``#`` comments, blanks skipped).

    Raises :class:`ConfigError` when the file is unreadable, malformed or empty.
    """
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"--basic-auth-file {path}: {e.strerror}") from e
    pairs: list[tuple[str, str]] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep:
            raise ConfigError(f"--basic-auth-file {path}: line {n} is not user:password")
        pairs.append(_check_pair(user, password, f"--basic-auth-file {path}: line {n}"))
    if not pairs:
        raise ConfigError(f"--basic-auth-file {path}: no user:password line")
    return pairs


def credentials(auth_file: Path | None) -> list[tuple[str, str]]:
    """The configured credentials: the file's, else the environment's, else none."""
    if auth_file is not None:
        return read_auth_file(auth_file)
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if not user and not password:
        return []
    return [_check_pair(user, password, f"{USER_ENV}/{PASSWORD_ENV}")]


def flower_argv(
    *, port: int, address: str, pairs: list[tuple[str, str]], no_auth: bool
) -> list[str]:
    """Arguments for Celery's ``flower`` command. Raises :class:`ConfigError` when Flower
    would be reachable without credentials."""
    if no_auth and not is_loopback(address):
        raise ConfigError(
            f"--no-auth is only allowed on a loopback address, not {address}: "
            f"set {USER_ENV}/{PASSWORD_ENV} or --basic-auth-file"
        )
    if not pairs and not no_auth:
        raise ConfigError(
            f"Flower needs credentials: set {USER_ENV} and {PASSWORD_ENV}, or pass "
            "--basic-auth-file, or --no-auth on a loopback address"
        )
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if not no_auth:
        argv.append("--basic-auth=" + ",".join(f"{u}:{p}" for u, p in pairs))
    return argv


def flower_broker(app: Celery) -> str | None:
    """Make ``app``'s broker one Flower can read queue lengths from: when the configured
    transport is a class of ours whose kind Flower knows (``redis``), use kombu's own
    transport of that kind. Returns the transport now configured, None if unchanged."""
    with app.connection() as conn:
        scheme = conn.as_uri().split("://", 1)[0]
        kind = getattr(conn.transport, "driver_type", None)
    if scheme in FLOWER_BROKER_SCHEMES or kind not in FLOWER_BROKER_SCHEMES:
        return None
    app.conf.broker_transport = kind
    return str(kind)


def guard_metrics() -> None:
    """Put Flower's ``/metrics`` behind the authentication of its other pages."""
    from flower.urls import handlers
    from flower.views.monitor import Metrics
    from tornado import web

    class AuthenticatedMetrics(Metrics):  # type: ignore[misc]
        @web.authenticated  # type: ignore[untyped-decorator]
        async def get(self) -> None:
            await super().get()

    for n, handler in enumerate(handlers):
        if isinstance(handler, tuple) and handler[1] is Metrics:
            handlers[n] = (handler[0], AuthenticatedMetrics, *handler[2:])


def flower(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = DEFAULT_FLOWER_PORT,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_FLOWER_ADDRESS,
    basic_auth_file: Annotated[
        Path | None,
        typer.Option(help="File of user:password lines (instead of VFLEET_FLOWER_USER/_PASSWORD)."),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve the UI without auth (loopback only).")
    ] = False,
) -> None:
    """Run Flower (tasks and workers, live from Celery events) behind basic auth."""
    from workers.celery_app import create_app

    c: Context = ctx.obj
    pairs = [] if no_auth else credentials(basic_auth_file)
    argv = flower_argv(port=port, address=address, pairs=pairs, no_auth=no_auth)
    redact(*(p for _, p in pairs))
    # Flower would open its API without auth for this variable, and honour auth settings of
    # its own from these: ours are the only ones that count.
    for name in (_UNAUTHENTICATED_API_ENV, *_FLOWER_AUTH_ENVS):
        os.environ.pop(name, None)
    c.fleet_required = False
    app = create_app(c.settings, fleet=c.fleet)
    flower_broker(app)
    guard_metrics()
    app.start(argv)


def register(app: typer.Typer) -> None:
    app.command("flower")(flower)

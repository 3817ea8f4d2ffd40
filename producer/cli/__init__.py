"""The ``vfleet`` command line: the root app and the one place errors become exit codes.

Exit codes: 0 success, 1 a vfleet error (bad config, missing batch, unreachable service),
2 bad usage (unknown option, bad value), 130 interrupted.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

from ops.errors import OpsError
from producer.context import Context, build_settings
from producer.logs import LOG_FORMATS, configure_logging, redact, url_password
from workers.errors import VfleetError

if TYPE_CHECKING:
    # Typer vendors click; its commands are this module's.
    from typer._click.core import Command
    from typer._click.core import Context as ClickContext

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="vfleet",
    help="Batch LLM work on self-hosted vLLM fleets: Celery workers, Redis, SQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    fleet: Annotated[
        str | None, typer.Option("--fleet", envvar="VFLEET_FLEET_FILE", help="Fleet file (TOML).")
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option("--broker-url", envvar="VFLEET_BROKER_URL", help="Redis URL of the broker."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", envvar="VFLEET_DATABASE_URL", help="SQLAlchemy URL of the ledger."
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="VFLEET_LOG_LEVEL", help="DEBUG, INFO, WARNING...")
    ] = "WARNING",
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar="VFLEET_LOG_FORMAT", help="Log lines as text or json."),
    ] = "text",
) -> None:
    """Settings are built here, once, and handed to every command."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"unknown log format {log_format!r}", param_hint="--log-format")
    configure_logging(level, log_format)
    # Children (`vfleet workers`, the demo's workers) log the same way.
    os.environ["VFLEET_LOG_FORMAT"] = log_format
    settings = build_settings(fleet_file=fleet, broker_url=broker_url, database_url=database_url)
    redact(url_password(settings.broker_url), url_password(settings.database_url))
    ctx.obj = Context(settings)


# One module per command group; each has ``register(app)``, which registers these
# commands. A command imports only its own module (`vfleet status` loads neither Celery
# nor the readers: its start-up counts against its 1 s on 10^6 records); `vfleet --help`
# imports them all. tests/producer/test_cli_loading.py checks this map against the modules.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "bench": ("bench",),
    "config": ("config",),
    "db": ("db",),
    "demo": ("demo",),
    "export": ("export",),
    "exporter": ("exporter",),
    "flower": ("flower",),
    "lifecycle": ("cancel", "delete"),
    "monitor": ("gpu", "vllm", "discover", "beat", "scan-worker"),
    "remote": ("forward", "forwards", "serve", "sessions", "stop"),
    "report": ("report",),
    "run": ("run",),
    "status": ("status", "batches"),
    "submit": ("enqueue", "retry"),
    "worker": ("worker", "workers"),
}
MODULE_OF = {command: module for module, names in COMMAND_MODULES.items() for command in names}


def module_commands(module: str) -> TyperGroup:
    """The commands ``producer.cli.<module>`` registers, as a click group."""
    sub = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)
    importlib.import_module(f"producer.cli.{module}").register(sub)
    return typer.main.get_group(sub)


class LazyCommands(TyperGroup):
    """The root group: a command's module is imported the first time it is asked for."""

    def list_commands(self, ctx: ClickContext) -> list[str]:
        return [*MODULE_OF, *(n for n in super().list_commands(ctx) if n not in MODULE_OF)]

    def get_command(self, ctx: ClickContext, cmd_name: str) -> Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in MODULE_OF:
            return found
        group = module_commands(MODULE_OF[cmd_name])
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if command is not None:
                self.add_command(command, name)
        return super().get_command(ctx, cmd_name)


app.info.cls = LazyCommands


def _register() -> None:
    from ops.sim.cli import sim

    app.command("sim", help="Serve simulated vLLM instances (no GPU needed).")(sim)


_register()


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"vfleet: error: {message}\n")
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; every error is one line on stderr."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="vfleet", standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", EXIT_INTERRUPTED)
    except typer.TyperException as e:
        # Usage errors (unknown option, bad value, missing argument) from Typer's click.
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        return _fail(" ".join(message.split()), int(getattr(e, "exit_code", EXIT_USAGE)))
    except (VfleetError, OpsError) as e:
        return _fail(str(e).splitlines()[0] if str(e) else e.__class__.__name__, EXIT_ERROR)
    if result == EXIT_INTERRUPTED:
        # Typer turns Ctrl-C into click's Exit(130), which click returns: say it.
        return _fail("interrupted", EXIT_INTERRUPTED)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())

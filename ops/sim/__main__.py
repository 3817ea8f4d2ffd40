"""``python -m ops.sim``: the ``vfleet sim`` command on its own.

Usage errors (an unknown option, a value of the wrong type) are turned into the same one-line
``vfleet sim: error: ...`` and exit code 2 as the command's own checks.
"""

from __future__ import annotations

import sys

import typer

from ops.sim.cli import PROG, USAGE_EXIT_CODE, sim


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit code."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(sim)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return 1
    except typer.TyperException as e:
        message = " ".join(e.format_message().split())
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m ops.bench``: the ``vfleet bench`` command on its own.

Errors become one line on stderr: exit 2 for bad usage, 1 when the benchmark fails.
"""

from __future__ import annotations

import sys

import typer

from ops.bench.cli import bench
from ops.bench.errors import BenchError

PROG = "python -m ops.bench"


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit code."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(bench)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except typer.TyperException as e:
        message = " ".join(e.format_message().split())
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return 2
    except BenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

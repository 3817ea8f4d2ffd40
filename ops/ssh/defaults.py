"""Default SSH settings, importable without paramiko (settings classes read them)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 30.0
# A remote command runs under coreutils `timeout`: TERM at the command timeout, KILL this
# many seconds later if it ignored the TERM.
DEFAULT_KILL_AFTER = 5.0
DEFAULT_KEEPALIVE = 30
DEFAULT_PARALLELISM = 16

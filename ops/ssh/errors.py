"""The errors of :mod:`ops.ssh`, under :class:`ops.errors.OpsError`::

    OpsError
    └── SSHError                 anything that went wrong talking to a host over SSH
        ├── HostKeyError         unknown or changed host key (refused, never retried)
        ├── SSHConnectError      refused, unreachable, authentication failed, connection lost
        ├── SSHTimeoutError      connect, banner, auth or command outlived its timeout
        └── RemoteCommandError   the command ran but cannot be used (carries exit status)

Each carries ``host``, the alias it is about, so a per-host result can say which one failed.
"""

from __future__ import annotations

from ops.errors import OpsError


class SSHError(OpsError):
    """Talking to ``host`` over SSH failed."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


class HostKeyError(SSHError):
    """The host's key is unknown (and accepting new keys is off) or does not match."""


class SSHConnectError(SSHError):
    """Could not connect, authenticate, or keep the connection."""


class SSHTimeoutError(SSHError):
    """Something on this host took longer than its timeout."""


class RemoteCommandError(SSHError):
    """The remote command failed; ``exit_status`` and ``stderr`` say how."""

    def __init__(self, host: str, message: str, *, exit_status: int, stderr: str = "") -> None:
        super().__init__(host, message)
        self.exit_status = exit_status
        self.stderr = stderr

"""The errors of :mod:`ops.ssh`, under :class:`ops.errors.OpsError`::

    OpsError
    └── SSHError                 anything that went wrong talking to a host over SSH
        ├── HostKeyError         unknown or changed host key (refused, never retried)
        ├── SSHConnectError      refused, unreachable, connection lost
        │   └── SSHAuthError     the host answered and refused our key (or it needs a passphrase)
        ├── SSHTimeoutError      connect, banner or auth outlived its timeout
        │   └── CommandTimeoutError  the command outlived its timeout and was killed on the host
        └── RemoteCommandError   the command ran but cannot be used (carries exit status)

Each carries ``host``, the alias it is about, so a per-host result can say which one failed,
and ``state``, a short word for what a listing shows (``unreachable``, ``host-key``, ...).
"""

from __future__ import annotations

from ops.errors import OpsError


class SSHError(OpsError):
    """Talking to ``host`` over SSH failed."""

    state = "error"

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.reason = message


class HostKeyError(SSHError):
    """The host's key is unknown (and accepting new keys is off) or does not match."""

    state = "host-key"


class SSHConnectError(SSHError):
    """Could not connect, or keep the connection."""

    state = "unreachable"


class SSHAuthError(SSHConnectError):
    """The host answered but would not let us in."""

    state = "auth"


class SSHTimeoutError(SSHError):
    """Connecting to this host took longer than its timeout."""

    state = "unreachable"


class CommandTimeoutError(SSHTimeoutError):
    """The host answered, but the command did not finish in time; it was stopped there
    (coreutils ``timeout``), so nothing of it outlives the call."""

    state = "timeout"


class RemoteCommandError(SSHError):
    """The remote command failed; ``exit_status`` and ``stderr`` say how."""

    def __init__(self, host: str, message: str, *, exit_status: int, stderr: str = "") -> None:
        super().__init__(host, message)
        self.exit_status = exit_status
        self.stderr = stderr

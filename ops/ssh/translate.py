"""Turn what paramiko and the socket layer raise into :mod:`ops.ssh.errors`."""

from __future__ import annotations

import socket
from pathlib import Path

import paramiko

from ops.ssh.config import SSHTarget
from ops.ssh.errors import HostKeyError, SSHAuthError, SSHConnectError, SSHError, SSHTimeoutError
from ops.ssh.hostkeys import UnknownHostKey, describe_changed


def translate(
    target: SSHTarget, e: BaseException, known_hosts: Path, timeout: float, elapsed: float = 0.0
) -> SSHError:
    """The :class:`SSHError` that says, in one line, why connecting to ``target`` failed.

    A paramiko error after ``timeout`` seconds (a host that accepted TCP and then said
    nothing: "Error reading SSH protocol banner", "No existing session") is a timeout.
    """
    alias = target.alias
    where = f"{target.user}@{target.hostname}:{target.port}"
    if isinstance(e, SSHError):
        return e
    if isinstance(e, UnknownHostKey):
        return HostKeyError(alias, str(e))
    if isinstance(e, paramiko.BadHostKeyException):
        return HostKeyError(alias, describe_changed(target.known_hosts_name, e, known_hosts))
    if isinstance(e, paramiko.PasswordRequiredException):
        return SSHAuthError(alias, f"{where}: key needs a passphrase; load it into ssh-agent")
    if isinstance(e, paramiko.AuthenticationException):
        return SSHAuthError(alias, f"{where}: authentication failed ({e})")
    if isinstance(e, socket.timeout | TimeoutError):
        return SSHTimeoutError(alias, f"{where}: no answer within {timeout:g}s")
    if isinstance(e, paramiko.SSHException) and (
        "banner" in str(e).lower() or elapsed >= timeout * 0.95
    ):
        return SSHTimeoutError(alias, f"{where}: no SSH banner within {timeout:g}s")
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return SSHConnectError(alias, f"{where}: connection refused")
    if isinstance(e, OSError):
        return SSHConnectError(alias, f"{where}: {e.strerror or e}")
    if isinstance(e, paramiko.SSHException | EOFError):
        return SSHConnectError(alias, f"{where}: {e or e.__class__.__name__}")
    return SSHConnectError(alias, f"{where}: {e.__class__.__name__}: {e}")

"""Where an SSH alias leads: ``~/.ssh/config`` (via :class:`paramiko.SSHConfig`) plus overrides.

Resolution follows OpenSSH for the keys vfleet honours — ``HostName``, ``User``, ``Port``,
``IdentityFile``, ``IdentitiesOnly``, ``ProxyJump`` and ``SetEnv`` — with ``Host`` patterns
and first-match-wins. Fields given in the fleet file (:class:`HostOverrides`) win over the
config file.
"""

from __future__ import annotations

import getpass
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from ops.ssh.defaults import DEFAULT_PORT, DEFAULT_SSH_CONFIG
from ops.ssh.errors import SSHConnectError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostOverrides:
    """What the fleet file says about a host; None leaves the SSH config's value."""

    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    proxy_jump: str | None = None


@dataclass(frozen=True)
class SSHTarget:
    """Everything needed to open one SSH connection."""

    alias: str
    hostname: str
    port: int = DEFAULT_PORT
    user: str = field(default_factory=getpass.getuser)
    key_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH and paramiko file this host's key under in known_hosts."""
        return self.hostname if self.port == DEFAULT_PORT else f"[{self.hostname}]:{self.port}"


def parse_setenv(value: str) -> tuple[tuple[str, str], ...]:
    """``SetEnv A=1 B="x y"`` → ``(("A", "1"), ("B", "x y"))``; words without ``=`` dropped."""
    pairs: list[tuple[str, str]] = []
    for word in shlex.split(value):
        name, sep, val = word.partition("=")
        if sep and name:
            pairs.append((name, val))
    return tuple(pairs)


def parse_jump(spec: str | None) -> tuple[str, ...]:
    """``ProxyJump a,b`` → ``("a", "b")``; ``none`` or empty → no jump."""
    if not spec or spec.strip().lower() == "none":
        return ()
    return tuple(hop.strip() for hop in spec.split(",") if hop.strip())


def split_hop(hop: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` → ``(user, host, port)``."""
    user, _, rest = hop.rpartition("@")
    host, port = rest, None
    if rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = int(port_text) if port_text.isdigit() else None
    return (user or None), host, port


class SSHConfigFile:
    """A parsed ssh_config; a missing file behaves like an empty one."""

    def __init__(self, path: Path | None = DEFAULT_SSH_CONFIG) -> None:
        self.path = path.expanduser() if path is not None else None
        self._config = paramiko.SSHConfig()
        if self.path is not None and self.path.is_file():
            try:
                self._config = paramiko.SSHConfig.from_path(str(self.path))
            except (OSError, paramiko.ConfigParseError) as e:
                raise SSHConnectError("ssh_config", f"cannot read {self.path}: {e}") from e

    def resolve(self, alias: str, overrides: HostOverrides | None = None) -> SSHTarget:
        """The target ``alias`` names, overrides applied."""
        found = self._config.lookup(alias)
        o = overrides or HostOverrides()
        port_text = o.port if o.port is not None else found.get("port", DEFAULT_PORT)
        keys = [o.key_file] if o.key_file else list(found.get("identityfile", []))
        jump = o.proxy_jump if o.proxy_jump is not None else found.get("proxyjump")
        return SSHTarget(
            alias=alias,
            hostname=o.hostname or found.get("hostname", alias),
            port=int(port_text),
            user=o.user or found.get("user") or getpass.getuser(),
            key_files=tuple(str(Path(k).expanduser()) for k in keys),
            identities_only=str(found.get("identitiesonly", "no")).lower() == "yes",
            proxy_jump=parse_jump(jump),
            environment=parse_setenv(str(found.get("setenv", ""))),
        )

    def resolve_hop(self, hop: str) -> SSHTarget:
        """A ProxyJump hop: ``[user@]host[:port]``, the host part looked up as an alias."""
        user, host, port = split_hop(hop)
        target = self.resolve(host, HostOverrides(user=user, port=port))
        # A jump host's own ProxyJump would chain further; OpenSSH follows it, so do we.
        return target

"""Host key checking against a known_hosts file, like OpenSSH's ``StrictHostKeyChecking``.

``yes`` (the default) refuses a host whose key is not in known_hosts; ``accept-new`` records
the key of a host seen for the first time. A *changed* key is refused in both modes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import paramiko

from ops.ssh.defaults import DEFAULT_KNOWN_HOSTS

logger = logging.getLogger(__name__)


class UnknownHostKey(paramiko.SSHException):
    """Raised inside paramiko's connect when a host is not in known_hosts."""

    def __init__(self, name: str, key: paramiko.PKey, path: Path) -> None:
        super().__init__(
            f"host key for {name} is not in {path} ({key.get_name()} {key.fingerprint}); "
            "verify it, then add it with ssh-keyscan or run with --accept-new-host-keys"
        )


def describe_changed(name: str, err: paramiko.BadHostKeyException, path: Path) -> str:
    """A one-line message for a host whose key differs from the one on file."""
    got = err.key
    return (
        f"HOST KEY CHANGED for {name}: it offered {got.get_name()} {got.fingerprint} but {path} "
        "holds another; refusing to connect (remove the old line if the change is expected)"
    )


class KnownHosts:
    """One known_hosts file shared by every connection of a pool."""

    def __init__(self, path: Path = DEFAULT_KNOWN_HOSTS, *, accept_new: bool = False) -> None:
        self.path = path.expanduser()
        self.accept_new = accept_new
        self._lock = threading.Lock()

    def prepare(self, client: paramiko.SSHClient) -> None:
        """Load the file into ``client`` and install the missing-key policy."""
        with self._lock:
            if self.path.is_file():
                client.get_host_keys().load(str(self.path))
        client.set_missing_host_key_policy(_Policy(self))

    def add(self, client: paramiko.SSHClient, name: str, key: paramiko.PKey) -> None:
        """Record ``key`` for ``name`` in the file (appending one line) and in ``client``."""
        line = paramiko.hostkeys.HostKeyEntry([name], key).to_line() or ""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
        client.get_host_keys().add(name, key.get_name(), key)
        logger.warning(
            "accepted new host key for %s: %s %s (added to %s)",
            name,
            key.get_name(),
            key.fingerprint,
            self.path,
        )


class _Policy(paramiko.MissingHostKeyPolicy):
    def __init__(self, known: KnownHosts) -> None:
        self.known = known

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if not self.known.accept_new:
            raise UnknownHostKey(hostname, key, self.known.path)
        self.known.add(client, hostname, key)

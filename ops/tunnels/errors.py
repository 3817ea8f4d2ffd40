"""The errors of :mod:`ops.tunnels`, under :class:`ops.errors.OpsError`::

OpsError
└── TunnelError              a local forward through SSH
    ├── TunnelBindError      the local port cannot be listened on
    └── TunnelStateError     the state file cannot be read or written
"""

from __future__ import annotations

from ops.errors import OpsError


class TunnelError(OpsError):
    """A forward through SSH failed."""


class TunnelBindError(TunnelError):
    """The local port is taken or not ours to bind."""


class TunnelStateError(TunnelError):
    """The forwards state file is unreadable or cannot be written."""

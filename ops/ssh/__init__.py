"""SSH to the fleet's hosts, with no Celery and no SQL.

- :mod:`ops.ssh.config`: where an alias leads (``~/.ssh/config`` plus fleet-file fields)
- :mod:`ops.ssh.hostkeys`: known_hosts checking, ``accept-new``
- :mod:`ops.ssh.pool`: pooled connections, per-host timeouts, bounded fan-out
- :mod:`ops.ssh.errors`: the error tree
- :mod:`ops.ssh.defaults`: default settings (importable without paramiko)

Nothing is imported here, so reading the defaults does not load paramiko.
"""

"""The errors of the ``ops`` package (no Celery, no SQL: machines and servers).

::

    OpsError
    ├── RedisServerError         redis-server missing or not coming up (ops.redis_server)
    ├── SimError                 the vLLM simulator (ops.sim.errors)
    │   ├── SimConfigError       bad option or option combination
    │   ├── SimStartError        a port cannot be bound, or the fleet never became healthy
    │   ├── SimRequestError      a request answered with a vLLM-shaped HTTP error
    │   └── EngineDeadError      the simulated engine died
    ├── SSHError                 SSH to a fleet host (ops.ssh.errors)
    │   ├── HostKeyError         unknown or changed host key, refused
    │   ├── SSHConnectError      refused, unreachable, connection lost
    │   │   └── SSHAuthError     the host answered but refused our credentials
    │   ├── SSHTimeoutError      the host did not answer in time
    │   │   └── CommandTimeoutError  the host answered, the command hung (killed there)
    │   └── RemoteCommandError   the remote command failed
    ├── ProbeError               an endpoint's /health, /v1/models or /metrics (ops.endpoint)
    ├── DiscoverError            port discovery on a host (ops.discover)
    ├── TunnelError              in-process SSH tunnels (ops.tunnels.errors)
    │   ├── TunnelBindError      the local port cannot be bound
    │   └── TunnelStateError     the forwards state file is unreadable
    ├── RemoteLaunchError        vfleet serve / sessions / stop (ops.remote)
    │   ├── RemoteArgumentError  a host, port, model or GPU list that is refused
    │   └── ServeTimeoutError    the server never answered /v1/models
    └── BenchError               the benchmark harness (ops.bench.errors)
        ├── BenchSetupError
        └── BenchRunError
"""

from __future__ import annotations


class OpsError(Exception):
    """Root of every error the ops package raises on purpose."""

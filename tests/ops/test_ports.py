"""Server ports for tests and benchmarks: outside the ephemeral range, and a probe that
reads back its own request is "not up yet", never an error."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from ops.redis_server import free_port
from ops.sim.launcher import _health, free_ports, port_range


def test_ports_are_picked_below_the_kernels_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    lo, hi = port_range()
    assert hi <= low and lo < hi
    ports = [p for _ in range(50) for p in free_ports(3)] + [free_port() for _ in range(50)]
    assert all(lo <= p < low for p in ports), [p for p in ports if not lo <= p < low]


def test_a_probe_answered_with_its_own_request_is_not_healthy() -> None:
    """What a TCP self-connect looks like to the probe: its request comes back as the
    "status line" (``BadStatusLine: GET /health HTTP/1.1``)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(4096))

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        assert _health(f"http://127.0.0.1:{port}/health") is None
    finally:
        t.join(10)
        server.close()

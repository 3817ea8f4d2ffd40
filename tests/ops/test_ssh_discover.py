"""Discovery: listening-port parsing, fleet-file blocks, and servers found through SSH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.discover import (
    REMOTE_LISTENERS_COMMAND,
    DiscoverError,
    FoundServer,
    Listener,
    discover,
    fleet_blocks,
    local_listeners,
    parse_listeners,
    parse_ports,
)
from ops.endpoint import ChannelHttp, DirectHttp
from ops.sim.launcher import SimFleet
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from tests.sshd import Sshd, start_sshd, write_client_files
from workers.fleet import parse_fleet

SS_OUTPUT = """\
LISTEN 0      4096       127.0.0.1:8001       0.0.0.0:*
LISTEN 0      4096         0.0.0.0:8000       0.0.0.0:*
LISTEN 0      128      127.0.0.53%lo:53        0.0.0.0:*
LISTEN 0      4096            [::]:8002          [::]:*
LISTEN 0      4096           [::1]:8003          [::]:*
LISTEN 0      4096               *:9000             *:*
garbage line
"""
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0100007F:9C40 0100007F:1F41 01 00000000:00000000 00:00000000 00000000     0
"""


def test_port_ranges() -> None:
    assert parse_ports("8000-8002, 9000") == [8000, 8001, 8002, 9000]
    for bad in ("80-70", "x", "0-5", "", "1-65535"):
        with pytest.raises(DiscoverError):
            parse_ports(bad)


def test_ss_output_lists_every_listener() -> None:
    got = {(x.address, x.port) for x in parse_listeners(SS_OUTPUT)}
    assert got == {
        ("127.0.0.1", 8001), ("0.0.0.0", 8000), ("127.0.0.53", 53), ("::", 8002),
        ("::1", 8003), ("*", 9000),
    }  # fmt: skip


def test_proc_net_tcp_lists_only_listening_sockets() -> None:
    got = [(x.address, x.port) for x in parse_listeners(PROC_TCP)]
    assert got == [("0.0.0.0", 8000), ("127.0.0.1", 8001)]


def test_fleet_blocks_skip_known_servers_and_add_missing_hosts() -> None:
    servers = [
        FoundServer("gpu1", 8001, "http://127.0.0.1:8001/v1", ["m1"], 4096),
        FoundServer("gpu1", 8002, "http://127.0.0.1:8002/v1", ["m2"]),
        FoundServer(None, 8003, "http://127.0.0.1:8003/v1", ["m3"]),
        FoundServer(None, 8004, "http://127.0.0.1:8004/v1", []),  # no model: not an instance
    ]
    text, added = fleet_blocks(
        servers,
        known_names=["gpu1-8002"],
        known_urls=[(None, "http://127.0.0.1:8003/v1")],
        known_hosts=[],
    )
    assert [s.name for s in added] == ["gpu1-8001"]
    fleet = parse_fleet(text)
    assert list(fleet.hosts) == ["gpu1"]
    (inst,) = fleet.instances
    assert (inst.name, inst.model, inst.host, inst.base_url) == (
        "gpu1-8001", "m1", "gpu1", "http://127.0.0.1:8001/v1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


def test_servers_on_a_remote_loopback_are_found_through_ssh(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, {"gpu1": {}})
    with (
        SimFleet(instances=2) as sim,
        SSHPool(
            ssh_config=SSHConfigFile(cfg), known_hosts=KnownHosts(known), allow_agent=False
        ) as pool,
    ):
        listeners = parse_listeners(pool.run("gpu1", REMOTE_LISTENERS_COMMAND).stdout)
        assert {p for p in sim.ports} <= {x.port for x in listeners}
        http = ChannelHttp(lambda h, p: pool.open_channel("gpu1", h, p))
        ports = [*sim.ports, sshd.port]  # sshd answers, but not as an OpenAI server
        found = discover(listeners, ports, http_client=http, host="gpu1")
    assert [(s.port, s.models, s.base_url) for s in found] == [
        (p, ["sim-model"], f"http://127.0.0.1:{p}/v1") for p in sim.ports
    ]
    assert all(s.host == "gpu1" and s.max_model_len for s in found)


def test_local_discovery_reads_proc_net() -> None:
    with SimFleet() as sim:
        listeners = local_listeners()
        assert Listener("127.0.0.1", sim.ports[0]) in listeners
        (found,) = discover(listeners, sim.ports, http_client=DirectHttp(timeout=2))
    assert found.host is None and found.name == f"local-{sim.ports[0]}"

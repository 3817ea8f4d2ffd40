"""Supervised SSH tunnels against a real sshd and the simulator bound to loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ops.sim.launcher import SimFleet
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from ops.tunnels.errors import TunnelBindError
from ops.tunnels.forward import Tunnel
from ops.tunnels.state import ForwardEntry, ForwardsState
from ops.tunnels.supervisor import SERVER_GONE, SSH_DOWN, UP, SupervisedTunnel
from tests.sshd import Sshd, start_sshd, write_client_files

FAST_SIM = ["--model", "tunnel-model", "--ttft", "0.01", "--itl", "0.001"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="module")
def sim() -> Iterator[SimFleet]:
    with SimFleet(extra_args=FAST_SIM) as fleet:
        yield fleet


@pytest.fixture
def pool(sshd: Sshd, tmp_path: Path) -> Iterator[SSHPool]:
    cfg, known = write_client_files(sshd, tmp_path, {"gpu1": {}})
    with SSHPool(
        ssh_config=SSHConfigFile(cfg),
        known_hosts=KnownHosts(known),
        allow_agent=False,
        connect_timeout=5,
    ) as p:
        yield p


def ask(url: str) -> str:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=20) as client:
        resp = client.chat.completions.create(
            model="tunnel-model", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
    assert resp.model == "tunnel-model"
    return resp.choices[0].message.content or ""


def kill_ssh_sessions(sshd: Sshd) -> int:
    """SIGKILL the sshd processes serving connections (children of our listener)."""
    assert sshd.process is not None
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == sshd.process.pid:
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
    return killed


def test_openai_calls_go_through_the_tunnel(pool: SSHPool, sim: SimFleet) -> None:
    with SupervisedTunnel("gpu1", "127.0.0.1", sim.ports[0], ssh_pool=pool) as fwd:
        assert fwd.wait_up(20), fwd.status
        assert fwd.status.model == "tunnel-model"
        assert fwd.local_port != sim.ports[0]
        answers: list[str] = []
        threads = [threading.Thread(target=lambda: answers.append(ask(fwd.local_url)))]
        threads += [threading.Thread(target=lambda: answers.append(ask(fwd.local_url)))]
        for t in threads:
            t.start()
        answers.append(ask(fwd.local_url))
        for t in threads:
            t.join(30)
        assert len(answers) == 3 and all(answers)
        assert fwd.tunnel.connections >= 3 and fwd.tunnel.failures == 0


def test_dropped_ssh_connection_is_reopened(pool: SSHPool, sim: SimFleet, sshd: Sshd) -> None:
    with SupervisedTunnel(
        "gpu1", "127.0.0.1", sim.ports[0], ssh_pool=pool, check_interval=0.5
    ) as fwd:
        assert fwd.wait_up(20)
        assert ask(fwd.local_url)
        assert kill_ssh_sessions(sshd) >= 1
        seen = fwd.wait_state((SSH_DOWN, SERVER_GONE), 10)  # noticed the drop...
        assert seen.state != UP or seen.reconnects >= 1
        assert fwd.wait_up(15), fwd.status  # ...and came back on its own
        assert fwd.status.reconnects >= 1
        assert ask(fwd.local_url)


def test_a_server_that_goes_away_is_marked_and_comes_back(pool: SSHPool) -> None:
    sim = SimFleet(extra_args=FAST_SIM).start()
    try:
        with SupervisedTunnel(
            "gpu1", "127.0.0.1", sim.ports[0], ssh_pool=pool, check_interval=0.3
        ) as fwd:
            assert fwd.wait_up(20)
            sim.stop()
            gone = fwd.wait_state((SERVER_GONE,), 15)
            assert gone.state == SERVER_GONE and "cannot reach" in (gone.detail or "")
            with pytest.raises(openai.APIConnectionError):
                ask(fwd.local_url)  # the local port stays; the call fails cleanly
            sim = SimFleet(extra_args=FAST_SIM, base_port=sim.ports[0]).start()
            assert fwd.wait_up(20)
            assert ask(fwd.local_url)
    finally:
        sim.stop()


def test_a_taken_local_port_is_a_clear_error(pool: SSHPool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        tunnel = Tunnel("127.0.0.1", 1, opener=lambda h, p: None, local_port=port)
        with pytest.raises(TunnelBindError, match=f"cannot listen on 127.0.0.1:{port}"):
            tunnel.start()


def test_unreachable_host_is_ssh_down_not_an_exception(sshd: Sshd, tmp_path: Path) -> None:
    from ops.redis_server import free_port

    cfg, known = write_client_files(sshd, tmp_path, {"dead": {"Port": str(free_port())}})
    with (
        SSHPool(ssh_config=SSHConfigFile(cfg), known_hosts=KnownHosts(known)) as dead_pool,
        SupervisedTunnel("dead", "127.0.0.1", 8000, ssh_pool=dead_pool) as fwd,
    ):
        assert fwd.status.state == SSH_DOWN and "refused" in (fwd.status.detail or "")
        with pytest.raises(openai.APIConnectionError):
            ask(fwd.local_url)
        assert fwd.tunnel.failures >= 1


def test_state_file_keeps_live_forwards_and_drops_dead_ones(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = ForwardsState(tmp_path / "state" / "forwards.json")
    mine = ForwardEntry(os.getpid(), "gpu1-8001", "gpu1", "127.0.0.1", 8001, 18001, "m", "up")
    stale = ForwardEntry(dead.pid, "gpu2-8001", "gpu2", "127.0.0.1", 8001, 18002)
    state.update(dead.pid, [stale])  # written by a process that then died uncleanly
    state.update(os.getpid(), [mine])
    (entry,) = state.read()
    assert (entry.name, entry.local_url, entry.state) == (
        "gpu1-8001", "http://127.0.0.1:18001/v1", "up",
    )  # fmt: skip
    assert "gpu2" not in state.path.read_text()
    state.remove(os.getpid())
    assert state.read() == []


def test_forward_unit_runs_vfleet_forward_and_restarts() -> None:
    import configparser

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    unit = Path(__file__).parents[2] / "ops/deploy/systemd/vfleet-forward.service"
    parser.read(unit, encoding="utf-8")
    svc = parser["Service"]
    assert svc["ExecStart"].endswith("vfleet forward")
    assert (svc["Restart"], svc["KillMode"]) == ("always", "mixed")
    assert parser["Install"]["WantedBy"] == "vfleet.target"


def test_discovered_servers_become_forward_targets(pool: SSHPool, sim: SimFleet) -> None:
    from workers.tunnels import discover_targets

    port = sim.ports[0]
    targets, failed = discover_targets(pool, ["gpu1", "nowhere"], f"{port},{port + 1}", timeout=5)
    assert [(t.name, t.alias, t.remote_host, t.remote_port, t.model) for t in targets] == [
        (f"gpu1-{port}", "gpu1", "127.0.0.1", port, "tunnel-model")
    ]
    assert list(failed) == ["nowhere"]

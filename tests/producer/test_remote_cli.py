"""``vfleet forward/forwards/serve/sessions/stop`` as subprocesses, against a real sshd, the
simulator and tmux on this machine (the "remote" is this machine over SSH on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ops.gpu import IdleRule
from ops.remote import RemoteLaunchError, RemoteServers, ServeSpec
from ops.sim.launcher import SimFleet, free_ports
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from ops.tunnels.state import ForwardsState
from producer.supervise import vfleet_argv
from tests.services import ROOT, missing, vfleet, wait_for
from tests.sshd import Sshd, start_sshd, write_client_files
from workers.scan.gpus import scan_gpus
from workers.settings import Settings
from workers.store.opening import open_ledger

SIM_TEMPLATE = "{python} -m ops.sim --port {port} --model {model} --ttft 0.01 --itl 0.001"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture
def env(sshd: Sshd, tmp_path: Path, clean_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Settings for the CLI: SSH files, a fleet file, SQLite, a private tmux server."""
    if shutil.which("tmux") is None:
        missing("tmux not installed: apt-get install tmux")
    cfg, known = write_client_files(sshd, tmp_path, {"gpu1": {"SetEnv": "FAKE_GPU_MODE=idle"}})
    sock = f"vfleet-test-{uuid.uuid4().hex[:8]}"
    (tmp_path / "fleet.toml").write_text("[hosts.gpu1]\n")
    logs = Path.home() / ".cache" / "vfleet"  # where `serve` logs on the "remote" (here)
    before = set(logs.glob("serve-*.log"))
    yield {
        **clean_env,
        "VFLEET_SSH_CONFIG": str(cfg),
        "VFLEET_KNOWN_HOSTS": str(known),
        "VFLEET_SSH_AGENT": "false",
        "VFLEET_FLEET_FILE": str(tmp_path / "fleet.toml"),
        "VFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'vfleet.db'}",
        "VFLEET_FORWARDS_STATE": str(tmp_path / "forwards.json"),
        "VFLEET_TMUX_SOCKET": sock,
        "VFLEET_SERVE_COMMAND": SIM_TEMPLATE,
    }
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)
    socket_dir = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
    (socket_dir / sock).unlink(missing_ok=True)
    for log in set(logs.glob("serve-*.log")) - before:
        log.unlink(missing_ok=True)


@pytest.fixture
def servers(env: dict[str, str]) -> Iterator[RemoteServers]:
    """The same remote operations in-process (quicker checks than another CLI run)."""
    pool = SSHPool(
        ssh_config=SSHConfigFile(Path(env["VFLEET_SSH_CONFIG"])),
        known_hosts=KnownHosts(Path(env["VFLEET_KNOWN_HOSTS"])),
        allow_agent=False,
    )
    with pool:
        yield RemoteServers(
            ssh_pool=pool, command_template=SIM_TEMPLATE, tmux_socket=env["VFLEET_TMUX_SOCKET"]
        )


def port_closed(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_forward_supervises_via_instances_until_sigterm(
    env: dict[str, str], tmp_path: Path
) -> None:
    with SimFleet(extra_args=["--model", "fwd-model"]) as sim:
        Path(env["VFLEET_FLEET_FILE"]).write_text(
            '[hosts.gpu1]\n\n[[instances]]\nname = "gpu1-sim"\nmodel = "fwd-model"\n'
            f'base_url = "http://127.0.0.1:{sim.ports[0]}/v1"\nvia = "gpu1"\n'
        )
        (local,) = free_ports(1)
        log = (tmp_path / "forward.log").open("wb")
        proc = subprocess.Popen(
            vfleet_argv("forward", "--local-port", str(local), "--check-interval", "0.5"),
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            state = ForwardsState(Path(env["VFLEET_FORWARDS_STATE"]))

            def listed() -> list[dict[str, object]]:
                return [e.as_dict() for e in state.read()]

            wait_for(lambda: [r["state"] for r in listed()] == ["up"], timeout=60, what="up")
            (row,) = json.loads(vfleet("forwards", "--json", env=env).stdout)
            assert (row["name"], row["local_port"], row["remote_port"], row["model"]) == (
                "gpu1-sim", local, sim.ports[0], "fwd-model",
            )  # fmt: skip
            assert row["pid"] == proc.pid
            with openai.OpenAI(base_url=str(row["local_url"]), api_key="x", max_retries=0) as c:
                models = [m.id for m in c.models.list()]
            assert models == ["fwd-model"]
            table = vfleet("forwards", env=env).stdout
            assert f"gpu1-sim  {local} " in table and " up " in table
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        assert listed() == []
        assert port_closed(local)


def test_serve_waits_lists_and_stop_ends_it(env: dict[str, str], servers: RemoteServers) -> None:
    (port,) = free_ports(1)
    out = vfleet("serve", "gpu1", "--model", "served-model", "--port", str(port),
                 "--timeout", "60", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f'base_url = "http://127.0.0.1:{port}/v1"' in out.stdout
    assert 'via = "gpu1"' in out.stdout and 'model = "served-model"' in out.stdout
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
        assert [m.id for m in client.models.list()] == ["served-model"]
    listed = vfleet("sessions", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (sess,) = json.loads(listed.stdout)["sessions"]
    assert (sess["host"], sess["port"], sess["model"], sess["session"], sess["expires"]) == (
        "gpu1", port, "served-model", f"vfleet-{port}", None,
    )  # fmt: skip
    with pytest.raises(RemoteLaunchError, match="already in use"):
        servers.launch(ServeSpec.checked("gpu1", "m", port))
    stopped = vfleet("stop", f"gpu1:{port}", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert port_closed(port)
    assert servers.sessions("gpu1") == []
    with pytest.raises(RemoteLaunchError, match="no vfleet session for port"):
        servers.stop("gpu1", port)


def test_lifetime_stops_the_server_even_without_vfleet(
    env: dict[str, str], servers: RemoteServers
) -> None:
    (port,) = free_ports(1)
    out = vfleet("serve", "gpu1", "--model", "brief", "--port", str(port), "--lifetime", "5s",
                 env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr  # vfleet has exited; the lifetime runs on the host
    wait_for(lambda: port_closed(port), timeout=30, what="the server to stop at its lifetime")
    wait_for(lambda: servers.sessions("gpu1") == [], timeout=20, what="its session to end")


def test_sessions_show_model_and_expiry(servers: RemoteServers) -> None:
    (port,) = free_ports(1)
    spec = ServeSpec.checked("gpu1", "listed-model", port, lifetime=120)
    servers.launch(spec)
    try:
        assert servers.wait_ready(spec, timeout=60) == "listed-model"
        (sess,) = servers.sessions("gpu1")
        assert (sess.port, sess.model, sess.name) == (port, "listed-model", f"vfleet-{port}")
        assert sess.expires is not None and 100 < sess.expires - time.time() <= 121
    finally:
        servers.stop("gpu1", port)
    assert port_closed(port)


def test_hostile_arguments_are_quoted_never_run(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    argv_file = tmp_path / "argv.json"
    record = (
        "{python} -c 'import json,sys; json.dump(sys.argv[1:], open(sys.argv[1], \"w\"))' "
        f"{argv_file} {{model}} {{extra}}"
    )
    hostile_model = f"x; touch {marker}"
    extra = [f"$(touch {marker})", f"`touch {marker}`", f"a' ; touch {marker}; '", "--ok"]
    (port,) = free_ports(1)
    out = vfleet("serve", "gpu1", "--model", hostile_model, "--port", str(port),
                 "--timeout", "5", "--command", record, "--", *extra, env=env)  # fmt: skip
    # The recorder exits at once, so serve reports that; what matters is what it received.
    started, error = out.stderr.strip().splitlines()
    assert out.returncode == 1 and started.startswith(f"started vfleet-{port} on gpu1: ")
    assert error.startswith("vfleet: error: gpu1: the server on port") and "exited" in error
    assert json.loads(argv_file.read_text()) == [str(argv_file), hostile_model, *extra]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["gpu1; touch /tmp/x", "--model", "m", "--port", "9"], 1, "bad host"),
        (["gpu1", "--model", "m", "--port", "9", "--gpus", "auto"], 1, "never scanned"),
    ],
)
def test_bad_serve_arguments_fail_in_one_line(
    env: dict[str, str], args: list[str], code: int, message: str
) -> None:
    out = vfleet("serve", *args, env=env)
    assert out.returncode == code, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_gpus_auto_picks_idle_gpus_from_the_latest_scan(
    env: dict[str, str], servers: RemoteServers
) -> None:
    settings = Settings(database_url=env["VFLEET_DATABASE_URL"])
    engine = open_ledger(settings).engine
    try:
        with SSHPool(
            ssh_config=SSHConfigFile(Path(env["VFLEET_SSH_CONFIG"])),
            known_hosts=KnownHosts(Path(env["VFLEET_KNOWN_HOSTS"])),
            allow_agent=False,
        ) as pool:
            summary = scan_gpus(["gpu1"], ssh_pool=pool, engine=engine, rule=IdleRule(5, 5, 1))
        assert summary.idle == 2
    finally:
        engine.dispose()
    (port,) = free_ports(1)
    env = {**env, "VFLEET_IDLE_SCANS": "1"}  # the rule the scan above went by
    out = vfleet("serve", "gpu1", "--model", "auto-m", "--port", str(port), "--gpus", "auto",
                 "--tp", "2", "--lifetime", "1m", env=env)  # fmt: skip
    try:
        assert out.returncode == 0, out.stderr
        assert "gpus = [0, 1]" in out.stdout
    finally:
        servers.stop("gpu1", port)
    three = vfleet("serve", "gpu1", "--model", "m", "--port", str(port), "--gpus", "auto",
                   "--tp", "3", env=env)  # fmt: skip
    assert three.returncode == 1 and "2 idle GPUs in the latest scan, 3 needed" in three.stderr


def test_sessions_of_an_unreachable_host_fail_alone(env: dict[str, str], tmp_path: Path) -> None:
    from ops.redis_server import free_port

    cfg = Path(env["VFLEET_SSH_CONFIG"])
    cfg.write_text(cfg.read_text() + f"\nHost dead\n  HostName 127.0.0.1\n  Port {free_port()}\n")
    out = vfleet("sessions", "gpu1", "dead", "--json", env=env)
    assert out.returncode == 3  # some host failed; the others are listed
    data = json.loads(out.stdout)
    assert data["sessions"] == [] and "refused" in data["failed_hosts"]["dead"]


def test_gpus_auto_waits_for_the_idle_rule_and_says_so(env: dict[str, str]) -> None:
    """One scan is not enough (3 by default): the GPUs show as warming up, and serve says
    how many scans are missing instead of "0 idle GPUs"."""
    first = vfleet("gpu", "gpu1", "--live", "--json", env=env)
    assert first.returncode == 0, first.stderr
    (host,) = json.loads(first.stdout)
    assert [(g["state"], g["idle_scans"], g["scans_needed"]) for g in host["gpus"]] == [
        ("idle?", 1, 3), ("idle?", 1, 3),
    ]  # fmt: skip
    table = vfleet("gpu", "gpu1", env={**env, "COLUMNS": "100"}).stdout
    assert table.count("idle? 1/3") == 2
    out = vfleet("serve", "gpu1", "--model", "m", "--port", "9", "--gpus", "auto", env=env)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "0 idle GPUs in the latest scan, 1 needed" in out.stderr
    assert "2 more look idle but have been scanned idle only 1 of the 3 times" in out.stderr
    assert "2 more scans" in out.stderr
    for _ in range(2):
        assert vfleet("gpu", "gpu1", "--live", env=env).returncode == 0
    (host,) = json.loads(vfleet("gpu", "gpu1", "--json", env=env).stdout)
    assert [g["state"] for g in host["gpus"]] == ["idle", "idle"]


def test_a_template_with_a_quoted_placeholder_is_refused_and_nothing_runs(
    env: dict[str, str], tmp_path: Path, servers: RemoteServers
) -> None:
    marker = tmp_path / "pwned"
    (port,) = free_ports(1)
    template = '{python} -c "import sys; print(sys.argv)" "{model}" --port {port}'
    out = vfleet("serve", "gpu1", "--model", f"$(touch {marker})", "--port", str(port),
                 "--command", template, env=env)  # fmt: skip
    assert out.returncode == 1
    assert "{model} is inside double quotes" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not marker.exists() and servers.sessions("gpu1") == []


def test_a_model_name_ending_in_a_semicolon_is_listed_whole(
    env: dict[str, str], servers: RemoteServers
) -> None:
    (port,) = free_ports(1)
    spec = ServeSpec.checked("gpu1", "org/odd;", port, lifetime=60)
    servers.launch(spec)
    try:
        assert servers.wait_ready(spec, timeout=60) == "org/odd;"
        listed = vfleet("sessions", "gpu1", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        (sess,) = json.loads(listed.stdout)["sessions"]
        assert sess["model"] == "org/odd;"
    finally:
        servers.stop("gpu1", port)

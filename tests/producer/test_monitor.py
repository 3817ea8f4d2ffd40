"""``vfleet gpu / vllm / discover / beat / scan-worker`` as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ops.redis_server import free_port
from ops.sim.launcher import SimFleet
from tests.services import ROOT, vfleet, wait_for
from tests.sshd import UUID0, UUID1, Sshd, start_sshd, write_client_files
from workers.fleet import load_fleet
from workers.keys import BEAT_LOCK, health_key
from workers.scan.vllm import probe_targets
from workers.store.engine import make_engine
from workers.store.models import GpuSnapshot, VllmSnapshot

ALIASES = {
    "gpu-a": {"SetEnv": "FAKE_GPU_MODE=busy"},
    "gpu-b": {"SetEnv": "FAKE_GPU_MODE=idle"},
    "gpu-down": {"Port": str(free_port())},
}
# Hosts that answer but cannot be read, each for its own reason.
TROUBLE = {
    "gpu-h100": {"SetEnv": "FAKE_GPU_MODE=h100"},
    "gpu-sick": {"SetEnv": "FAKE_GPU_MODE=error"},
    "gpu-hung": {"SetEnv": "FAKE_GPU_MODE=hang"},
    # Same server under another name: its key is not in known_hosts for that name.
    "gpu-newkey": {"HostName": "localhost"},
}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="module")
def sims() -> Iterator[SimFleet]:
    with SimFleet(instances=2, extra_args=["--ttft", "0", "--itl", "0"]) as fleet:
        yield fleet


@pytest.fixture
def env(
    sshd: Sshd, sims: SimFleet, tmp_path: Path, clean_env: dict[str, str], redis_url: str
) -> dict[str, str]:
    """A fleet of three hosts (one down) and two simulator instances, one through SSH."""
    cfg, known = write_client_files(sshd, tmp_path / "ssh", {**ALIASES, **TROUBLE})
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        "[hosts.gpu-a]\n[hosts.gpu-b]\n[hosts.gpu-down]\n\n"
        f'[[instances]]\nname = "sim-a"\nbase_url = "{sims.urls[0]}"\nmodel = "sim-model"\n'
        f'host = "gpu-a"\n\n'
        f'[[instances]]\nname = "sim-b"\nbase_url = "{sims.urls[1]}"\nmodel = "sim-model"\n'
    )
    return {
        **clean_env,
        "VFLEET_FLEET_FILE": str(fleet),
        "VFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'vfleet.db'}",
        "VFLEET_BROKER_URL": redis_url,
        "VFLEET_SSH_CONFIG": str(cfg),
        "VFLEET_KNOWN_HOSTS": str(known),
        "VFLEET_SSH_AGENT": "false",
        "VFLEET_SSH_CONNECT_TIMEOUT": "3",
        "VFLEET_SSH_COMMAND_TIMEOUT": "3",
        "VFLEET_IDLE_SCANS": "1",
        "COLUMNS": "200",
    }


def ok(done: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert done.returncode == code, done.stderr
    return done.stdout


def test_gpu_live_json_then_stored_table(env: dict[str, str]) -> None:
    done = vfleet("gpu", "--live", "--json", "gpu-a", "gpu-b", "gpu-down", env=env)
    hosts = {h["host"]: h for h in json.loads(ok(done, 3))}  # gpu-down failed: exit 3
    assert set(hosts) == {"gpu-a", "gpu-b", "gpu-down"}
    assert hosts["gpu-down"]["state"] == "unreachable"
    assert "refused" in hosts["gpu-down"]["error"]
    a = hosts["gpu-a"]["gpus"]
    assert [(g["uuid"], g["idle"]) for g in a] == [(UUID1, True), (UUID0, False)]
    assert a[1]["utilization"] == 97.0 and a[1]["processes"] == 1
    assert a[1]["process_list"] == [
        {"pid": 4242, "name": "/usr/bin/python3", "used_memory_mib": 73990.0}
    ]
    assert a[1]["memory_percent"] == pytest.approx(90.3, abs=0.1)
    assert all(g["idle"] for g in hosts["gpu-b"]["gpus"])

    stored = vfleet("gpu", "gpu-a", "gpu-b", "gpu-down", env=env)  # the snapshots just stored
    table = ok(stored, 3)
    assert "gpu-down: UNREACHABLE: " in table and "refused" in table
    assert table.count("idle") == 3 and "busy" in table and "A100" in table
    assert "4242 python3" in table
    assert table.index("gpu-b") < table.index("gpu-a")  # more idle GPUs first
    fine = vfleet("gpu", "gpu-a", "gpu-b", "--json", env=env)
    assert fine.returncode == 0, fine.stderr  # every host answered


def test_each_host_that_cannot_be_read_says_why(env: dict[str, str]) -> None:
    """A hung nvidia-smi, a refused host key, a closed port and a GPU in an error state:
    four different answers, none of them "UNREACHABLE" but the closed port."""
    names = ["gpu-sick", "gpu-hung", "gpu-newkey", "gpu-down"]
    hosts = {h["host"]: h for h in json.loads(ok(vfleet("gpu", "--live", "--json", *names,
                                                         env=env), 3))}  # fmt: skip
    assert {n: hosts[n]["state"] for n in names} == {
        "gpu-sick": "ok", "gpu-hung": "timeout", "gpu-newkey": "host-key",
        "gpu-down": "unreachable",
    }  # fmt: skip
    assert "did not finish in 3s; stopped on the host" in hosts["gpu-hung"]["error"]
    assert "is not in" in hosts["gpu-newkey"]["error"]
    sick = {g["index"]: g for g in hosts["gpu-sick"]["gpus"]}
    assert sick[0]["state"] == "unknown" and not sick[0]["idle"]  # [Unknown Error]
    assert sick[1]["state"] == "idle"
    table = ok(vfleet("gpu", *names, env=env), 3)
    lines = table.splitlines()
    for label in ("gpu-hung: TIMEOUT", "gpu-newkey: HOST KEY REFUSED", "gpu-down: UNREACHABLE"):
        assert sum(1 for ln in lines if ln.startswith(label)) == 1, table
    assert "unknown" in table


@pytest.mark.parametrize("width", [80, 100])
def test_gpu_table_reads_at_80_and_100_columns(env: dict[str, str], width: int) -> None:
    names = ["gpu-h100", "gpu-b", "gpu-sick", "gpu-down"]
    vfleet("gpu", "--live", *names, env=env)
    table = ok(vfleet("gpu", *names, env={**env, "COLUMNS": str(width)}), 3)
    lines = table.splitlines()
    assert all(len(ln) <= width for ln in lines), table
    gpu_lines = [ln for ln in lines if " H100 80GB HBM3 " in ln or " A100-SXM4-80GB " in ln]
    assert len(gpu_lines) == 6, table  # every GPU name whole, on its own line
    # Process names give way first (cut with …), whole from 100 columns on.
    assert "31337 python3" in table and "31338 VLLM::Eng" in table
    assert ("31338 VLLM::EngineCore" in table) is (width >= 100)
    assert ("power" in lines[0]) is (width >= 100)
    assert sum(1 for ln in lines if ln.startswith("gpu-down: UNREACHABLE")) == 1


def test_gpu_live_refuses_unknown_host_keys_unless_told(env: dict[str, str]) -> None:
    Path(env["VFLEET_KNOWN_HOSTS"]).write_text("")
    refused = json.loads(ok(vfleet("gpu", "gpu-b", "--live", "--json", env=env), 3))
    assert refused[0]["state"] == "host-key"
    assert "not in" in refused[0]["error"] and refused[0]["gpus"] == []
    accepted = ok(vfleet("gpu", "gpu-b", "--live", "--json", "--accept-new-host-keys", env=env))
    assert json.loads(accepted)[0]["error"] is None
    assert "ssh-ed25519" in Path(env["VFLEET_KNOWN_HOSTS"]).read_text()


def test_vllm_live_json_reads_both_instances_and_publishes_health(env: dict[str, str]) -> None:
    rows = {r["instance"]: r for r in json.loads(ok(vfleet("vllm", "--live", "--json", env=env)))}
    assert set(rows) == {"sim-a", "sim-b"}
    assert all(r["healthy"] and r["model"] == "sim-model" for r in rows.values())
    assert rows["sim-a"]["max_model_len"] and rows["sim-a"]["kv_cache_usage"] is not None
    client = redis.Redis.from_url(env["VFLEET_BROKER_URL"])
    assert json.loads(client.get(health_key("sim-a")) or b"{}")["healthy"] is True
    client.close()
    assert rows["sim-a"]["running"] == 0 and isinstance(rows["sim-a"]["running"], int)
    assert isinstance(rows["sim-a"]["max_model_len"], int)
    # --live had no recent snapshot to measure against: it read the counters twice.
    assert rows["sim-a"]["generation_tokens_per_s"] == 0.0
    table = ok(vfleet("vllm", env=env))
    assert "sim-a" in table and "up" in table and "sim-model" in table
    assert "0.0" in table and " 0 " in table


LLAMAS = ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-70B-Instruct")


@pytest.fixture(scope="module")
def llamas() -> Iterator[list[SimFleet]]:
    fleets = [SimFleet(extra_args=["--model", m, "--ttft", "0", "--itl", "0"]) for m in LLAMAS]
    try:
        yield [f.start() for f in fleets]
    finally:
        for f in fleets:
            f.stop()


@pytest.mark.parametrize("width", [80, 100])
def test_vllm_table_reads_at_80_and_100_columns_and_a_dead_instance_exits_3(
    env: dict[str, str], llamas: list[SimFleet], width: int
) -> None:
    fleet = Path(env["VFLEET_FLEET_FILE"])
    fleet.write_text(
        "".join(
            f'[[instances]]\nname = "gpu1-800{n}"\nbase_url = "{sim.urls[0]}"\nmodel = "{m}"\n'
            for n, (sim, m) in enumerate(zip(llamas, LLAMAS, strict=True))
        )
        + f'[[instances]]\nname = "gpu2-8000"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
        'model = "dead"\n'
    )
    env = {**env, "COLUMNS": str(width)}
    rows = {
        r["instance"]: r for r in json.loads(ok(vfleet("vllm", "--live", "--json", env=env), 3))
    }
    assert [rows[n]["healthy"] for n in ("gpu1-8000", "gpu1-8001", "gpu2-8000")] == [
        True, True, False,
    ]  # fmt: skip
    table = ok(vfleet("vllm", env=env), 3)
    lines = table.splitlines()
    assert all(len(ln) <= width for ln in lines), table
    assert "Llama-3.1-8B-Instruct" in table and "Llama-3.1-70B-Instruct" in table
    down = [ln for ln in lines if ln.startswith("gpu2-8000: DOWN: ")]
    assert len(down) == 1 and "refused" in down[0], table
    assert ("max len" in lines[0]) is (width >= 100)
    up = vfleet("vllm", "gpu1-8000", "gpu1-8001", env=env)
    assert up.returncode == 0, up.stderr


def test_discover_writes_new_servers_once(env: dict[str, str], sims: SimFleet) -> None:
    fleet = Path(env["VFLEET_FLEET_FILE"])
    fleet.write_text("")
    ports = f"{sims.ports[0]}-{sims.ports[1]}"
    args = ("discover", "gpu-b", "gpu-down", "--ports", ports, "--write", "--json")
    first = json.loads(ok(vfleet(*args, env=env), 3))  # gpu-down could not be searched
    assert [(s["name"], s["added"]) for s in first["servers"]] == [
        (f"gpu-b-{p}", True) for p in sims.ports
    ]
    assert "refused" in first["failed_hosts"]["gpu-down"]
    text = fleet.read_text()
    assert text.count("[[instances]]") == 2 and '[hosts."gpu-b"]' in text
    again = json.loads(ok(vfleet(*args, env=env), 3))
    assert not any(s["added"] for s in again["servers"])
    assert fleet.read_text() == text
    # The written fleet loads, and its loopback instances are scanned through SSH to gpu-b.
    targets = probe_targets(load_fleet(fleet))
    assert [(t.name, t.via) for t in targets] == [(f"gpu-b-{p}", "gpu-b") for p in sims.ports]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "producer", *args], env=env, cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_beat_and_scan_worker_store_snapshots(env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **env,
        "VFLEET_GPU_SCAN_INTERVAL": "1",
        "VFLEET_VLLM_SCAN_INTERVAL": "1",
        "VFLEET_BEAT_RECONCILE_INTERVAL": "3600",
        "VFLEET_BEAT_PIDFILE": str(tmp_path / "beat.pid"),
        "VFLEET_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
    }
    engine = make_engine(env["VFLEET_DATABASE_URL"])
    client = redis.Redis.from_url(env["VFLEET_BROKER_URL"])
    worker = _start(["scan-worker", "--loglevel", "INFO"], env, tmp_path / "worker.log")
    beat = _start(["beat", "--loglevel", "INFO"], env, tmp_path / "beat.log")
    try:

        def count(model: type[GpuSnapshot] | type[VllmSnapshot]) -> int:
            try:
                with Session(engine) as s:
                    return int(s.scalar(select(func.count()).select_from(model)) or 0)
            except Exception:  # the worker has not created the schema yet
                return 0

        wait_for(lambda: count(GpuSnapshot) >= 6, timeout=90, what="two GPU scans stored")
        wait_for(lambda: count(VllmSnapshot) >= 4, timeout=30, what="two vLLM scans stored")
        assert client.get(health_key("sim-b")) is not None
        assert client.get(BEAT_LOCK) is not None
        second = vfleet("beat", env={**env, "VFLEET_BEAT_PIDFILE": str(tmp_path / "2.pid")})
        assert second.returncode == 1
        assert "another beat is running" in second.stderr
    finally:
        _stop(beat)
        _stop(worker)
        engine.dispose()
    logs = (tmp_path / "worker.log").read_text()
    assert "vfleet.scan_gpus" in logs and "vfleet.scan_vllm" in logs
    assert client.get(BEAT_LOCK) is None, "a stopped beat releases its lock"
    client.close()


def test_help_names_the_idle_rule_and_its_settings() -> None:
    text = vfleet("gpu", "--help", env={**os.environ, "COLUMNS": "100"}).stdout
    flat = " ".join(text.split())
    names = ("VFLEET_IDLE_UTILIZATION", "VFLEET_IDLE_MEMORY", "VFLEET_IDLE_SCANS")
    for name in (*names, "VFLEET_SSH_COMMAND_TIMEOUT", "idle? N/3", "unknown", "Exit status 3"):
        assert name in flat, name

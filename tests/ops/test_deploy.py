"""Deploy assets: docker-compose.yml, systemd units, the vLLM scripts, the Grafana dashboard."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.sim.launcher import free_ports
from tests.producer.test_exporter import fill
from tests.services import ROOT, missing
from workers.celery_app import DEFAULT_SOFT_SHUTDOWN_TIMEOUT
from workers.exporter import PREFIX, LedgerCollector, registry_for
from workers.fleet import load_fleet
from workers.settings import Settings
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade

pytestmark = pytest.mark.timeout(180)

DEPLOY = ROOT / "ops" / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
SCRIPTS = sorted(DEPLOY.glob("*.sh"))


def compose_config(*profiles: str) -> dict[str, Any]:
    """The file as docker-compose resolves it (anchors, merges, .env.example values)."""
    if shutil.which("docker-compose") is None:
        missing("apt-get install docker-compose")
    args = ["docker-compose", "--env-file", str(ROOT / ".env.example")]
    for p in profiles:
        args += ["--profile", p]
    res = subprocess.run(
        [*args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    config: dict[str, Any] = yaml.safe_load(res.stdout)
    return config


def test_compose_file_is_valid() -> None:
    if shutil.which("docker-compose") is None:
        missing("apt-get install docker-compose")
    for profiles in ([], ["sim"], ["gpu"]):
        flags = [f for p in profiles for f in ("--profile", p)]
        res = subprocess.run(
            ["docker-compose", "--env-file", ".env.example", *flags, "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, (profiles, res.stderr)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{target: source}`` of a service's volumes (short or long syntax)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v["source"]
        else:
            source, target = v.split(":")[:2]
            out[target] = source
    return out


def _compose_fleet_path(config: dict[str, Any]) -> Path:
    return Path(mounts(config["services"]["worker-gpu1-8001"])["/etc/vfleet/fleet.toml"])


def test_one_worker_service_per_instance_of_the_mounted_fleet_file() -> None:
    config = compose_config()
    fleet = load_fleet(_compose_fleet_path(config))
    workers = {
        name: svc
        for name, svc in config["services"].items()
        if svc.get("command", [])[:2] == ["vfleet", "worker"]
    }
    assert {f"worker-{i.name}" for i in fleet.instances} == set(workers)
    for inst in fleet.instances:
        svc = workers[f"worker-{inst.name}"]
        assert svc["command"] == ["vfleet", "worker", "--instance", inst.name]
        assert f"-d {inst.name}@" in " ".join(svc["healthcheck"]["test"])
        assert svc["restart"] == "unless-stopped"
        stop = svc["stop_grace_period"]
        assert _seconds(stop) > max(DEFAULT_SOFT_SHUTDOWN_TIMEOUT, Settings().shutdown_grace)


def test_example_fleet_instances_of_the_box_have_worker_services() -> None:
    services = compose_config()["services"]
    example = load_fleet(ROOT / "fleet.example.toml")
    on_box = [i for i in example.instances if i.host == "gpu1"]
    assert on_box, "fleet.example.toml has no instance on gpu1"
    for inst in on_box:
        assert services[f"worker-{inst.name}"]["command"][-1] == inst.name


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(text))
    assert m and any(m.groups()), text
    return int(m[1] or 0) * 60 + float(m[2] or 0)


def test_redis_is_append_only_noeviction_with_a_password() -> None:
    redis = compose_config()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "--requirepass" in command
    assert redis["environment"]["REDIS_PASSWORD"] == "change-me-redis"
    assert "/data" in mounts(redis)
    assert redis["healthcheck"]["test"]


def test_stack_services_health_and_restart() -> None:
    services = compose_config()["services"]
    assert "/var/lib/postgresql/data" in mounts(services["postgres"])
    assert services["migrate"]["command"] == ["vfleet", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["beat"]["command"] == ["vfleet", "beat"]
    assert services["scan-worker"]["command"] == ["vfleet", "scan-worker"]
    for name in ("beat", "scan-worker", "worker-gpu1-8001", "exporter"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    for name in ("redis", "postgres", "flower", "exporter", "worker-gpu1-8001"):
        assert services[name]["healthcheck"]["test"], name
    broker = services["beat"]["environment"]["VFLEET_BROKER_URL"]
    assert broker == "redis://:change-me-redis@redis:6379/0"
    build = services["beat"]["build"]
    assert build["dockerfile"] == "ops/deploy/Dockerfile" and Path(build["context"]) == ROOT


def test_flower_requires_auth() -> None:
    flower = compose_config()["services"]["flower"]
    env = flower["environment"]
    assert env["VFLEET_FLOWER_USER"] == "admin" and env["VFLEET_FLOWER_PASSWORD"]
    assert "--no-auth" not in flower["command"]
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])


def test_missing_passwords_stop_compose(tmp_path: Path) -> None:
    if shutil.which("docker-compose") is None:
        missing("apt-get install docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.endswith("PASSWORD")}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    res = subprocess.run(
        ["docker-compose", "--env-file", str(empty), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert res.returncode != 0 and "PASSWORD" in res.stderr


def test_gpu_profile_runs_vllm_on_the_instances_gpu_pairs() -> None:
    config = compose_config("gpu")
    fleet = load_fleet(_compose_fleet_path(config))
    for inst in fleet.instances:
        svc = config["services"][f"vllm-{inst.name}"]
        assert svc["profiles"] == ["gpu"] and svc["image"].startswith("vllm/vllm-openai")
        devices = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert devices["device_ids"] == [str(g) for g in inst.gpus]
        assert "gpu" in devices["capabilities"]
        port = inst.base_url.rsplit(":", 1)[1].split("/")[0]
        assert f"--port={port}" in svc["command"]
        assert f"--tensor-parallel-size={len(inst.gpus)}" in svc["command"]
        assert any(a.startswith("--max-num-seqs=") for a in svc["command"])
        assert any(a.startswith("--gpu-memory-utilization=") for a in svc["command"])
        assert f"--model={inst.model}" in svc["command"]
    all_gpus = [g for i in fleet.instances for g in i.gpus]
    assert sorted(all_gpus) == list(range(8)), "4 instances x 2 GPUs on 8 GPUs, none shared"


def test_sim_profile_answers_for_every_instance() -> None:
    config = compose_config("sim")
    fleet = load_fleet(_compose_fleet_path(config))
    sim = config["services"]["sim"]
    assert sim["profiles"] == ["sim"] and sim["command"][:2] == ["vfleet", "sim"]
    aliases = set(sim["networks"]["default"]["aliases"])
    for inst in fleet.instances:
        host = inst.base_url.split("//", 1)[1].split(":", 1)[0]
        assert host in aliases
    # Profiles keep the two apart: vLLM containers only with `--profile gpu`.
    vllm = [svc for name, svc in config["services"].items() if name.startswith("vllm-")]
    assert vllm and all(svc["profiles"] == ["gpu"] for svc in vllm)


# -- systemd ---------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name, encoding="utf-8")
    assert parser.sections(), name
    return parser


def test_worker_unit_stops_gracefully_and_restarts() -> None:
    u = unit("vfleet-worker@.service")
    svc = u["Service"]
    assert svc["ExecStart"].endswith("vfleet worker --instance %i")
    assert svc["KillMode"] == "mixed"
    assert svc["Restart"] == "always"
    grace = max(DEFAULT_SOFT_SHUTDOWN_TIMEOUT, Settings().shutdown_grace)
    assert float(svc["TimeoutStopSec"]) > grace + 30


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("vfleet-beat.service", "vfleet beat"),
        ("vfleet-scan-worker.service", "vfleet scan-worker"),
        ("vfleet-flower.service", "vfleet flower"),
        ("vfleet-exporter.service", "vfleet exporter"),
    ],
)
def test_service_units(name: str, command: str) -> None:
    svc = unit(name)["Service"]
    assert command in svc["ExecStart"]
    assert svc["Restart"] == "always"
    assert svc["EnvironmentFile"]
    assert "KillMode" in svc


def test_flower_unit_has_no_password_and_no_open_mode() -> None:
    text = (DEPLOY / "systemd" / "vfleet-flower.service").read_text()
    assert "--no-auth" not in text and "PASSWORD=" not in text
    assert "flower.env" in text


# -- vLLM scripts ----------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if shutil.which("shellcheck") is not None:
        res = subprocess.run(
            ["shellcheck", "-x", script.name],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stdout


def _fleet_file(tmp: Path, ports: list[int]) -> Path:
    lines = ["[hosts.box]\n", "[hosts.other]\n"]
    for n, port in enumerate(ports):
        lines.append(
            f'[[instances]]\nname = "box-{port}"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
            f'model = "sim-model"\nconcurrency = 4\nhost = "box"\ngpus = [{2 * n}, {2 * n + 1}]\n'
        )
    lines.append(
        '[[instances]]\nname = "elsewhere"\nbase_url = "http://10.9.9.9:8001/v1"\n'
        'model = "sim-model"\nhost = "other"\n'
    )
    path = tmp / "fleet.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    load_fleet(path)  # the test's fleet file is a valid one
    return path


def _script_env(tmp: Path, fleet: Path) -> dict[str, str]:
    sim = f"{sys.executable} -m ops.sim --model {{model}} --port {{port}}"
    sim += " --max-num-seqs {concurrency}"
    return dict(
        os.environ,
        FLEET_FILE=str(fleet),
        VLLM_HOST="box",
        VLLM_CMD=sim,
        VLLM_RUN_DIR=str(tmp / "run"),
        VLLM_LOG_DIR=str(tmp / "logs"),
        VLLM_START_TIMEOUT="60",
        VLLM_STOP_TIMEOUT="20",
        PYTHONPATH=str(ROOT),
    )


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / script)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_vllm_scripts_start_check_and_stop_the_box_instances(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        missing("apt-get install curl")
    ports = free_ports(2)
    env = _script_env(tmp_path, _fleet_file(tmp_path, ports))
    try:
        started = _run("vllm-start.sh", env)
        assert started.returncode == 0, started.stdout + started.stderr
        for port in ports:
            assert f"box-{port}: healthy on port {port}" in started.stdout
            models = httpx2.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
            assert models["data"][0]["id"] == "sim-model"
        assert "elsewhere" not in started.stdout
        pids = [int((tmp_path / "run" / f"box-{p}.pid").read_text()) for p in ports]
        # The pidfile names the server itself, started on its GPU pair.
        environ = Path(f"/proc/{pids[1]}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=2,3" in environ
        assert b"ops.sim" in Path(f"/proc/{pids[1]}/cmdline").read_bytes()
        assert (tmp_path / "logs" / f"box-{ports[1]}.log").is_file()

        again = _run("vllm-start.sh", env)
        assert again.returncode == 0 and again.stdout.count("already running") == 2

        checked = _run("vllm-check.sh", env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count("healthy") == 2
    finally:
        stopped = _run("vllm-stop.sh", env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count("stopped") == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    checked = _run("vllm-check.sh", env)
    assert checked.returncode == 1 and checked.stdout.count("stopped") == 2
    assert not list((tmp_path / "run").glob("*.pid"))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_vllm_start_fails_for_a_host_with_no_instance(tmp_path: Path) -> None:
    env = _script_env(tmp_path, _fleet_file(tmp_path, [18001]))
    env["VLLM_HOST"] = "nobody"
    res = _run("vllm-start.sh", env)
    assert res.returncode == 1 and "no instance has host = 'nobody'" in res.stderr


def test_default_command_is_vllm_serve_on_the_instance_gpus(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    res = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "fleet_instances.py"),
            str(ROOT / "fleet.example.toml"),
            "gpu1",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rows = [line.split("\x1f") for line in res.stdout.splitlines()]
    assert [r[:3] for r in rows] == [["gpu1-8001", "8001", "0,1"], ["gpu1-8002", "8002", "2,3"]]
    assert rows[0][3].startswith("vllm serve Qwen/Qwen2.5-7B-Instruct --host 0.0.0.0 --port 8001")
    assert "--tensor-parallel-size 2 --max-num-seqs 32" in rows[0][3]


# -- Grafana ---------------------------------------------------------------------------


def test_grafana_dashboard_queries_only_exported_metrics(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana-vfleet.json").read_text())
    assert dashboard["uid"] == "vfleet"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(rf"\b{PREFIX}_[a-z_]+", " ".join(exprs)))
    assert len(used) >= 10
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    fill(Ledger(engine))
    text = generate_latest(registry_for(LedgerCollector(engine))).decode()
    engine.dispose()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert used <= exported, used - exported

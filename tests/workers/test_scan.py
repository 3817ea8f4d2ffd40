"""Scans as plain functions: real sshd, real simulators, real Redis, SQLite ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import openai
import paramiko
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ops.gpu import IdleRule
from ops.redis_server import free_port
from ops.sim.launcher import SimFleet
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from tests.sshd import UUID0, UUID1, Sshd, start_sshd, write_client_files
from workers.fleet import parse_fleet
from workers.keys import health_key
from workers.scan.gpus import scan_gpus
from workers.scan.snapshots import gpu_view, prune_snapshots, vllm_view
from workers.scan.vllm import ProbeTarget, http_for, probe_targets, scan_vllm
from workers.store.engine import make_engine
from workers.store.migrate import ensure_schema
from workers.store.models import GpuSnapshot, VllmSnapshot, utcnow

HOSTS = {
    "idle1": {"SetEnv": "FAKE_GPU_MODE=idle"},
    "busy1": {"SetEnv": "FAKE_GPU_MODE=busy"},
    "mig1": {"SetEnv": "FAKE_GPU_MODE=mig"},
    "nogpu": {"SetEnv": "FAKE_GPU_MODE=missing"},
    "sick1": {"SetEnv": "FAKE_GPU_MODE=error"},
}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    eng = make_engine(sqlite_url)
    ensure_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def pool(sshd: Sshd, tmp_path: Path) -> Iterator[SSHPool]:
    aliases = {**HOSTS, "down": {"Port": str(free_port())}}
    cfg, known = write_client_files(sshd, tmp_path / "ssh", aliases)
    with SSHPool(
        ssh_config=SSHConfigFile(cfg),
        known_hosts=KnownHosts(known),
        allow_agent=False,
        connect_timeout=3,
    ) as p:
        yield p


def test_gpu_scan_stores_snapshots_and_idle_needs_n_scans(pool: SSHPool, engine: Engine) -> None:
    rule = IdleRule(utilization=5, memory_percent=5, scans=2)
    hosts = [*HOSTS, "down"]
    first = scan_gpus(hosts, ssh_pool=pool, engine=engine, rule=rule)
    assert sorted(first.ok) == ["busy1", "idle1", "mig1", "sick1"]
    assert set(first.failed) == {"nogpu", "down"}
    assert first.failed["nogpu"].startswith("no-nvidia-smi: nvidia-smi not found")
    assert first.failed["down"].startswith("unreachable: ") and "refused" in first.failed["down"]
    assert first.gpus == 7 and first.idle == 0  # one scan is not enough to call a GPU idle
    second = scan_gpus(hosts, ssh_pool=pool, engine=engine, rule=rule)
    # idle1 x2, busy1's GPU 1, sick1's healthy GPU 1; never the MIG GPU ([N/A] utilisation)
    # nor sick1's GPU 0 ([Unknown Error]), though both show 0 MiB used.
    assert second.idle == 4
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(GpuSnapshot)) == 18
        busy0 = s.scalars(
            select(GpuSnapshot).where(GpuSnapshot.host == "busy1", GpuSnapshot.uuid == UUID0)
        ).first()
    assert busy0 is not None and busy0.idle is False
    assert busy0.processes == {
        "count": 1,
        "items": [{"pid": 4242, "name": "/usr/bin/python3", "used_memory_mib": 73990.0}],
    }

    view = {h.host: h for h in gpu_view(engine, [*hosts, "never"], history=5, rule=rule)}
    assert view["never"].taken_at is None and view["never"].state == "never-scanned"
    assert view["down"].state == "unreachable" and "refused" in (view["down"].error or "")
    assert view["down"].gpus == [] and view["down"].failed
    assert view["nogpu"].state == "no-nvidia-smi" and not view["idle1"].failed
    busy = view["busy1"].gpus
    assert [(g.uuid, g.idle) for g in busy] == [(UUID1, True), (UUID0, False)]  # idle first
    assert busy[1].history == [97.0, 97.0] and busy[1].processes == 1
    assert busy[1].process_list == [
        {"pid": 4242, "name": "/usr/bin/python3", "used_memory_mib": 73990.0}
    ]
    assert [(g.index, g.state) for g in view["sick1"].gpus] == [(1, "idle"), (0, "unknown")]
    assert [g.state for g in view["mig1"].gpus] == ["unknown"]


def test_changed_idle_threshold_applies_to_stored_history(pool: SSHPool, engine: Engine) -> None:
    scan_gpus(["busy1"], ssh_pool=pool, engine=engine, rule=IdleRule(scans=2))
    strict = IdleRule(utilization=5, memory_percent=0.001, scans=2)
    assert scan_gpus(["busy1"], ssh_pool=pool, engine=engine, rule=strict).idle == 0


def test_vllm_scan_stores_rates_and_publishes_health(engine: Engine, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with SimFleet(instances=2, extra_args=["--ttft", "0", "--itl", "0"]) as sim:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        targets = [
            ProbeTarget("a", sim.urls[0]),
            ProbeTarget("b", sim.urls[1]),
            ProbeTarget("dead", dead),
        ]

        def scan() -> list[VllmSnapshot]:
            return scan_vllm(
                targets,
                engine=engine,
                http_client_for=lambda t: http_for(t, ssh_pool=None, timeout=2),
                redis_client=client,
                health_ttl=30,
            )

        scan()
        llm = openai.OpenAI(base_url=sim.urls[0], api_key="sim", max_retries=0)
        for _ in range(3):
            llm.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=16
            )
        llm.close()
        time.sleep(0.2)
        rows = {r.instance: r for r in scan()}
    assert rows["a"].healthy and rows["a"].model == "sim-model"
    assert rows["a"].prompt_tokens_per_s and rows["a"].prompt_tokens_per_s > 0
    assert rows["a"].generation_tokens_per_s and rows["a"].generation_tokens_per_s > 0
    assert rows["b"].generation_tokens_per_s == 0.0
    assert not rows["dead"].healthy and "refused" in (rows["dead"].error or "")
    up = json.loads(client.get(health_key("a")) or b"")
    down = json.loads(client.get(health_key("dead")) or b"")
    assert up["healthy"] is True and up["error"] is None and up["checked_at"] > time.time() - 60
    assert down["healthy"] is False and "refused" in down["error"]
    assert 0 < int(client.ttl(health_key("a"))) <= 30
    client.close()
    view = {r["instance"]: r for r in vllm_view(engine)}
    assert view["a"]["running"] == 0 and view["a"]["kv_cache_usage"] is not None


def test_loopback_servers_of_a_host_are_scanned_through_ssh(pool: SSHPool, engine: Engine) -> None:
    with SimFleet(extra_args=["--metrics-version", "v0"]) as sim:
        fleet = parse_fleet(
            f"""
            [hosts.idle1]
            [[instances]]
            name = "tunnelled"
            base_url = "{sim.urls[0]}"
            model = "sim-model"
            host = "idle1"
            [[instances]]
            name = "direct"
            base_url = "{sim.urls[0]}"
            model = "sim-model"
            """
        )
        targets = probe_targets(fleet)
        assert [t.via for t in targets] == ["idle1", None]
        opened: list[tuple[str, int]] = []
        real_open = pool.open_channel

        def spy(alias: str, host: str, port: int) -> paramiko.Channel:
            opened.append((host, port))
            return real_open(alias, host, port)

        pool.open_channel = spy  # type: ignore[method-assign]
        rows = scan_vllm(
            targets,
            engine=engine,
            http_client_for=lambda t: http_for(t, ssh_pool=pool, timeout=3),
        )
    assert all(r.healthy and r.model == "sim-model" and r.swapped == 0 for r in rows)
    assert opened and set(opened) == {("127.0.0.1", sim.ports[0])}
    assert probe_targets(fleet, tunnel_loopback=False)[0].via is None


def test_prune_deletes_only_old_snapshots(engine: Engine) -> None:
    now = utcnow()
    with Session(engine) as s, s.begin():
        for age in (10, 3600 * 48):
            when = now - timedelta(seconds=age)
            s.add(GpuSnapshot(taken_at=when, host="h", error="x"))
            s.add(VllmSnapshot(taken_at=when, instance="i", base_url="u", healthy=True))
    assert prune_snapshots(engine, older_than=3600 * 24) == {"gpu": 1, "vllm": 1}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(GpuSnapshot)) == 1
        assert s.scalar(select(func.count()).select_from(VllmSnapshot)) == 1


def _chat(url: str, n: int) -> None:
    llm = openai.OpenAI(base_url=url, api_key="sim", max_retries=0)
    for _ in range(n):
        llm.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=16
        )
    llm.close()


def test_token_rates_use_a_recent_window_and_restart_with_the_server(engine: Engine) -> None:
    port = free_port()
    args = ["--ttft", "0", "--itl", "0"]
    target = ProbeTarget("a", f"http://127.0.0.1:{port}/v1")

    def scan() -> VllmSnapshot:
        (row,) = scan_vllm(
            [target],
            engine=engine,
            http_client_for=lambda t: http_for(t, ssh_pool=None, timeout=2),
            rate_window=30,
        )
        return row

    with SimFleet(base_port=port, extra_args=args) as sim:
        _chat(sim.urls[0], 3)
        # An hour-old reading of zero: a rate against it would be an hour's average.
        with Session(engine) as s, s.begin():
            s.add(
                VllmSnapshot(
                    taken_at=utcnow() - timedelta(hours=1), instance="a", base_url="x",
                    healthy=True, prompt_tokens_total=0.0, generation_tokens_total=0.0,
                )
            )  # fmt: skip
        first = scan()
        assert first.prompt_tokens_total and first.prompt_tokens_total > 0
        assert first.prompt_tokens_per_s is None and first.generation_tokens_per_s is None
        _chat(sim.urls[0], 3)
        second = scan()
        assert second.prompt_tokens_total is not None and second.taken_at > first.taken_at
        seconds = (second.taken_at - first.taken_at).total_seconds()
        expected = (second.prompt_tokens_total - first.prompt_tokens_total) / seconds
        assert second.prompt_tokens_per_s == pytest.approx(expected)
        assert second.prompt_tokens_per_s and second.prompt_tokens_per_s > 0
    with SimFleet(base_port=port, extra_args=args) as restarted:  # counters start from 0
        after = scan()
        assert after.prompt_tokens_total is not None
        assert after.prompt_tokens_total < (second.prompt_tokens_total or 0)
        assert after.prompt_tokens_per_s is None  # no reading since the restart yet
        _chat(restarted.urls[0], 12)  # past the old counters: only the restart tells
        again = scan()
    assert (again.prompt_tokens_total or 0) > (second.prompt_tokens_total or 0)
    seconds = (again.taken_at - after.taken_at).total_seconds()
    expected = ((again.prompt_tokens_total or 0) - (after.prompt_tokens_total or 0)) / seconds
    assert again.prompt_tokens_per_s == pytest.approx(expected)

"""A worker bound to a ``via`` instance works through its own SSH tunnel, no set-up needed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.endpoint import ChannelHttp, DirectHttp, check_health
from ops.redis_server import RedisServer, free_port
from ops.sim.launcher import SimFleet
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from producer.supervise import ProcessGroup, settings_env, vfleet_argv
from tests.pipeline import DEFAULT_SIM_ARGS, MODEL, TEST_SETTINGS, judge_rows, write_jsonl
from tests.services import missing, vfleet, wait_for
from tests.sshd import NetnsHost, Sshd, start_sshd, write_client_files
from workers.settings import Settings
from workers.store.opening import open_ledger
from workers.store.queries import iter_records

REDIS_DB = 6
RECORDS = 50


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


@pytest.fixture
def broker_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_worker_on_a_via_instance_completes_a_batch_through_ssh(
    sshd: Sshd, tmp_path: Path, broker_url: str, clean_env: dict[str, str]
) -> None:
    cfg, known = write_client_files(sshd, tmp_path, {"gpu1": {}})
    with SimFleet(extra_args=["--model", MODEL, *DEFAULT_SIM_ARGS]) as sim:
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            '[hosts.gpu1]\n\n[[instances]]\nname = "gpu1-sim"\n'
            f'base_url = "http://127.0.0.1:{sim.ports[0]}/v1"\nmodel = "{MODEL}"\n'
            'via = "gpu1"\nconcurrency = 8\n'
        )
        settings = Settings(
            broker_url=broker_url,
            database_url=f"sqlite:///{tmp_path / 'vfleet.db'}",
            fleet_file=fleet,
            **TEST_SETTINGS,
        )
        env = {
            **settings_env(settings),
            "VFLEET_SSH_CONFIG": str(cfg),
            "VFLEET_KNOWN_HOSTS": str(known),
            "VFLEET_SSH_AGENT": "false",
        }
        ledger = open_ledger(settings)
        log = tmp_path / "worker.log"
        try:
            with ProcessGroup() as group:
                argv = vfleet_argv("--log-level", "INFO", "worker", "--instance", "gpu1-sim")
                group.start("worker", argv, env=env, log=log)
                src = write_jsonl(tmp_path / "records.jsonl", judge_rows(RECORDS))
                res = vfleet("enqueue", str(src), "--batch", "via", "--key", "id", env=env)
                assert res.returncode == 0, res.stderr
                batch = ledger.batch("via").id
                wait_for(
                    lambda: ledger.counts(batch)["succeeded"] == RECORDS,
                    timeout=120,
                    interval=0.5,
                    what=f"{RECORDS} records through the tunnel",
                )
                counts = ledger.counts(batch)
                group.stop()
        finally:
            ledger.engine.dispose()
    text = log.read_text(errors="replace")
    tunnel_lines = [ln for ln in text.splitlines() if "instance gpu1-sim:" in ln]
    assert tunnel_lines and "via gpu1 as http://127.0.0.1:" in tunnel_lines[0]
    assert f":{sim.ports[0]}/v1 via" in tunnel_lines[0]
    assert counts["failed"] == 0 and counts["succeeded"] == RECORDS


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_provenance_of_a_via_instance_is_asked_through_its_tunnel(
    sshd: Sshd, tmp_path: Path, broker_url: str, clean_env: dict[str, str]
) -> None:
    """The server lives in a network namespace only SSH reaches, as on a real GPU box whose
    vLLM listens on its own loopback: the worker's calls, its health gate and the
    provenance of its results all have to go through the tunnel."""
    why = NetnsHost.available()
    if why is not None:
        missing(why)
    port = free_port()  # closed here; inside the namespace the simulator takes it
    with NetnsHost(sshd) as host:
        cfg, known = write_client_files(sshd, tmp_path, {"gpu1": {"Port": str(host.port)}})
        known.write_text(host.known_hosts_line)
        host.run(
            [sys.executable, "-m", "ops.sim", "--port", str(port), "--model", MODEL,
             "--max-model-len", "3072", *DEFAULT_SIM_ARGS],
            log=tmp_path / "sim.log",
        )  # fmt: skip
        with SSHPool(
            ssh_config=SSHConfigFile(cfg), known_hosts=KnownHosts(known), allow_agent=False
        ) as pool:
            http = ChannelHttp(lambda h, p: pool.open_channel("gpu1", h, p), timeout=3)
            wait_for(
                lambda: check_health(http, f"http://127.0.0.1:{port}/v1").healthy,
                timeout=60,
                what="the simulator in the namespace, through SSH",
            )
        # From here, that address is nobody.
        assert not check_health(DirectHttp(timeout=2), f"http://127.0.0.1:{port}/v1").answered
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            '[hosts.gpu1]\n\n[[instances]]\nname = "gpu1-sim"\n'
            f'base_url = "http://127.0.0.1:{port}/v1"\nmodel = "{MODEL}"\n'
            'via = "gpu1"\nconcurrency = 4\ngpus = [3]\n'
        )
        settings = Settings(
            broker_url=broker_url,
            database_url=f"sqlite:///{tmp_path / 'vfleet.db'}",
            fleet_file=fleet,
            **TEST_SETTINGS,
        )
        env = {
            **settings_env(settings),
            "VFLEET_SSH_CONFIG": str(cfg),
            "VFLEET_KNOWN_HOSTS": str(known),
            "VFLEET_SSH_AGENT": "false",
        }
        ledger = open_ledger(settings)
        try:
            with ProcessGroup() as group:
                argv = vfleet_argv("--log-level", "INFO", "worker", "--instance", "gpu1-sim")
                group.start("worker", argv, env=env, log=tmp_path / "worker.log")
                src = write_jsonl(tmp_path / "records.jsonl", judge_rows(10))
                res = vfleet("enqueue", str(src), "--batch", "netns", "--key", "id", env=env)
                assert res.returncode == 0, res.stderr
                batch = ledger.batch("netns").id
                wait_for(
                    lambda: ledger.counts(batch)["succeeded"] == 10,
                    timeout=120,
                    interval=0.5,
                    what="10 records through the tunnel into the namespace",
                )
                group.stop()
            provenance = [r.provenance for r in iter_records(ledger.engine, batch)]
        finally:
            ledger.engine.dispose()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "/v1/models failed" not in log, log[-2000:]
    assert all(p is not None for p in provenance)
    assert {(p["instance"], p["host"], p["model"], p["max_model_len"]) for p in provenance} == {  # type: ignore[index]
        ("gpu1-sim", "gpu1", MODEL, 3072)
    }
    assert {tuple(p["gpus"]) for p in provenance} == {(3,)}  # type: ignore[index]

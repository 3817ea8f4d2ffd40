"""A worker bound to a ``via`` instance works through its own SSH tunnel, no set-up needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.redis_server import RedisServer
from ops.sim.launcher import SimFleet
from producer.supervise import ProcessGroup, settings_env, vfleet_argv
from tests.pipeline import DEFAULT_SIM_ARGS, MODEL, TEST_SETTINGS, judge_rows, write_jsonl
from tests.services import vfleet, wait_for
from tests.sshd import Sshd, start_sshd, write_client_files
from workers.settings import Settings
from workers.store.opening import open_ledger

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

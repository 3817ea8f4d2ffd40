"""``vfleet workers`` keeps its workers alive: a worker that dies is started again."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ops.sim.launcher import SimFleet
from producer.demo import write_fleet
from producer.supervise import ProcessGroup, Supervisor, describe_exit, settings_env
from tests.pipeline import TEST_SETTINGS
from tests.services import ROOT, wait_for
from workers.celery_app import create_app
from workers.fleet import InstanceConfig
from workers.settings import Settings


def test_a_child_that_keeps_dying_is_restarted_with_a_growing_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="producer.supervise")
    with ProcessGroup() as group:
        sup = Supervisor(group, backoff=0.2, backoff_max=0.8, stable_after=60)
        sup.start("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"])
        wait_for(lambda: (sup.poll(), sup.children["flaky"].restarts >= 4)[1], timeout=60,
                 interval=0.05, what="four restarts")  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "flaky" in r.getMessage()]
    assert all("died with exit code 3" in line for line in lines)
    backoffs = [float(line.split("restarting in ")[1].split("s")[0]) for line in lines[:4]]
    assert backoffs == sorted(backoffs) and backoffs[-1] == pytest.approx(0.8, abs=0.05)


def test_a_child_that_lives_is_left_alone() -> None:
    with ProcessGroup() as group:
        sup = Supervisor(group, backoff=0.1)
        sup.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        pid = group.procs["sleeper"].pid
        for _ in range(10):
            sup.poll()
            time.sleep(0.05)
        assert sup.children["sleeper"].restarts == 0 and group.procs["sleeper"].pid == pid
    assert group.procs["sleeper"].poll() is not None


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(2) == "exit code 2"


def _worker_pids(supervisor_pid: int) -> dict[str, int]:
    """``{instance: pid}`` of the `vfleet worker` children of a `vfleet workers` process."""
    found = {}
    for child in psutil.Process(supervisor_pid).children():
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--instance" in argv:
            found[argv[argv.index("--instance") + 1]] = child.pid
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_vfleet_workers_restarts_a_worker_killed_with_sigkill(
    redis_url: str, tmp_path: Path
) -> None:
    with SimFleet(instances=2, extra_args=["--model", "sim-model"]) as sims:
        instances = [
            InstanceConfig(name=f"sim-{n + 1}", base_url=url, model="sim-model", concurrency=4)
            for n, url in enumerate(sims.urls)
        ]
        write_fleet(tmp_path / "fleet.toml", instances)
        settings = Settings(
            broker_url=redis_url,
            database_url=f"sqlite:///{tmp_path / 'vfleet.db'}",
            fleet_file=tmp_path / "fleet.toml",
            **TEST_SETTINGS,
        )
        log = (tmp_path / "workers.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "workers"],
            env=settings_env(settings),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        app = create_app(settings)
        try:
            wait_for(lambda: len(_worker_pids(proc.pid)) == 2, timeout=60, what="2 workers")
            wait_for(lambda: len(app.control.ping(timeout=1) or []) == 2, timeout=120,
                     what="both workers answering a ping")  # fmt: skip
            victim = _worker_pids(proc.pid)["sim-1"]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: _worker_pids(proc.pid).get("sim-1") not in (None, victim),
                     timeout=60, what="sim-1's worker started again")  # fmt: skip
            wait_for(lambda: len(app.control.ping(timeout=1) or []) == 2, timeout=120,
                     what="the restarted worker answering a ping")  # fmt: skip
            text = (tmp_path / "workers.log").read_text(errors="replace")
            assert f"sim-1 (pid {victim}) died with signal SIGKILL" in text
            assert "restarting in 1.0s (restart 1)" in text
        finally:
            workers = list(_worker_pids(proc.pid).values())
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(90)
            log.close()
        assert code == 0
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                       for pid in workers)  # fmt: skip

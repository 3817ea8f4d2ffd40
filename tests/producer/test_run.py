"""``vfleet run`` end to end on simulated vLLM with no worker running: it starts one per
instance, follows the batch, exports and stops what it started; interrupted with SIGINT
mid-batch, the same command resumes it to completion, every record succeeded once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from ops.sim.launcher import SimFleet
from producer.demo import write_fleet
from producer.supervise import settings_env
from tests.pipeline import MODEL, TEST_SETTINGS, judge_rows, write_jsonl
from tests.services import ROOT, vfleet, wait_for
from workers.celery_app import create_app
from workers.fleet import InstanceConfig
from workers.settings import Settings
from workers.store.ledger import Ledger
from workers.store.opening import open_ledger
from workers.store.queries import iter_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Slow enough that a batch of 2,000 takes a while to run.
SLOW_SIM = ("--max-num-seqs", "8", "--ttft", "0.05", "--itl", "0.005", "--output-tokens", "5-20")


class Fleet:
    """Two simulated instances and a fleet file; no worker."""

    def __init__(self, tmp: Path, broker: str) -> None:
        self.tmp = tmp
        self.sims = SimFleet(
            instances=2, extra_args=("--model", MODEL, *SLOW_SIM), log_path=tmp / "sim.log"
        )
        self.settings = Settings(
            broker_url=broker,
            database_url=f"sqlite:///{tmp / 'vfleet.db'}",
            fleet_file=tmp / "fleet.toml",
            **TEST_SETTINGS,
        )
        self.env = settings_env(self.settings)
        self._ledger: Ledger | None = None

    def __enter__(self) -> Fleet:
        self.sims.start()
        write_fleet(
            self.tmp / "fleet.toml",
            [
                InstanceConfig(name=f"sim-{n + 1}", base_url=url, model=MODEL, concurrency=8)
                for n, url in enumerate(self.sims.urls)
            ],
        )
        self._ledger = open_ledger(self.settings)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sims.stop()
        if self._ledger is not None:
            self._ledger.engine.dispose()

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None
        return self._ledger

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "producer", *args]

    def counts(self, batch: str) -> dict[str, int]:
        names = {b.name for b in self.ledger.batches()}
        return self.ledger.counts(self.ledger.batch(batch).id) if batch in names else {}

    def alive_workers(self) -> list[str]:
        app = create_app(self.settings)
        try:
            return sorted(n for reply in app.control.ping(timeout=1.0) or [] for n in reply)
        finally:
            app.close()


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    broker = redis_server.url.rsplit("/", 1)[0] + "/3"
    with Fleet(tmp_path_factory.mktemp("run"), broker) as f:
        yield f


def test_run_starts_workers_follows_exports_and_stops_them(fleet: Fleet) -> None:
    src = write_jsonl(fleet.tmp / "quick.jsonl", judge_rows(120, prefix="q"))
    out = fleet.tmp / "quick.csv"
    log_dir = fleet.tmp / "logs-quick"
    res = vfleet(
        "run", str(src), "--spec", "judge", "--key", "id", "-o", str(out),
        "--log-dir", str(log_dir), env=fleet.env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "workers: started sim-1, sim-2" in res.stderr
    assert "quick: 120 succeeded, 0 failed, 0 cancelled; wrote 120 records to" in res.stdout
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 121 and rows[0].startswith("key,status,")
    assert {p.name for p in log_dir.iterdir()} == {"worker-sim-1.log", "worker-sim-2.log"}
    assert fleet.alive_workers() == []  # the workers it started are stopped

    # Run again: everything is done, nothing is added, no worker is started.
    res = vfleet("run", str(src), "--key", "id", "-o", str(out), env=fleet.env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(0 added, 120 already stored, 0 reused)" in res.stdout
    assert "workers: started none" in res.stderr


def test_interrupted_run_resumes_with_the_same_command_and_runs_each_record_once(
    fleet: Fleet,
) -> None:
    n = 2000
    src = write_jsonl(fleet.tmp / "long.jsonl", judge_rows(n, prefix="L"))
    out = fleet.tmp / "long.results.jsonl"
    argv = fleet.argv("run", str(src), "--key", "id", "-o", str(out))
    log_dir = ["--log-dir", str(fleet.tmp / "logs-long")]
    # As a terminal's Ctrl-C finds it: a test run started in the background by a shell
    # without job control inherits SIGINT ignored, and Python then leaves it ignored (the
    # run would go on to the end). GNU env puts the default back before exec.
    proc = subprocess.Popen(
        ["env", "--default-signal=INT", *argv, *log_dir],
        env=fleet.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: fleet.counts("long").get("succeeded", 0) >= 200,
            timeout=240,
            interval=0.2,
            what="part of the batch done",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "vfleet: batch long stays stored; " in err
    assert "run the same command again to resume" in err
    assert err.rstrip().endswith("vfleet: error: interrupted")
    done = fleet.counts("long")
    assert 200 <= done["succeeded"] < n, done
    assert not out.exists()
    assert fleet.alive_workers() == []

    res = subprocess.run(
        [*argv, *log_dir], env=fleet.env, cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"({0} added, {n} already stored, 0 reused)" in res.stdout
    assert f"long: {n} succeeded, 0 failed, 0 cancelled; wrote {n} records" in res.stdout
    records = list(iter_records(fleet.ledger.engine, fleet.ledger.batch("long").id))
    keys = Counter(r.key for r in records)
    assert len(keys) == n and max(keys.values()) == 1
    assert Counter(r.status for r in records) == {"succeeded": n}
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["key"] for r in exported] == [f"L{i}" for i in range(n)]
    assert fleet.alive_workers() == []


def test_an_output_it_cannot_write_is_refused_before_anything_runs(fleet: Fleet) -> None:
    src = write_jsonl(fleet.tmp / "refused.jsonl", judge_rows(5, prefix="x"))
    res = vfleet("run", str(src), "--key", "id", "-o", str(fleet.tmp / "out.xml"), env=fleet.env)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "cannot export to 'out.xml'" in res.stderr
    assert "refused" not in {b.name for b in fleet.ledger.batches()}

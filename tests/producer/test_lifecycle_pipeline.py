"""Batch lifecycle end to end with real workers: cancel mid-run, delete, redrive, and
resuming after the producer crashed (killed mid-store, or the broker away at publish)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from tests.services import ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SLOW = ("--max-num-seqs", "16", "--ttft", "0.3", "--itl", "0.001", "--output-tokens", "5-10")


@pytest.fixture(scope="module")
def pipeline(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    # Its own Redis database: other modules' workers must not take these messages.
    broker = redis_server.url.rsplit("/", 1)[0] + "/8"
    # Slow on purpose (at most ~25 records/s), whatever the machine's load: a cancel
    # always finds records still waiting.
    with Pipeline(
        tmp_path_factory.mktemp("lifecycle"), broker, instances=2, concurrency=4, sim_args=SLOW
    ) as p:
        yield p


def test_cancel_stops_a_running_batch_and_retry_redrives_it(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", judge_rows(300, prefix="c"))
    pipeline.enqueue(src, "cancel-me")
    pipeline.wait_progress("cancel-me", 20)
    res = pipeline.cli("cancel", "cancel-me")
    assert res.returncode == 0, res.stderr and "records cancelled" in res.stdout
    wait_for(
        lambda: pipeline.counts("cancel-me")["running"] == 0, timeout=60, what="running to end"
    )
    settled = pipeline.counts("cancel-me")
    assert settled["cancelled"] > 50 and settled["queued"] == settled["retry"] == 0
    assert settled["succeeded"] + settled["cancelled"] == 300
    status = json.loads(pipeline.cli("status", "cancel-me", "--json").stdout)
    assert status["status"] == "cancelled" and isinstance(status["cancelled_at"], int)
    time.sleep(3)  # messages still in Redis find cancelled records: nothing more runs
    assert pipeline.counts("cancel-me") == settled

    res = pipeline.cli("retry", "cancel-me", "--cancelled")
    assert res.returncode == 0, res.stderr
    assert f"{settled['cancelled']} cancelled records revived" in res.stdout
    assert pipeline.wait_done("cancel-me", 300)["succeeded"] == 300


def test_delete_refuses_a_running_batch_then_removes_it(pipeline: Pipeline, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "del.jsonl", judge_rows(300, prefix="x"))
    pipeline.enqueue(src, "del")
    wait_for(lambda: pipeline.counts("del")["running"] > 0, timeout=60, what="records running")
    res = pipeline.cli("delete", "del")
    assert res.returncode == 1 and "running; cancel it and wait, or use --force" in res.stderr
    assert pipeline.cli("cancel", "del").returncode == 0
    wait_for(lambda: pipeline.counts("del")["running"] == 0, timeout=60, what="running to end")
    res = pipeline.cli("delete", "del")
    assert res.returncode == 0, res.stderr
    assert "del" not in {b.name for b in pipeline.ledger.batches()}
    assert pipeline.cli("status", "del").returncode == 1


def test_enqueue_killed_mid_store_resumes_by_running_it_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    n = 12_000
    src = write_jsonl(tmp_path / "crash.jsonl", judge_rows(n, prefix="k"))
    argv = [sys.executable, "-m", "producer", "enqueue", str(src), "--batch", "crash"]
    proc = subprocess.Popen(
        [*argv, "--key", "id"], env=pipeline.env, cwd=ROOT, stdout=subprocess.DEVNULL
    )

    def some_stored() -> bool:
        names = {b.name for b in pipeline.ledger.batches()}
        return "crash" in names and sum(pipeline.counts("crash").values()) >= 2000

    wait_for(some_stored, timeout=120, interval=0.05, what="part of the file stored")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = sum(pipeline.counts("crash").values())
    assert 0 < before < n, "the kill came too late to test anything"

    res = pipeline.cli("enqueue", str(src), "--batch", "crash", "--key", "id", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["read"], report["added"]) == (n, n - before)
    assert report["duplicates"] == 0
    keys = {r.key for r in pipeline.records("crash")}
    assert len(keys) == n
    assert pipeline.cli("cancel", "crash").returncode == 0  # enough: don't judge 30k


def test_enqueue_with_the_broker_away_resumes_by_running_it_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "away.jsonl", judge_rows(40, prefix="a"))
    env = {**pipeline.env, "VFLEET_BROKER_URL": "redis://127.0.0.1:1/8"}
    argv = ("enqueue", str(src), "--batch", "away", "--key", "id")
    res = subprocess.run(
        [sys.executable, "-m", "producer", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "re-run the same command to publish" in res.stderr
    assert "Traceback" not in res.stderr
    # Everything is stored; the workers' own feeders may already be publishing it.
    assert sum(pipeline.counts("away").values()) == 40
    res = pipeline.cli(*argv)
    assert res.returncode == 0, res.stderr
    assert pipeline.wait_done("away", 40)["succeeded"] == 40

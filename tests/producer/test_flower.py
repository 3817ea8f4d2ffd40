"""``vfleet flower``: Flower behind basic auth, watching a real worker run a real batch."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ops.redis_server import RedisServer, free_port
from producer.cli.flower import is_loopback, read_auth_file
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from tests.services import ROOT, chromium, vfleet, wait_for
from workers.errors import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

USER = "ops"
PASSWORD = "flower-Pw-7c1e9"
# A database of its own: other module-scoped pipelines of the session use /0.
REDIS_DB = 3
RECORDS = 20


@dataclass
class Flower:
    pipeline: Pipeline
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx2.Response:
        return httpx2.get(f"{self.url}{path}", auth=auth, timeout=10)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, response.text[:300]
        return response.json()


def start_flower(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "flower", f"--port={port}", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    wait_for(lambda: _listening(port) or proc.poll() is not None, timeout=60, what="flower")
    assert proc.poll() is None, log.read_text()
    return proc, port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def flower(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    tmp = tmp_path_factory.mktemp("flower")
    broker = redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    with Pipeline(tmp, broker, instances=1) as p:
        env = dict(p.env, VFLEET_FLOWER_USER=USER, VFLEET_FLOWER_PASSWORD=PASSWORD)
        proc, port = start_flower(env, tmp / "flower.log")
        f = Flower(p, f"http://127.0.0.1:{port}", proc, tmp / "flower.log")
        try:
            wait_for(
                lambda: (
                    f.get("/api/workers").status_code == 200
                    and "sim-1@" in f.get("/api/workers").text
                ),
                timeout=60,
                what="flower to see the worker",
            )
            src = write_jsonl(tmp / "in.jsonl", judge_rows(RECORDS))
            res = p.cli("enqueue", str(src), "--batch", "flower", "--key", "id")
            assert res.returncode == 0, res.stderr
            p.wait_done("flower", RECORDS)
            yield f
        finally:
            stop(proc)


def _worker_name() -> str:
    return f"sim-1@{socket.gethostname()}"


def test_api_lists_the_instance_worker_with_its_queues(flower: Flower) -> None:
    workers = flower.json("/api/workers?refresh=1")
    assert _worker_name() in workers, list(workers)
    queues = {q["name"] for q in workers[_worker_name()]["active_queues"]}
    assert {"llm.sim-model", "inst.sim-1"} <= queues


def _record_ids(args: str) -> list[int]:
    """The record ids in Flower's repr of a task's args, e.g. ``([3, 4, 5, 6],)``."""
    return [int(n) for n in re.findall(r"\d+", args)]


def test_api_lists_the_processed_tasks_per_worker(flower: Flower) -> None:
    def every_record_seen_done() -> bool:
        tasks = flower.json("/api/tasks").values()
        done = [i for t in tasks if t["state"] == "SUCCESS" for i in _record_ids(t["args"])]
        return len(done) >= RECORDS

    wait_for(every_record_seen_done, timeout=120, what="flower to see every task succeed")
    tasks = flower.json("/api/tasks")
    assert {t["name"] for t in tasks.values()} == {"vfleet.process_records"}
    assert {t["worker"] for t in tasks.values()} == {_worker_name()}
    # Each task carries the chunk of record ids it processed: each record in one task.
    ids = [i for t in tasks.values() for i in _record_ids(t["args"])]
    assert len(ids) == len(set(ids)) == RECORDS
    assert all(t["sent"] is not None for t in tasks.values()), "task-sent events are on"


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/workers", "/tasks"])
def test_requests_without_credentials_get_401(flower: Flower, path: str) -> None:
    assert flower.get(path, auth=None).status_code == 401
    assert flower.get(path, auth=(USER, "wrong")).status_code == 401


def test_flower_never_prints_the_password(flower: Flower) -> None:
    assert flower.get("/api/workers").status_code == 200
    text = flower.log.read_text(errors="replace")
    assert "Visit me at" in text
    assert PASSWORD not in text


def test_dashboard_renders_in_headless_chromium(flower: Flower, tmp_path: Path) -> None:
    from PIL import Image

    page = flower.url.replace("http://", f"http://{USER}:{PASSWORD}@") + "/workers"
    dom = chromium(
        tmp_path / "dom", "--window-size=1280,800", "--virtual-time-budget=5000", "--dump-dom", page
    )
    assert _worker_name() in dom.stdout, dom.stdout[-2000:] or dom.stderr[-2000:]
    assert "Online" in dom.stdout
    png = Path(os.environ.get("VFLEET_TEST_SCREENSHOT", tmp_path / "flower.png"))
    shot = chromium(
        tmp_path / "shot",
        "--window-size=1280,800",
        "--virtual-time-budget=5000",
        f"--screenshot={png}",
        page,
    )
    assert png.is_file(), shot.stderr[-2000:]
    assert png.stat().st_size > 10_000
    with Image.open(png) as img:
        assert img.size == (1280, 800)
        colours = img.convert("RGB").getcolors(maxcolors=1_000_000) or []
    # A blank or error page has a handful of colours; Flower's dashboard has hundreds.
    assert len(colours) > 100, len(colours)


def test_no_auth_on_loopback_opens_the_ui_but_never_the_api(flower: Flower, tmp_path: Path) -> None:
    env = dict(flower.pipeline.env, FLOWER_UNAUTHENTICATED_API="true")
    env.pop("VFLEET_FLOWER_USER", None)
    env.pop("VFLEET_FLOWER_PASSWORD", None)
    proc, port = start_flower(env, tmp_path / "open.log", "--no-auth")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: httpx2.get(f"{url}/workers", timeout=5).status_code == 200,
            timeout=30,
            what="the open UI",
        )
        assert httpx2.get(f"{url}/api/workers", timeout=5).status_code == 401
    finally:
        stop(proc)


def test_broker_page_shows_vfleets_queues(flower: Flower) -> None:
    page = flower.get("/broker")
    assert page.status_code == 200, page.text[:300]
    assert "llm.sim-model" in page.text and "inst.sim-1" in page.text
    assert "redis://" in page.text and "redis_transport" not in page.text


def test_queue_lengths_api_answers_for_the_workers_queues(flower: Flower) -> None:
    queues = {q["name"]: q["messages"] for q in flower.json("/api/queues/length")["active_queues"]}
    assert set(queues) == {"llm.sim-model", "inst.sim-1"}
    assert all(isinstance(n, int) and n >= 0 for n in queues.values())


def test_metrics_need_the_same_credentials(flower: Flower) -> None:
    assert flower.get("/metrics", auth=None).status_code == 401
    assert flower.get("/metrics", auth=(USER, "wrong")).status_code == 401
    metrics = flower.get("/metrics")
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    assert flower.get("/healthcheck", auth=None).text == "OK"  # liveness probes stay open


def test_celerys_own_cli_finds_the_app_in_workers_app(flower: Flower) -> None:
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "inspect", "ping", "-t", "5"],
        env=flower.pipeline.env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert ping.returncode == 0, ping.stderr
    assert f"{_worker_name()}: OK" in ping.stdout and "pong" in ping.stdout


def test_queue_lengths_count_the_messages_waiting_in_redis(
    redis_server: RedisServer, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """No worker consumes ``scan`` here: three tasks sent to it wait, and Flower counts them
    through vfleet's broker URL and transport."""
    from workers.celery_app import create_app
    from workers.settings import Settings

    broker = redis_server.url.rsplit("/", 1)[0] + "/4"
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[instances]]\nname = "i1"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
    )
    settings = Settings(broker_url=broker, fleet_file=fleet)
    app = create_app(settings)
    import redis as redis_lib

    client = redis_lib.Redis.from_url(broker)
    client.flushdb()
    try:
        for _ in range(3):
            app.send_task("vfleet.scan_gpus", queue="scan")
        env = {
            **clean_env,
            "VFLEET_BROKER_URL": broker,
            "VFLEET_FLEET_FILE": str(fleet),
            "VFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'vfleet.db'}",
            "VFLEET_FLOWER_USER": USER,
            "VFLEET_FLOWER_PASSWORD": PASSWORD,
        }
        proc, port = start_flower(env, tmp_path / "flower.log")
        try:
            url = f"http://127.0.0.1:{port}/api/queues/length"
            answer = httpx2.get(url, auth=(USER, PASSWORD), timeout=10)
            assert answer.status_code == 200, answer.text[:300]
            queues = {q["name"]: q["messages"] for q in answer.json()["active_queues"]}
        finally:
            stop(proc)
    finally:
        client.flushdb()
        client.close()
        app.close()
    assert queues == {"celery": 0, "llm.m": 0, "inst.i1": 0, "scan": 3}


def test_refuses_to_start_without_credentials(clean_env: dict[str, str]) -> None:
    started = time.monotonic()
    res = vfleet("flower", "--port", str(free_port()), env=clean_env)
    assert res.returncode == 1
    assert res.stderr.startswith("vfleet: error: Flower needs credentials")
    assert len(res.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


def test_no_auth_is_refused_off_loopback(clean_env: dict[str, str]) -> None:
    res = vfleet("flower", "--no-auth", "--address", "0.0.0.0", env=clean_env)
    assert res.returncode == 1
    assert "only allowed on a loopback address" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_basic_auth_file_holds_user_password_lines(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("# operators\nalice:pw:with:colons\n\nbob:secret\n", encoding="utf-8")
    assert read_auth_file(path) == [("alice", "pw:with:colons"), ("bob", "secret")]
    path.write_text("alice\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1 is not user:password"):
        read_auth_file(path)
    path.write_text("# nobody\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no user:password line"):
        read_auth_file(path)


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")

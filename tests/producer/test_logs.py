"""Log lines: JSON on request, record fields on every line about a record, no secrets."""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ops.redis_server import free_port, redis_server_binary
from producer.logs import (
    JsonFormatter,
    RecordContextFilter,
    Redactor,
    TextFormatter,
    configure_logging,
    redact,
    url_password,
)
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from tests.services import missing
from workers.logcontext import record_context

PASSWORD = "Red1s-S3cret-9f2a"
API_KEY = "sk-test-0123456789abcdef"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("workers.runtime", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def _format_json(record: logging.LogRecord, redactor: Redactor | None = None) -> dict[str, Any]:
    RecordContextFilter().filter(record)
    line = JsonFormatter(redactor or Redactor()).format(record)
    assert "\n" not in line
    data: dict[str, Any] = json.loads(line)
    return data


def test_json_line_carries_the_fields_given_as_extra() -> None:
    data = _format_json(
        _record("claimed %s", 7, batch="b1", record=7, instance="gpu1-8001", task_id="t-1")
    )
    assert data["message"] == "claimed 7"
    assert data["level"] == "INFO" and data["logger"] == "workers.runtime"
    assert (data["batch"], data["record"], data["instance"], data["task_id"]) == (
        "b1",
        7,
        "gpu1-8001",
        "t-1",
    )
    assert data["ts"].endswith("+00:00")


def test_json_line_reads_record_fields_from_the_record_being_worked_on() -> None:
    with record_context(record=12, instance="gpu2") as ctx:
        ctx["batch"] = "judge-v1"
        data = _format_json(
            logging.LogRecord("httpx2", logging.INFO, __file__, 1, "POST", (), None)
        )
    assert (data["record"], data["batch"], data["instance"]) == (12, "judge-v1", "gpu2")
    after = _format_json(logging.LogRecord("httpx2", logging.INFO, __file__, 1, "POST", (), None))
    assert "record" not in after


def test_json_line_reads_task_id_and_record_from_celery_trace_args() -> None:
    args = {"id": "abc-123", "name": "vfleet.process_records", "args": "([42],)", "kwargs": "{}"}
    record = logging.LogRecord(
        "celery.app.trace", logging.INFO, __file__, 1, "Task %(name)s[%(id)s] received", (), None
    )
    record.args = args
    data = _format_json(record)
    assert data["message"] == "Task vfleet.process_records[abc-123] received"
    assert (data["task_id"], data["record"]) == ("abc-123", 42)


def test_lines_without_record_context_have_no_record_fields() -> None:
    data = _format_json(_record("connected to %s", "the broker"))
    assert not {"batch", "record", "instance", "task_id"} & set(data)


def test_passwords_in_urls_and_registered_secrets_are_masked() -> None:
    redactor = Redactor()
    redactor.add([API_KEY, None, "ab"])
    data = _format_json(
        _record("broker redis://:%s@host:6379/0 key %s", PASSWORD, API_KEY), redactor
    )
    assert PASSWORD not in json.dumps(data) and API_KEY not in json.dumps(data)
    assert "redis://:***@host:6379/0" in data["message"] and "key ***" in data["message"]
    text = TextFormatter(redactor).format(_record("postgresql://u:%s@db/x", PASSWORD))
    assert PASSWORD not in text and "postgresql://u:***@db/x" in text


def test_exceptions_are_one_json_line() -> None:
    try:
        raise ValueError(f"bad thing with redis://:{PASSWORD}@h/0")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "oops", (), exc_info=__import__("sys").exc_info()
        )
    data = _format_json(record)
    assert "ValueError" in data["exc"] and PASSWORD not in data["exc"]


def test_configure_logging_replaces_its_own_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging(logging.INFO, "text")
        handler = configure_logging(logging.INFO, "json")
        assert [h for h in root.handlers if h not in before] == [handler]
        redact(PASSWORD)
        logging.getLogger("vfleet.test").info("pw %s", PASSWORD)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert json.loads(line)["message"] == "pw ***"
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        for h in list(logging.getLogger("celery.task").handlers):
            logging.getLogger("celery.task").removeHandler(h)
        logging.captureWarnings(False)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging(logging.INFO, "xml")


def test_url_password() -> None:
    assert url_password(f"redis://:{PASSWORD}@h:1/0") == PASSWORD
    assert url_password("redis://u:p%40ss@h/0") == "p@ss"
    assert url_password("redis://h/0") is None


# -- a real batch with a password in the broker URL ----------------------------------------


class PasswordRedis:
    """A private redis-server that wants ``PASSWORD``."""

    def __init__(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            missing("redis-server is not installed")
        assert binary is not None
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="vfleet-redis-pw-")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir.name,
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
                "--logfile",
                str(Path(self.dir.name) / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=PASSWORD, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("password-protected redis-server did not start")
                time.sleep(0.05)
        client.close()

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


@pytest.fixture
def password_redis() -> Iterator[PasswordRedis]:
    server = PasswordRedis()
    yield server
    server.stop()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}: not a JSON line: {line[:200]}")
    return parsed


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_json_worker_logs_carry_record_fields_and_never_the_password(
    password_redis: PasswordRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFLEET_LOG_FORMAT", "json")
    sim_args: tuple[str, ...] = ("--ttft", "0.01", "--itl", "0.0005", "--output-tokens", "5-20")
    sim_args += ("--fail-rate", "0.3", "--fail-kinds", "500")
    src = write_jsonl(tmp_path / "in.jsonl", judge_rows(30))
    # Celery's per-task lines ("received") are written at --loglevel DEBUG only.
    debug = ("--loglevel", "DEBUG")
    with Pipeline(
        tmp_path, password_redis.url, instances=2, sim_args=sim_args, worker_args=debug
    ) as p:
        res = p.cli("--log-level", "DEBUG", "enqueue", str(src), "--batch", "logged", "--key", "id")
        assert res.returncode == 0, res.stderr
        counts = p.wait_done("logged", 30)
        assert counts["succeeded"] + counts["failed"] == 30
        shown = p.cli("config", "show", "--json")
        assert shown.returncode == 0, shown.stderr
    for text in (res.stdout, res.stderr, shown.stdout, shown.stderr):
        assert PASSWORD not in text
    assert res.stderr.strip(), "DEBUG logging of the enqueue printed nothing"
    for line in res.stderr.splitlines():
        assert json.loads(line)["level"]
    lines: list[dict[str, Any]] = []
    for log in sorted(tmp_path.glob("worker-*.log")):
        assert PASSWORD not in log.read_text(errors="replace")
        lines += _json_lines(log)
    for log in tmp_path.glob("sim*.log"):
        assert PASSWORD not in log.read_text(errors="replace")
    assert any("ready" in line["message"] for line in lines)
    received = [line for line in lines if line["message"].endswith("received")]
    assert len(received) >= 30 // 8  # messages of up to 8 records (concurrency 16)
    assert all(line["task_id"] and line["instance"] for line in received)
    retried = [line for line in lines if line["logger"] == "workers.runtime"]
    assert retried, "the injected failures produced no runtime lines"
    for line in retried:
        assert {"batch", "record", "instance", "task_id"} <= set(line), line
        assert line["batch"] == "logged" and line["instance"] in ("sim-1", "sim-2")
    assert any("shutdown" in line["message"].lower() for line in lines)

"""The CLI's contract: one-line errors, meaningful exit codes, masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.services import ROOT, vfleet

pytestmark = pytest.mark.timeout(120)


def _env(clean_env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(clean_env)
    env["VFLEET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    env["VFLEET_FLEET_FILE"] = str(ROOT / "fleet.example.toml")
    env.update(extra)
    return env


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vfleet: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["enqueue", "--bogus"], 2, "No such option"),
        (["enqueue"], 2, "Missing argument"),
        (["enqueue", "nope.jsonl"], 1, "no such file"),
        (["enqueue", "{fixture}", "--spec", "no-such-spec"], 1, "no-such-spec"),
        (["enqueue", "{fixture}", "--route", "sideways"], 2, "sideways"),
        (["enqueue", "{fixture}", "--route", "pinned"], 1, "--instance"),
        (["enqueue", "{fixture}", "--spec", "classify"], 1, "label"),
        (["enqueue", "{fixture}", "--model", "other", "--route", "round-robin"], 1, "other"),
        (["status", "no-such-batch"], 1, "no-such-batch"),
        (["export", "no-such-batch", "-o", "x.txt"], 1, "no-such-batch"),
        (["worker", "--instance", "ghost"], 1, "ghost"),
        (["--log-level", "LOUD", "batches"], 2, "LOUD"),
    ],
)
def test_bad_input_gives_one_line_and_a_meaningful_exit_code(
    clean_env: dict[str, str], tmp_path: Path, args: list[str], code: int, fragment: str
) -> None:
    fixture = tmp_path / "in.jsonl"
    fixture.write_text('{"id": 1, "question": "q", "answer": "a"}\n')
    argv = [str(fixture) if a == "{fixture}" else a for a in args]
    res = vfleet(*argv, env=_env(clean_env, tmp_path))
    assert res.returncode == code, (res.stdout, res.stderr)
    assert fragment in _one_line_error(res.stderr)


def test_a_broken_fleet_file_is_one_line(clean_env: dict[str, str], tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[instances]]\nname = "a"\nbase_url = "ftp://x"\nmodel = "m"\n')
    res = vfleet("config", "show", env=_env(clean_env, tmp_path, VFLEET_FLEET_FILE=str(fleet)))
    assert res.returncode == 1
    assert "base_url must start with http" in _one_line_error(res.stderr)
    fleet.write_text("[[instances]\n")
    res = vfleet("config", "show", env=_env(clean_env, tmp_path, VFLEET_FLEET_FILE=str(fleet)))
    assert res.returncode == 1 and "invalid TOML" in _one_line_error(res.stderr)


def test_config_show_masks_passwords_and_never_prints_api_keys(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[instances]]\nname = "router"\nbase_url = "https://r.example/v1"\n'
        'model = "m"\napi_key_env = "ROUTER_KEY"\n'
    )
    env = _env(
        clean_env,
        tmp_path,
        VFLEET_FLEET_FILE=str(fleet),
        ROUTER_KEY="sk-very-secret",
        VFLEET_BROKER_URL="redis://:hunter2@127.0.0.1:6390/0",
    )
    res = vfleet("config", "show", "--json", env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["settings"]["broker_url"] == "redis://:***@127.0.0.1:6390/0"
    assert data["fleet"]["instances"][0]["api_key_env"] == "ROUTER_KEY"
    assert "hunter2" not in res.stdout and "sk-very-secret" not in res.stdout
    table = vfleet("config", "show", env=env)
    assert "hunter2" not in table.stdout and "router" in table.stdout


def test_flags_override_environment(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = _env(clean_env, tmp_path, VFLEET_BROKER_URL="redis://127.0.0.1:1/0")
    res = vfleet("--broker-url", "redis://127.0.0.1:2/0", "config", "show", "--json", env=env)
    assert json.loads(res.stdout)["settings"]["broker_url"] == "redis://127.0.0.1:2/0"


def test_db_upgrade_reports_the_revision(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = _env(clean_env, tmp_path)
    from workers.store.migrate import head_revision

    head = head_revision()
    res = vfleet("db", "upgrade", env=env)
    assert res.returncode == 0 and f"at revision {head}" in res.stdout
    assert f"current {head}, head {head}" in vfleet("db", "current", env=env).stdout

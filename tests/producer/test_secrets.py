"""Secrets are never shown: ``config show``, error messages and log lines mask every URL's
password with one function, whatever the password holds (``@``, ``:``, ``/``, ``%``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.redis_server import free_port
from tests.services import vfleet

BROKER_PW = "Pw-s3cr3t@7:/%41"
DB_PW = "db:p@ss/w%rd"
KEY_PW = "k3y@x:y%2Fz"  # a raw '/' would not make a URL any HTTP client reads


def _env(clean_env: dict[str, str], tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **clean_env,
        "VFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'vfleet.db'}",
        "VFLEET_FLEET_FILE": str(tmp_path / "fleet.toml"),
        **extra,
    }


def test_config_show_masks_broker_database_and_instance_urls(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "fleet.toml").write_text(
        f'[[instances]]\nname = "proxy"\nbase_url = "https://svc:{KEY_PW}@proxy.example/v1"\n'
        'model = "m"\n'
    )
    env = _env(
        clean_env,
        tmp_path,
        VFLEET_BROKER_URL=f"redis://:{BROKER_PW}@127.0.0.1:6390/0",
        VFLEET_DATABASE_URL=f"postgresql://vfleet:{DB_PW}@db-host:5432/vfleet",
    )
    shown = vfleet("config", "show", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["settings"]["broker_url"] == "redis://:***@127.0.0.1:6390/0"
    assert data["settings"]["database_url"] == "postgresql+psycopg://vfleet:***@db-host:5432/vfleet"
    assert data["fleet"]["instances"][0]["base_url"] == "https://svc:***@proxy.example/v1"
    table = vfleet("config", "show", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "https://svc:***@proxy.example/v1" in table.stdout
    for out in (shown.stdout + shown.stderr, table.stdout + table.stderr):
        for secret in (BROKER_PW, DB_PW, KEY_PW, "s3cr3t", "p@ss", "k3y"):
            assert secret not in out


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://vfleet:{DB_PW}@db-host:5432/vfleet",  # a '/' in it breaks the URL
        f"postgres//vfleet:{DB_PW}@db-host/vfleet",
        "postgresql://u:s3@cr:et@h:5x/db",
    ],
)
def test_a_malformed_database_url_is_one_line_without_its_password(
    clean_env: dict[str, str], tmp_path: Path, url: str
) -> None:
    res = vfleet("batches", env=_env(clean_env, tmp_path, VFLEET_DATABASE_URL=url))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vfleet: error: database URL")
    for piece in ("p@ss", "w%rd", "s3", "et@h"):
        assert piece not in res.stderr


def test_logs_tables_and_json_of_a_scan_mask_an_instance_url(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "fleet.toml").write_text(
        f'[[instances]]\nname = "gone"\nbase_url = "http://svc:{KEY_PW}@127.0.0.1:{free_port()}/v1"'
        '\nmodel = "m"\n'
    )
    env = _env(clean_env, tmp_path, COLUMNS="200")
    done = vfleet("--log-level", "DEBUG", "vllm", "--live", "--json", env=env)
    assert done.returncode == 3, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["base_url"].startswith("http://svc:***@127.0.0.1:")
    assert "svc:***@127.0.0.1" in row["error"] and "refused" in row["error"]
    table = vfleet("--log-level", "DEBUG", "vllm", env=env)
    assert "gone: DOWN: http://svc:***@127.0.0.1:" in table.stdout
    for out in (done.stdout, done.stderr, table.stdout, table.stderr):
        assert KEY_PW not in out and "k3y" not in out

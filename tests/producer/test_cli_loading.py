"""The CLI imports a command's module only when that command runs: `vfleet status` starts
without Celery, Redis or the readers (its start-up counts against its 1 s on 10^6
records), and the map of commands to modules says what each module registers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from producer.cli import COMMAND_MODULES, module_commands, run

pytestmark = pytest.mark.timeout(120)

HEAVY = ("celery", "kombu", "redis", "producer.readers", "producer.enqueue", "jinja2")


def test_each_module_registers_exactly_the_commands_the_map_names() -> None:
    for module, names in COMMAND_MODULES.items():
        group = module_commands(module)
        assert set(group.list_commands(typer.Context(group))) == set(names), module


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    listed = capsys.readouterr().out.split("Commands:", 1)[1]
    commands = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert commands == {n for names in COMMAND_MODULES.values() for n in names} | {"sim"}


def test_status_and_export_start_without_celery_or_the_readers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    script = (
        "import json, sys\n"
        "from producer.cli import run\n"
        "codes = [run(['status', '--json']), run(['batches']),\n"
        "         run(['export', 'missing', '-o', sys.argv[1]])]\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    env = {**os.environ, "VFLEET_DATABASE_URL": url}
    env.pop("VFLEET_FLEET_FILE", None)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 1]  # the missing batch is one clear error
    assert result["heavy"] == []

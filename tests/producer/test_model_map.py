"""Which model a batch runs on, said out loud: an OpenAI batch line's body.model runs on
the instances serving it, through the fleet file's aliases or ``--model``; a model the
fleet does not serve fails the enqueue in one line naming the served models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.services import vfleet
from workers.errors import ConfigError
from workers.fleet import parse_fleet
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade

pytestmark = pytest.mark.timeout(120)

FLEET = """
[[instances]]
name = "sim-1"
base_url = "http://127.0.0.1:9/v1"
model = "served-a"

[[instances]]
name = "sim-2"
base_url = "http://127.0.0.1:9/v1"
model = "served-b"

[aliases]
"gpt-4o-mini" = "served-a"
"""


def requests(path: Path, models: list[str | None]) -> Path:
    lines = []
    for i, model in enumerate(models):
        body: dict[str, object] = {"messages": [{"role": "user", "content": f"q{i}"}]}
        if model is not None:
            body["model"] = model
        line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
        lines.append(json.dumps({**line, "body": body}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    (tmp_path / "fleet.toml").write_text(FLEET, encoding="utf-8")
    e = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    return e | {
        "VFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}",
        "VFLEET_BROKER_URL": redis_url,
        "VFLEET_FLEET_FILE": str(tmp_path / "fleet.toml"),
    }


def batch_models(tmp: Path) -> dict[str, str]:
    engine = make_engine(f"sqlite:///{tmp / 'v.db'}")
    upgrade(engine)
    try:
        return {b.name: b.model for b in Ledger(engine).batches()}
    finally:
        engine.dispose()


def test_an_unserved_model_fails_in_one_line_naming_the_served_ones(
    env: dict[str, str], tmp_path: Path
) -> None:
    src = requests(tmp_path / "ask.jsonl", ["gpt-x", "gpt-x"])
    res = vfleet("enqueue", str(src), env=env)
    assert res.returncode == 1
    assert res.stderr == (
        "vfleet: error: the first request's model 'gpt-x' is not served by the fleet "
        "(it serves served-a, served-b); pass --model to run it on one of those, or map it "
        "in the fleet file's [aliases]\n"
    )
    res = vfleet("enqueue", str(src), "--model", "nope", env=env)
    assert res.returncode == 1 and "model 'nope' is not served" in res.stderr
    assert batch_models(tmp_path) == {}


def test_model_flag_runs_every_line_on_that_model_and_says_so(
    env: dict[str, str], tmp_path: Path
) -> None:
    src = requests(tmp_path / "ask.jsonl", ["gpt-x", "gpt-x", None])
    res = vfleet("enqueue", str(src), "--model", "served-b", env=env)
    assert res.returncode == 0, res.stderr
    assert (
        "models: 'gpt-x' -> 'served-b' (--model, 2 requests); "
        "no body.model -> 'served-b' (--model, 1 request)\n"
    ) in res.stdout
    assert batch_models(tmp_path) == {"ask": "served-b"}


def test_body_models_run_as_asked_or_through_an_alias_and_others_are_bad_lines(
    env: dict[str, str], tmp_path: Path
) -> None:
    src = requests(tmp_path / "mixed.jsonl", ["gpt-4o-mini", "served-a", "served-b", "gpt-x"])
    res = vfleet("enqueue", str(src), "--json", env=env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["model"], report["read"]) == ("served-a", 2)
    assert report["models"] == [
        "'gpt-4o-mini' -> 'served-a' (alias in the fleet file, 1 request)",
        "'served-a' -> 'served-a' (as asked, 1 request)",
    ]
    problems = {p["line"]: (p["code"], p["message"]) for p in report["problems"]}
    assert problems[3][0] == "mismatched_model" and "this batch runs 'served-a'" in problems[3][1]
    assert problems[4][0] == "model_not_found" and "it serves served-a, served-b" in problems[4][1]
    assert batch_models(tmp_path) == {"mixed": "served-a"}
    asked_b = requests(tmp_path / "b.jsonl", ["served-b"])
    assert vfleet("enqueue", str(asked_b), env=env).returncode == 0
    assert batch_models(tmp_path)["b"] == "served-b"


def test_a_template_batch_takes_an_alias_for_its_model(env: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "judge.jsonl"
    src.write_text(json.dumps({"id": 1, "question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    res = vfleet("enqueue", str(src), "--key", "id", "--model", "gpt-4o-mini", env=env)
    assert res.returncode == 0, res.stderr
    assert batch_models(tmp_path) == {"judge": "served-a"}


def test_an_alias_to_a_model_nobody_serves_is_a_fleet_file_error() -> None:
    with pytest.raises(ConfigError, match="alias 'x' maps to 'y', which no instance serves"):
        parse_fleet(FLEET.replace('"gpt-4o-mini" = "served-a"', '"x" = "y"'))
    assert parse_fleet(FLEET).alias("gpt-4o-mini") == "served-a"

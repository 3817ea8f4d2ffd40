"""Every built-in spec, and an OpenAI batch file, judged end to end by real workers on real
vLLM serving a model that writes nonsense: at least 98% must succeed, at temperature 0 and 1.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.realvllm.conftest import SUCCESS_FIGURES
from tests.realvllm.harness import RealFleet, write_jsonl
from tests.vllm_server import MODEL_NAME
from workers.spec import builtin_spec_names

# The first test to run waits for the package's fixture: a cold install and start included.
pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(2400)]

RECORDS = 50
MIN_SUCCESS = 0.98
LABELS = "positive,negative,neutral"
QUESTIONS = [
    ("What is the capital of France?", "Paris.", "Paris"),
    ("How many legs does a spider have?", "Six.", "Eight"),
    ("What does HTTP stand for?", "HyperText Transfer Protocol.", "HyperText Transfer Protocol"),
    ("Which planet is closest to the sun?", "Mercury, the smallest planet.", "Mercury"),
    ("What is 12 times 12?", "124", "144"),
]
TEXTS = [
    "I loved every minute of this film.",
    "The delivery was late and the box was crushed.",
    "The meeting is at ten on Tuesday.",
    "def add(a, b):\n    return a - b\n",
    "for i in range(10):\n    print(i)\n",
]


def rows(spec: str, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        q, a, ref = QUESTIONS[i % len(QUESTIONS)]
        text = TEXTS[i % len(TEXTS)]
        row: dict[str, Any] = {"id": f"{spec}-{i}"}
        if spec == "judge":
            row |= {"question": f"{q} ({i})", "answer": a, "reference": ref}
        elif spec == "pairwise":
            row |= {"question": f"{q} ({i})", "answer_a": a, "answer_b": ref}
        else:
            row |= {"text": f"{text}# {i}\n" if "def" in text else f"{text} ({i})"}
        out.append(row)
    return out


def spec_at(spec: str, temperature: float, tmp: Path) -> str:
    """The built-in spec as a file with ``temperature`` in its sampling parameters."""
    source = Path(__file__).parents[2] / "workers" / "specs" / f"{spec}.toml"
    text = re.sub(
        r"^temperature = .*$", f"temperature = {temperature}", source.read_text(), flags=re.M
    )
    path = tmp / f"{spec}-t{temperature:g}.toml"
    path.write_text(text)
    return str(path)


def report(name: str, temperature: float, fleet: RealFleet, batch: str, total: int) -> float:
    """Record the batch's figures for the package's summary; return its success rate."""
    records = fleet.records(batch)
    started = min(r.started_at for r in records if r.started_at)
    ended = max(r.finished_at for r in records if r.finished_at)
    ok = sum(r.status == "succeeded" for r in records)
    finish = Counter(r.finish_reason for r in records if r.status == "succeeded")
    failed = Counter(r.error_kind for r in records if r.status == "failed")
    rate = ok / total
    SUCCESS_FIGURES.append(
        f"{name} at temperature {temperature:g}: {ok}/{total} succeeded ({100 * rate:.1f}%), "
        f"finish {dict(finish)}, failed {dict(failed) or 'none'}, "
        f"{(ended - started).total_seconds():.0f}s"
    )
    return rate


def test_the_builtin_specs_are_the_five_tested_here() -> None:
    assert builtin_spec_names() == ["analyze", "analyze-json", "classify", "judge", "pairwise"]


SPECS = ["judge", "pairwise", "classify", "analyze", "analyze-json"]
TEMPERATURES = [0, 1]


@pytest.fixture(scope="module")
def batches(real_fleet: RealFleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Every batch of this module, enqueued at once: the servers stay full, with no batch's
    tail (or enqueue) waiting on the last. Returns the batch names and their sizes."""
    tmp = tmp_path_factory.mktemp("specs")
    names: dict[str, int] = {}
    for temperature in TEMPERATURES:
        for spec in SPECS:
            batch = f"{spec}-t{temperature}"
            src = write_jsonl(tmp / f"{batch}.jsonl", rows(spec, RECORDS))
            extra = ("--labels", LABELS) if spec == "classify" else ()
            spec_file = spec_at(spec, temperature, tmp)
            real_fleet.enqueue(src, batch, "--spec", spec_file, "--key", "id", *extra)
            names[batch] = RECORDS
        batch = f"openai-t{temperature}"
        src = write_jsonl(tmp / f"{batch}.jsonl", batch_lines(RECORDS, temperature))
        real_fleet.enqueue(src, batch, "--format", "openai")
        names[batch] = RECORDS
    return names


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("spec", SPECS)
def test_builtin_spec_succeeds_on_real_vllm(
    real_fleet: RealFleet, batches: dict[str, int], spec: str, temperature: float
) -> None:
    batch = f"{spec}-t{temperature}"
    real_fleet.wait_done(batch, batches[batch])
    rate = report(spec, temperature, real_fleet, batch, RECORDS)
    records = real_fleet.records(batch)
    assert rate >= MIN_SUCCESS, [(r.key, r.error_kind, r.error) for r in records if r.error]
    for r in records:
        if r.status != "succeeded":
            # What a failed record keeps, as the README promises.
            assert r.error_kind and r.error
            continue
        assert r.prompt_tokens and r.completion_tokens and r.output_text is not None
        assert r.provenance and r.provenance["max_model_len"] == 1024
        if spec == "classify":
            assert r.output["label"] in LABELS.split(",")
        elif spec == "pairwise":
            assert r.output["winner"] in ("A", "B", "tie") and len(r.output["verdicts"]) == 2
        elif spec == "judge":
            assert 1 <= r.output["score"] <= 10 and len(r.output["reasoning"]) <= 600
        elif spec == "analyze-json":
            assert r.output["severity"] in ("low", "medium", "high")
            assert len(r.output["issues"]) <= 4
        else:
            assert r.output is None and r.finish_reason in ("stop", "length")


def batch_lines(n: int, temperature: float) -> list[dict[str, Any]]:
    schema = {
        "type": "object",
        "properties": {
            "label": {"enum": ["yes", "no"]},
            "why": {"type": "string", "maxLength": 80},
        },
        "required": ["label", "why"],
        "additionalProperties": False,
    }
    out = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": f"Is {i} even? Say yes or no."}],
            "max_tokens": 64,
            "temperature": temperature,
        }
        if i % 2:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "even", "schema": schema, "strict": True},
            }
        out.append(
            {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return out


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_openai_batch_file_succeeds_on_real_vllm(
    real_fleet: RealFleet, batches: dict[str, int], tmp_path: Path, temperature: float
) -> None:
    batch = f"openai-t{temperature}"
    real_fleet.wait_done(batch, batches[batch])
    rate = report("openai batch", temperature, real_fleet, batch, RECORDS)
    assert rate >= MIN_SUCCESS
    out = tmp_path / "out.jsonl"
    done = real_fleet.cli("export", batch, "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = [line for line in out.read_text().splitlines() if line]
    assert len(lines) == RECORDS
    for r in real_fleet.records(batch):
        if r.status == "succeeded":
            assert r.output["status_code"] == 200 and r.output["body"]["choices"]
            assert r.finish_reason in ("stop", "length")

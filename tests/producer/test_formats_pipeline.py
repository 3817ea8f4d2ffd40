"""End to end on simulated vLLM with real workers: OpenAI batch files in and out, result
reuse across batches, provenance and judge votes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types import Batch, Completion
from openai.types.chat import ChatCompletion

from ops.redis_server import RedisServer
from tests.openai_shapes import validate_output_line
from tests.pipeline import MODEL, Pipeline, judge_rows, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pipeline(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    # Its own Redis database: other modules' workers must not take these messages.
    broker = redis_server.url.rsplit("/", 1)[0] + "/7"
    # Hedging off: these tests count the fleet's calls, and a hedge is one call more.
    with Pipeline(tmp_path_factory.mktemp("formats"), broker, instances=2, hedge=False) as p:
        yield p


def openai_lines(n: int, model: str = MODEL) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(n):
        if i % 3 == 2:
            url, body = "/v1/completions", {"model": model, "prompt": f"Say {i}", "max_tokens": 8}
        else:
            messages = [{"role": "user", "content": f"What is {i} + 1?"}]
            body = {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0}
            url = "/v1/chat/completions"
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    lines.insert(5, {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {}})
    return lines


def messy_batch_file(path: Path) -> Path:
    """30 requests (line 6 an embeddings request, out of them), then a line that is not
    UTF-8, one that is not JSON, a duplicate custom_id and a model nobody serves."""
    write_jsonl(path, openai_lines(30))
    dup = json.dumps(openai_lines(1)[0]).encode()
    other = openai_lines(1, "some-other-model")[0] | {"custom_id": "other"}
    with path.open("ab") as fh:
        fh.write(b'{"custom_id": "latin", "x": "caf\xe9"}\n')  # line 32
        fh.write(b"{not json\n")  # line 33
        fh.write(dup + b"\n")  # line 34: req-0 again
        fh.write(json.dumps(other).encode() + b"\n")  # line 35
    return path


def test_openai_batch_file_runs_as_is_and_exports_openai_output(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    src = messy_batch_file(tmp_path / "requests.jsonl")
    res = pipeline.cli("enqueue", str(src), "--batch", "oa", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["lines"], report["read"], report["added"]) == (35, 31, 30)
    assert (report["bad_lines"], report["duplicates"]) == (4, 1)
    assert "line 6: unsupported url '/v1/embeddings'" in report["bad"][0]
    assert pipeline.wait_done("oa", 30)["succeeded"] == 30

    res = pipeline.cli("status", "oa", "--json")
    batch = Batch.model_validate_json(res.stdout)
    assert batch.status == "completed" and batch.model == MODEL
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (30, 30)
    stamps = [batch.created_at, batch.in_progress_at, batch.finalizing_at, batch.completed_at]
    assert all(isinstance(t, int) for t in stamps) and stamps == sorted(stamps)  # type: ignore[type-var]
    assert batch.cancelled_at is None and batch.usage is not None and batch.usage.output_tokens > 0
    assert batch.errors is not None
    assert [(e.line, e.code) for e in batch.errors.data or []] == [
        (6, "unsupported_url"),
        (32, "invalid_encoding"),
        (33, "invalid_json_line"),
        (34, "duplicate_custom_id"),
        (35, "model_not_found"),
    ]

    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    args = ("export", "oa", "--format", "openai", "-o", str(out), "--errors-file", str(err))
    res = pipeline.cli(*args)
    assert res.returncode == 0, res.stderr
    lines = [validate_output_line(json.loads(x)) for x in out.read_text().splitlines()]
    assert [x.custom_id for x in lines] == [f"req-{i}" for i in range(30)]
    for i, line in enumerate(lines):
        assert line.error is None and line.response is not None
        assert line.response.status_code == 200 and line.response.request_id
        assert line.id.startswith("batch_req_")
        body = line.response.body
        if i % 3 == 2:
            text = Completion.model_validate(body)
            assert text.choices[0].text and text.model == MODEL
        else:
            chat = ChatCompletion.model_validate(body)
            assert chat.choices[0].message.content and chat.model == MODEL
            assert chat.usage is not None and chat.usage.completion_tokens <= 16
    errors = [validate_output_line(json.loads(x)) for x in err.read_text().splitlines()]
    assert [(e.custom_id, e.error.code, e.error.line) for e in errors if e.error] == [
        ("emb", "unsupported_url", 6),
        (None, "invalid_encoding", 32),
        (None, "invalid_json_line", 33),
        ("req-0", "duplicate_custom_id", 34),
        ("other", "model_not_found", 35),
    ]


def test_a_batch_file_for_another_model_runs_on_the_fleets_with_model(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "gpt.jsonl", openai_lines(6, "gpt-4o-mini"))
    res = pipeline.cli("enqueue", str(src), "--batch", "gpt")
    assert res.returncode == 1
    assert "model 'gpt-4o-mini' is not served by the fleet (it serves sim-model)" in res.stderr
    res = pipeline.cli("enqueue", str(src), "--batch", "gpt", "--model", MODEL)
    assert res.returncode == 0, res.stderr
    assert f"models: 'gpt-4o-mini' -> '{MODEL}' (--model, 6 requests)" in res.stdout
    assert pipeline.wait_done("gpt", 6)["succeeded"] == 6
    out = tmp_path / "gpt-out.jsonl"
    assert pipeline.cli("export", "gpt", "--format", "openai", "-o", str(out)).returncode == 0
    lines = [validate_output_line(json.loads(raw)) for raw in out.read_text().splitlines()]
    ran = [x.response.body["model"] for x in lines if x.response is not None]
    assert ran == [MODEL] * 6  # what ran, not what was asked
    assert [x.error.code for x in lines if x.error is not None] == ["unsupported_url"]


def test_unchanged_work_is_reused_and_changed_work_runs(pipeline: Pipeline, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", judge_rows(40, prefix="d"))
    pipeline.enqueue(src, "dedupe-1")
    pipeline.wait_done("dedupe-1", 40)
    before = pipeline.sim_requests()

    res = pipeline.cli("enqueue", str(src), "--batch", "dedupe-2", "--key", "id", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["reused"] == 40
    assert pipeline.counts("dedupe-2")["succeeded"] == 40
    first = {r.key: r for r in pipeline.records("dedupe-1")}
    for r in pipeline.records("dedupe-2"):
        assert r.reused_from == first[r.key].id and r.output == first[r.key].output
        assert r.fingerprint == first[r.key].fingerprint
    assert pipeline.sim_requests() == before  # the fleet saw none of it

    rows = judge_rows(40, prefix="d")
    rows[0]["answer"] = "something else"  # changed input: this one runs again
    changed = write_jsonl(tmp_path / "d2.jsonl", rows)
    res = pipeline.cli("enqueue", str(changed), "--batch", "dedupe-3", "--key", "id", "--json")
    assert json.loads(res.stdout)["reused"] == 39
    # A changed sampling parameter (votes here) is different work: nothing is reused.
    res = pipeline.cli(
        "enqueue", str(src), "--batch", "dedupe-4", "--key", "id", "--votes", "2", "--json"
    )
    assert json.loads(res.stdout)["reused"] == 0
    pipeline.wait_done("dedupe-3", 40)
    pipeline.wait_done("dedupe-4", 40)
    assert pipeline.sim_requests() - before == 1 + 40 * 2
    # The old results are still there, untouched.
    assert {r.key: r.output for r in pipeline.records("dedupe-1")} == {
        k: r.output for k, r in first.items()
    }


def test_results_carry_provenance_and_votes_aggregate(pipeline: Pipeline, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "v.jsonl", judge_rows(20, prefix="v"))
    before = pipeline.sim_requests()
    pipeline.enqueue(src, "votes", "--votes", "3")
    assert pipeline.wait_done("votes", 20)["succeeded"] == 20
    assert pipeline.sim_requests() - before == 60
    names = {i.name for i in pipeline.instances}
    spread = 0.0
    for r in pipeline.records("votes"):
        votes = r.output["votes"]
        assert votes["n"] == 3 and len(votes["scores"]) == 3
        assert votes["min"] <= r.output["score"] <= votes["max"]
        assert r.output["score"] == pytest.approx(sum(votes["scores"]) / 3)
        spread += votes["stdev"]
        p = r.provenance
        assert p["instance"] == r.instance and p["instance"] in names
        assert (p["model"], p["max_model_len"], p["host"]) == (MODEL, 8192, "127.0.0.1")
        assert p["gpus"] == [] and r.latency_ms > 0 and r.completion_tokens > 0
    assert spread > 0  # different seeds gave different scores somewhere


def test_a_template_that_never_ends_fails_its_record_and_frees_the_worker(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    spec = tmp_path / "endless.toml"
    spec.write_text(
        'template = """{% if id == \'e3\' %}{% for i in range(100000) %}'
        "{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}"
        'Answer in a word: {{ question }}"""\n',
        encoding="utf-8",
    )
    src = write_jsonl(tmp_path / "endless.jsonl", judge_rows(8, prefix="e"))
    pipeline.enqueue(src, "endless", "--spec", str(spec))
    # The endless record fails within its render bound; the rest run beside it.
    counts = pipeline.wait_done("endless", 8, timeout=120)
    assert (counts["succeeded"], counts["failed"]) == (7, 1)
    [failed] = [r for r in pipeline.records("endless") if r.status == "failed"]
    assert (failed.key, failed.error_kind) == ("e3", "template")
    assert failed.error is not None and "rendering ran over" in failed.error

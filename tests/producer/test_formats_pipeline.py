"""End to end on simulated vLLM with real workers: OpenAI batch files in and out, result
reuse across batches, provenance and judge votes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from ops.redis_server import RedisServer
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


def openai_lines(n: int) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(n):
        if i % 3 == 2:
            url, body = "/v1/completions", {"model": "any", "prompt": f"Say {i}", "max_tokens": 8}
        else:
            messages = [{"role": "user", "content": f"What is {i} + 1?"}]
            body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0}
            url = "/v1/chat/completions"
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body})
    lines.insert(5, {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {}})
    return lines


def test_openai_batch_file_runs_as_is_and_exports_openai_output(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    src = write_jsonl(tmp_path / "requests.jsonl", openai_lines(30))
    res = pipeline.cli("enqueue", str(src), "--batch", "oa", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["read"], report["added"], report["bad_lines"]) == (30, 30, 1)
    assert "line 6: unsupported url '/v1/embeddings'" in report["bad"][0]
    assert pipeline.wait_done("oa", 30)["succeeded"] == 30

    status = json.loads(pipeline.cli("status", "oa", "--json").stdout)
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    stamps = [status[k] for k in ("created_at", "in_progress_at", "completed_at")]
    assert all(isinstance(t, int) for t in stamps) and stamps == sorted(stamps)
    assert status["cancelled_at"] is None

    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    args = ("export", "oa", "--format", "openai", "-o", str(out), "--errors-file", str(err))
    res = pipeline.cli(*args)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(30)]
    assert err.read_text() == ""
    for i, line in enumerate(lines):
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["id"].startswith("batch_req_")
        body = line["response"]["body"]
        if i % 3 == 2:
            text = Completion.model_validate(body)
            assert text.choices[0].text and text.model == MODEL
        else:
            chat = ChatCompletion.model_validate(body)
            assert chat.choices[0].message.content and chat.model == MODEL
            assert chat.usage is not None and chat.usage.completion_tokens <= 16


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

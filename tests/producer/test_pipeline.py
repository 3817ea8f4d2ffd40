"""End to end: enqueue with the CLI, real Celery workers judge on simulated vLLM, SQL holds
every result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.redis_server import RedisServer
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from workers.store.queries import iter_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pipeline(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    with Pipeline(tmp_path_factory.mktemp("pipeline"), redis_server.url) as p:
        yield p


def test_2000_records_over_4_instances_each_succeed_exactly_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    before = pipeline.sim_requests()
    src = write_jsonl(tmp_path / "big.jsonl", judge_rows(2000))
    res = pipeline.cli("enqueue", str(src), "--spec", "judge", "--batch", "big", "--key", "id")
    assert res.returncode == 0, res.stderr
    assert "(2000 added, 0 already stored, 0 reused)" in res.stdout
    counts = pipeline.wait_done("big", 2000)
    assert counts["succeeded"] == 2000 and counts["failed"] == 0
    assert pipeline.ledger is not None
    records = list(iter_records(pipeline.ledger.engine, pipeline.ledger.batch("big").id))
    assert len({r.key for r in records}) == 2000
    assert all(r.attempts == 1 and r.output and 1 <= r.output["score"] <= 10 for r in records)
    # Each record was called once by its owner, plus at most once more if it was hedged in
    # the batch's tail (on by default); a hedge that won says so in the provenance.
    hedged = pipeline.hedged("big")
    calls = pipeline.sim_requests() - before
    assert 2000 <= calls <= 2000 + len(hedged), (calls, len(hedged))
    won = {r.id for r in records if (r.provenance or {}).get("hedged_from")}
    assert won <= hedged
    per_instance = {inst.name: 0 for inst in pipeline.instances}
    for r in records:
        per_instance[r.instance or "?"] += 1
    assert all(n > 100 for n in per_instance.values()), per_instance


def test_enqueueing_the_same_file_twice_adds_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "twice.jsonl", judge_rows(50, prefix="t"))
    first = pipeline.cli("enqueue", str(src), "--batch", "twice", "--key", "id", "--json")
    assert first.returncode == 0, first.stderr
    pipeline.wait_done("twice", 50)
    second = pipeline.cli("enqueue", str(src), "--batch", "twice", "--key", "id", "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["read"], report["added"], report["published_now"]) == (50, 0, 0)
    assert (report["published"], report["waiting"]) == (50, 0)  # all went to the fleet before
    assert pipeline.counts("twice")["succeeded"] == 50


def test_malformed_lines_are_reported_by_number_and_the_rest_run(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    good = [json.dumps(r) for r in judge_rows(5, prefix="m")]
    lines = [good[0], "{not json", good[1], "[1, 2]", good[2], good[3], '{"id": ', good[4]]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = pipeline.cli("enqueue", str(src), "--batch", "bad", "--key", "id")
    assert res.returncode == 0, res.stderr
    assert "3 bad lines" in res.stdout
    for n in (2, 4, 7):
        assert f"line {n}:" in res.stderr
    assert pipeline.wait_done("bad", 5)["succeeded"] == 5

    strict = pipeline.cli("enqueue", str(src), "--batch", "bad-strict", "--key", "id", "--strict")
    assert strict.returncode == 1
    assert strict.stderr.count("\n") == 1 and "line 2" in strict.stderr
    assert "Traceback" not in strict.stderr
    listed = pipeline.cli("batches", "--json")
    assert "bad-strict" not in {b["name"] for b in json.loads(listed.stdout)}


def test_record_missing_a_template_field_fails_with_a_reason(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    rows = judge_rows(20, prefix="f")
    del rows[7]["answer"]
    src = write_jsonl(tmp_path / "missing.jsonl", rows)
    assert pipeline.cli("enqueue", str(src), "--batch", "missing", "--key", "id").returncode == 0
    counts = pipeline.wait_done("missing", 20)
    assert (counts["succeeded"], counts["failed"]) == (19, 1)
    out = tmp_path / "missing.jsonl.out.jsonl"
    res = pipeline.cli("export", "missing", "-o", str(out))
    assert res.returncode == 0, res.stderr
    failed = [r for r in map(json.loads, out.read_text().splitlines()) if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["f7"]
    assert failed[0]["error_kind"] == "template" and "answer" in failed[0]["error"]


def test_status_and_export_show_the_batch(pipeline: Pipeline, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "st.jsonl", judge_rows(30, prefix="s"))
    assert pipeline.cli("enqueue", str(src), "--batch", "st", "--key", "id").returncode == 0
    pipeline.wait_done("st", 30)
    res = pipeline.cli("status", "st", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "completed"
    assert data["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
    assert sum(sum(v.values()) for v in data["instances"].values()) == 30
    csv_out = tmp_path / "st.csv"
    assert pipeline.cli("export", "st", "-o", str(csv_out)).returncode == 0
    header, *rows = csv_out.read_text().splitlines()
    assert "output.score" in header and "output.reasoning" in header and len(rows) == 30
    follow = pipeline.cli("status", "st", "--follow", timeout=30)
    assert follow.returncode == 0 and "30/30" in follow.stdout


def test_invalid_structured_answers_are_reasked(redis_server: RedisServer, tmp_path: Path) -> None:
    sim_args = ("--ttft", "0.005", "--itl", "0.0005", "--invalid-json-rate", "0.5", "--seed", "3")
    # Its own Redis database: the module's pipeline workers must not take these messages.
    broker = redis_server.url.rsplit("/", 1)[0] + "/1"
    with Pipeline(tmp_path, broker, instances=2, sim_args=sim_args) as p:
        src = write_jsonl(tmp_path / "reask.jsonl", judge_rows(100, prefix="j"))
        assert p.cli("enqueue", str(src), "--batch", "reask", "--key", "id").returncode == 0
        counts = p.wait_done("reask", 100)
        assert p.ledger is not None
        records = list(iter_records(p.ledger.engine, p.ledger.batch("reask").id))
        # Half the answers come back invalid: far more calls than records, and the
        # records that still failed kept the raw text and say why.
        assert p.sim_requests() > 130
        assert counts["succeeded"] > 80
        for r in records:
            if r.status == "failed":
                assert r.error_kind == "invalid_output" and r.output_text
            else:
                assert r.output is not None and 1 <= r.output["score"] <= 10

"""The Python API against a simulated fleet with real workers: dicts, a DataFrame, a Parquet
file and a ``datasets.Dataset`` in; results in input order, typed DataFrames and Parquet
out; resubmission adds nothing; cancel and retry; the same figures as the CLI.
``vfleet run`` on a fleet whose workers are already running starts none."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops.redis_server import RedisServer
from producer.api import BatchHandle, submit
from producer.errors import EnqueueError
from tests.pipeline import Pipeline, judge_rows, write_jsonl
from workers.errors import ConfigError
from workers.spec import SpecError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WAIT = 240.0


@pytest.fixture(scope="module")
def pipeline(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    broker = redis_server.url.rsplit("/", 1)[0] + "/2"
    with Pipeline(tmp_path_factory.mktemp("api"), broker, instances=2, hedge=False) as p:
        yield p


def where(p: Pipeline) -> dict[str, Any]:
    """The settings that point the API at the pipeline (as VFLEET_* variables would)."""
    return {
        "fleet": p.tmp / "fleet.toml",
        "database_url": p.settings.database_url,
        "broker_url": p.settings.broker_url,
    }


def shuffled(n: int, prefix: str) -> list[dict[str, object]]:
    """Judge records whose keys are not in any sorted order."""
    rows = judge_rows(n, prefix=prefix)
    return [rows[(i * 37) % n] for i in range(n)]


def test_dicts_come_back_in_input_order_with_the_clis_figures(pipeline: Pipeline) -> None:
    rows = shuffled(60, "d")
    with submit(rows, spec="judge", batch="api-dicts", key="id", **where(pipeline)) as h:
        assert (h.report is not None) and (h.report.read, h.report.added) == (60, 60)
        final = h.wait(progress=False, timeout=WAIT)
        results = list(h.results())
        status = h.status()
    assert final["status"] == "completed" and final["request_counts"]["completed"] == 60
    assert [r["key"] for r in results] == [r["id"] for r in rows]
    assert all(r["status"] == "succeeded" for r in results)
    assert all(isinstance(r["output"]["score"], int) for r in results)
    assert [r["input"] for r in results] == rows
    res = pipeline.cli("status", "api-dicts", "--json")
    assert res.returncode == 0, res.stderr
    assert status == json.loads(res.stdout)


def test_resubmitting_the_same_records_adds_nothing(pipeline: Pipeline) -> None:
    rows = shuffled(30, "again")
    with submit(rows, batch="api-again", key="id", **where(pipeline)) as h:
        h.wait(progress=False, timeout=WAIT)
    before = pipeline.counts("api-again")
    with submit(iter(rows), batch="api-again", key="id", **where(pipeline)) as again:
        assert again.report is not None
        assert (again.report.read, again.report.added, again.report.already_stored) == (30, 0, 30)
        assert again.report.published_now == 0
    assert pipeline.counts("api-again") == before and before["succeeded"] == 30
    # Without a key field, records are keyed by their content: the same records, the same keys.
    with submit(rows, batch="api-hashed", **where(pipeline)) as h:
        h.wait(progress=False, timeout=WAIT)
    with submit(rows, batch="api-hashed", **where(pipeline)) as again:
        assert again.report is not None and again.report.added == 0


def test_a_dataframe_goes_in_and_comes_back_typed_in_its_order(pipeline: Pipeline) -> None:
    frame = pd.DataFrame(shuffled(40, "f"))
    frame["weight"] = [math.nan if i % 5 == 0 else float(i) for i in range(40)]
    frame.index = range(100, 140)  # the index is not a record field
    with submit(frame, batch="api-df", key="id", **where(pipeline)) as h:
        h.wait(progress=False, timeout=WAIT)
        out = h.to_pandas()
    assert len(out) == 40 and list(out["key"]) == list(frame["id"])
    assert list(out["input.id"]) == list(frame["id"])
    assert out["input.weight"].isna().sum() == 8  # NaN went in as null, comes back missing
    assert str(out["output.score"].dtype) == "Int64"
    assert out["output.score"].between(1, 10).all()
    assert pd.api.types.is_string_dtype(out["output.reasoning"])
    assert set(out["status"]) == {"succeeded"}
    assert out["finished_at"].dt.tz is not None


def test_a_parquet_file_and_a_dataset_go_in_like_the_rest(pipeline: Pipeline) -> None:
    import datasets

    path = pipeline.tmp / "api-pq.parquet"
    pq.write_table(pa.Table.from_pylist(shuffled(25, "p")), path, row_group_size=10)
    with submit(path, key="id", **where(pipeline)) as h:
        assert h.name == "api-pq"  # the file's stem
        assert h.wait(progress=False, timeout=WAIT)["request_counts"]["completed"] == 25
    rows = shuffled(20, "hf")
    dataset = datasets.Dataset.from_list(rows).select(range(19, -1, -1))  # reversed
    with submit(dataset, batch="api-hf", key="id", **where(pipeline)) as h:
        h.wait(progress=False, timeout=WAIT)
        keys = [r["key"] for r in h.results()]
    assert keys == [r["id"] for r in reversed(rows)]


def test_cancel_stops_a_batch_and_retry_runs_the_rest(pipeline: Pipeline) -> None:
    with submit(judge_rows(1500, prefix="c"), batch="api-cancel", key="id", **where(pipeline)) as h:
        cancelled = h.cancel()
        assert cancelled.cancelled > 0
        final = h.wait(progress=False, timeout=WAIT)
        assert final["status"] == "cancelled"
        assert final["counts"]["cancelled"] == cancelled.cancelled
        retried = h.retry(cancelled=True)
        # The retry publishes what fits now; a queue still holding the cancelled records'
        # messages, or a worker's feeder holding the lock, leaves the rest to the feeders.
        assert retried.revived == cancelled.cancelled
        assert 0 <= retried.published <= retried.revived
        final = h.wait(progress=False, timeout=WAIT)
    assert final["counts"]["succeeded"] == 1500


def test_wait_shows_a_progress_bar_and_a_handle_opens_by_name(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    with submit(shuffled(10, "bar"), batch="api-bar", key="id", **where(pipeline)) as h:
        h.wait(timeout=WAIT)
    err = capsys.readouterr().err
    assert "api-bar" in err and "10/10" in err
    with BatchHandle.open("api-bar", **where(pipeline)) as again:
        assert again.progress().complete
        assert again.export(pipeline.tmp / "bar.csv") == 10


def test_errors_are_one_line_and_vfleets_own(pipeline: Pipeline) -> None:
    settings = where(pipeline)
    with pytest.raises(ConfigError, match="name the batch"):
        submit([{"id": 1}], **settings)
    with pytest.raises(SpecError, match="unknown spec"):
        submit([{"id": 1}], spec="no-such-spec", batch="x", **settings)
    with pytest.raises(ConfigError, match="records must be a path, a DataFrame"):
        submit(42, batch="x", **settings)
    with pytest.raises(ConfigError, match="unknown setting 'databse_url'"):
        submit([{"id": 1}], batch="x", databse_url="sqlite://")
    with pytest.raises(ConfigError, match="no such file"):
        submit(pipeline.tmp / "absent.jsonl", **settings)
    with pytest.raises(EnqueueError, match="no valid records"):
        submit([[1, 2]], batch="x", **settings)
    assert "x" not in {b.name for b in pipeline.ledger.batches()}


def test_parquet_round_trip_with_a_bad_row(pipeline: Pipeline) -> None:
    rows = shuffled(30, "rt")
    table = pa.Table.from_pylist(rows)
    weights = pa.array([1.0] * 6 + [math.inf] + [2.0] * 23)
    src = pipeline.tmp / "roundtrip.parquet"
    pq.write_table(table.append_column("weight", weights), src, row_group_size=8)
    res = pipeline.cli("enqueue", str(src), "--key", "id", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["bad"] == ["line 7: field 'weight': a number that is not finite"]
    assert pipeline.wait_done("roundtrip", 29)["succeeded"] == 29

    out = pipeline.tmp / "roundtrip.results.parquet"
    res = pipeline.cli("export", "roundtrip", "-o", str(out))
    assert res.returncode == 0 and "1 input lines are not records" in res.stdout, res.stdout
    back = pq.read_table(out)
    assert back.schema.field("output.score").type == pa.int64()
    assert back.schema.field("output.reasoning").type == pa.string()
    assert back.schema.field("attempts").type == pa.int64()
    assert back.column("key").to_pylist() == [r["id"] for i, r in enumerate(rows) if i != 6]
    scores = back.column("output.score").to_pylist()
    assert all(isinstance(s, int) and 1 <= s <= 10 for s in scores)
    inputs = [json.loads(s) for s in back.column("input").to_pylist()]
    assert inputs[6] == {**rows[7], "weight": 2.0}
    res = pipeline.cli("report", "roundtrip")
    assert res.returncode == 0 and "lines 7: field 'weight'" in res.stdout, res.stdout


def test_run_uses_the_workers_already_running(pipeline: Pipeline) -> None:
    src = write_jsonl(pipeline.tmp / "run-alive.jsonl", shuffled(20, "ra"))
    out = pipeline.tmp / "run-alive.out.jsonl"
    res = pipeline.cli("run", str(src), "--key", "id", "-o", str(out), timeout=WAIT)
    assert res.returncode == 0, res.stderr
    assert "workers: started none; already running: sim-1, sim-2" in res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in lines] == [r["id"] for r in shuffled(20, "ra")]
    assert "run-alive: 20 succeeded, 0 failed, 0 cancelled; wrote 20 records" in res.stdout

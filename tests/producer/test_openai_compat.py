"""What vfleet says about a batch, in OpenAI's shapes: ``status --json`` is an
``openai.types.Batch`` at every stage, with the bad input lines as its errors; ``export
--format openai`` is OpenAI batch output, bad lines in the errors output; finish reasons
are counted everywhere. On SQLite and PostgreSQL, read with the real ``openai`` types."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from producer.export import export_batch, export_openai
from producer.progress import batch_progress
from producer.report import build_report, render_text
from producer.sources import file_source
from producer.storing import store_source
from tests.openai_shapes import validate_output_line
from tests.records import add_records
from tests.services import vfleet
from workers.spec import load_spec
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import BatchInfo, Claim, Outcome

pytestmark = pytest.mark.timeout(120)

CHAT = "/v1/chat/completions"


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def request(cid: str, url: str = CHAT, model: str = "m") -> dict[str, object]:
    body: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": cid}]}
    if url != CHAT:
        body = {"model": model, "prompt": cid}
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def batch_file(path: Path) -> Path:
    lines = [
        json.dumps(request("a")),  # 1
        json.dumps(request("emb", "/v1/embeddings")),  # 2: unsupported url
        "{not json",  # 3
        json.dumps(request("b")),  # 4
        "",  # 5: blank
        json.dumps(request("a")),  # 6: duplicate custom_id
        json.dumps(request("c")),  # 7
        json.dumps(request("d")),  # 8
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def openai_batch(ledger: Ledger, tmp: Path, name: str = "oa") -> BatchInfo:
    info, _ = ledger.create_batch(
        name=name,
        spec_name="openai",
        spec=load_spec("openai").model_dump(mode="json"),
        model="m",
        route="shared",
        source=str(tmp / "requests.jsonl"),
    )
    source = file_source(batch_file(tmp / "requests.jsonl"), "openai")
    store_source(ledger, info, source, key_field="custom_id")
    return info


def chat_body(cid: str, finish: str = "stop") -> dict[str, object]:
    completion = ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{cid}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": f"answer {cid}"},
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )
    return completion.model_dump(mode="json", exclude_none=True)


def claim(ledger: Ledger, record_id: int) -> Claim:
    c = ledger.claim(record_id, worker="w", instance="i1", task_id=None, lease_seconds=60)
    assert c is not None
    return c


def succeed(ledger: Ledger, c: Claim, request_id: str = "req-1", finish: str = "stop") -> None:
    out = {"status_code": 200, "request_id": request_id, "body": chat_body(c.key, finish)}
    ledger.succeed(c, Outcome("answer", out, 5, 3, 10.0, finish_reason=finish))


def as_batch(ledger: Ledger, info: BatchInfo) -> tuple[Batch, dict[str, object]]:
    d = batch_progress(ledger, ledger.batch(info.name), details=True).as_dict()
    return Batch.model_validate(json.loads(json.dumps(d))), d


def test_status_is_an_openai_batch_at_every_stage(ledger: Ledger, tmp_path: Path) -> None:
    info = openai_batch(ledger, tmp_path)
    ids = {r.key: r.id for r in iter_records(ledger.engine, info.id)}
    assert sorted(ids) == ["a", "b", "c", "d"]

    batch, d = as_batch(ledger, info)
    assert batch.status == "validating" and batch.in_progress_at is None
    assert (batch.endpoint, batch.completion_window, batch.model) == (CHAT, "24h", "m")
    assert batch.input_file_id == str(tmp_path / "requests.jsonl")
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "unsupported_url"),
        (3, "invalid_json_line"),
        (6, "duplicate_custom_id"),
    ]
    assert "first at line 1" in (batch.errors.data[2].message or "")
    assert (d["bad_lines"], d["skipped_lines"]) == (3, 1)

    first = claim(ledger, ids["a"])
    assert as_batch(ledger, info)[0].status == "in_progress"
    succeed(ledger, first)
    held = [claim(ledger, ids[k]) for k in "bcd"]
    batch, _ = as_batch(ledger, info)
    assert batch.status == "finalizing" and batch.finalizing_at is not None
    for c in held[:-1]:
        succeed(ledger, c, finish="length")
    ledger.fail(held[-1], kind="bad_request", message="400: nope")
    batch, d = as_batch(ledger, info)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (4, 3)
    assert batch.request_counts.failed == 1
    stamps = [batch.created_at, batch.in_progress_at, batch.finalizing_at, batch.completed_at]
    assert all(isinstance(t, int) for t in stamps) and stamps == sorted(stamps)  # type: ignore[type-var]
    assert batch.usage is not None and batch.usage.total_tokens == 3 * 8
    assert (d["finish_reasons"], d["truncated"]) == ({"length": 2, "stop": 1}, 2)

    other = openai_batch(ledger, tmp_path, "other")
    ledger.cancel(other.id)
    batch, _ = as_batch(ledger, other)
    assert batch.status == "cancelled" and batch.cancelled_at is not None


def test_status_json_of_the_cli_validates_as_an_openai_batch(
    ledger: Ledger, tmp_path: Path, database_url: str
) -> None:
    openai_batch(ledger, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFLEET_")}
    env |= {"VFLEET_DATABASE_URL": database_url, "VFLEET_FLEET_FILE": str(tmp_path / "x.toml")}
    res = vfleet("status", "oa", "--json", env=env)
    assert res.returncode == 0, res.stderr
    batch = Batch.model_validate_json(res.stdout)
    assert batch.id == "oa" and batch.errors is not None and len(batch.errors.data or []) == 3
    every = vfleet("status", "--json", env=env)
    assert [Batch.model_validate(b).id for b in json.loads(every.stdout)] == ["oa"]


def test_openai_export_writes_bad_lines_to_the_errors_output_in_line_order(
    ledger: Ledger, tmp_path: Path
) -> None:
    info = openai_batch(ledger, tmp_path)
    ids = {r.key: r.id for r in iter_records(ledger.engine, info.id)}
    succeed(ledger, claim(ledger, ids["a"]))
    succeed(ledger, claim(ledger, ids["b"]), request_id="")  # no x-request-id header
    ledger.fail(claim(ledger, ids["c"]), kind="bad_request", message="400: nope")
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    counts = export_openai(ledger, info, out, err)
    assert (counts.succeeded, counts.errors, counts.pending, counts.bad_lines) == (2, 5, 1, 4)
    ok = [validate_output_line(json.loads(x)) for x in out.read_text().splitlines()]
    assert [x.custom_id for x in ok] == ["a", "b"]
    assert ok[0].response is not None and ok[0].response.request_id == "req-1"
    assert ok[1].response is not None and ok[1].response.request_id == "chatcmpl-b"
    errors = [validate_output_line(json.loads(x)) for x in err.read_text().splitlines()]
    assert [(e.custom_id, e.error.code if e.error else None) for e in errors] == [
        ("emb", "unsupported_url"),
        (None, "invalid_json_line"),
        (None, "blank_line"),
        ("a", "duplicate_custom_id"),
        ("c", "bad_request"),
    ]
    assert [e.error.line for e in errors if e.error] == [2, 3, 5, 6, None]
    inline = tmp_path / "inline.jsonl"
    export_openai(ledger, info, inline)
    order = [validate_output_line(json.loads(x)).id for x in inline.read_text().splitlines()]
    assert order[:3] == [f"batch_req_{ids['a']}", "batch_req_line_2", "batch_req_line_3"]


def test_finish_reasons_are_counted_in_status_report_and_export(
    ledger: Ledger, tmp_path: Path
) -> None:
    info, _ = ledger.create_batch(
        name="j",
        spec_name="judge",
        spec=load_spec("judge").model_dump(mode="json"),
        model="m",
        route="shared",
    )
    add_records(ledger, info.id, [(f"k{i}", i, {"i": i}) for i in range(4)])
    records = list(iter_records(ledger.engine, info.id))
    for n, r in enumerate(records[:3]):
        c = claim(ledger, r.id)
        if n < 2:
            ledger.fail(c, kind="truncated", message="cut at max_tokens", finish_reason="length")
        else:
            ledger.succeed(c, Outcome("{}", {"score": 5}, 5, 3, 1.0, finish_reason="stop"))
    p = batch_progress(ledger, info)
    assert (p.finish_reasons, p.truncated) == ({"length": 2, "stop": 1}, 2)
    text = render_text(build_report(ledger, info))
    assert "finish reasons: length 2, stop 1 (2 cut by max_tokens)" in text
    assert "truncated" in text and "scores:\n             5        1" in text
    out = tmp_path / "j.csv"
    export_batch(ledger, info, out)
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["finish_reason"] for r in rows] == ["length", "length", "stop", ""]
    jl = tmp_path / "j.jsonl"
    export_batch(ledger, info, jl)
    assert [json.loads(x)["finish_reason"] for x in jl.read_text().splitlines()][:3] == [
        "length",
        "length",
        "stop",
    ]


def test_the_rate_of_a_finished_batch_stays_put(ledger: Ledger) -> None:
    info, _ = ledger.create_batch(
        name="r", spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    add_records(ledger, info.id, [(f"k{i}", i, {"i": i}) for i in range(5)])
    for r in iter_records(ledger.engine, info.id):
        ledger.succeed(claim(ledger, r.id), Outcome("t", None, 1, 1, 1.0))
    first = batch_progress(ledger, info)
    assert first.complete and first.rate > 0
    time.sleep(1.5)
    later = batch_progress(ledger, info)
    assert later.rate == first.rate
    assert first.started_at is not None and first.finished_at is not None
    span = (first.finished_at - first.started_at).total_seconds()
    assert later.rate == pytest.approx(5 / span)

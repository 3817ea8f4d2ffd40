"""Bad input lines kept with their batch, the ledger's string limits, batch summaries and
concurrent batch creation, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.records import add_records
from workers.store import bad_lines, summary
from workers.store.bad_lines import NewBadLine
from workers.store.engine import make_engine
from workers.store.ledger import Ledger
from workers.store.limits import BATCH_NAME_CHARS, KEY_CHARS, LimitError, clip, text_problem
from workers.store.migrate import upgrade
from workers.store.queries import iter_records
from workers.store.values import Outcome

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    engine = make_engine(database_url, pool_size=20)
    upgrade(engine)
    yield Ledger(engine)
    engine.dispose()


def _batch(ledger: Ledger, name: str = "b") -> int:
    info, _ = ledger.create_batch(
        name=name, spec_name="judge", spec={"template": "x"}, model="m", route="shared"
    )
    return info.id


def test_bad_lines_are_kept_per_file_in_line_order_and_stored_once(ledger: Ledger) -> None:
    b = _batch(ledger)
    lines = [
        NewBadLine(121, "not_an_object", "not a JSON object but an array", "[1]"),
        NewBadLine(18, "invalid_json_line", "invalid JSON (...)", '{"id": 18,,}'),
        NewBadLine(201, "blank_line", "blank line (skipped)", ""),
        NewBadLine(52, "duplicate_key", "duplicate key 'k' (first at line 7)", "{}", "k"),
    ]
    assert bad_lines.add(ledger.engine, b, "/in/a.jsonl", lines) == 4
    assert bad_lines.add(ledger.engine, b, "/in/a.jsonl", lines) == 0  # a re-run adds nothing
    assert bad_lines.add(ledger.engine, b, "/in/b.jsonl", lines[:1]) == 1  # another file
    found = list(bad_lines.iter_bad_lines(ledger.engine, b, chunk=2))
    assert [x.line for x in found] == [18, 52, 121, 121, 201]
    assert [x.line for x in bad_lines.iter_bad_lines(ledger.engine, b, skipped=False)] == [
        18,
        52,
        121,
        121,
    ]
    by_code = bad_lines.counts(ledger.engine, b)
    assert by_code == {
        "not_an_object": 2,
        "blank_line": 1,
        "duplicate_key": 1,
        "invalid_json_line": 1,
    }
    assert bad_lines.split_counts(by_code) == (4, 1)
    examples = bad_lines.examples(ledger.engine, b, per_code=1)
    assert (
        examples["not_an_object"][0].line == 121 and examples["duplicate_key"][0].custom_id == "k"
    )
    assert bad_lines.clear(ledger.engine, b, "/in/a.jsonl") == 4
    assert bad_lines.counts(ledger.engine, b) == {"not_an_object": 1}


def test_hostile_text_is_stored_cut_and_escaped_on_every_store(ledger: Ledger) -> None:
    b = _batch(ledger)
    raw = "x\x00y" + "z" * 5000
    bad_lines.add(
        ledger.engine,
        b,
        "-",
        [NewBadLine(1, "invalid_key", "m\x00" * 800, raw, "c" * 1000)],
    )
    [stored] = bad_lines.iter_bad_lines(ledger.engine, b)
    assert stored.raw is not None and stored.raw.startswith("x\\x00yzz")
    assert len(stored.raw) == bad_lines.MAX_RAW_CHARS and stored.raw.endswith("\u2026")
    assert stored.custom_id is not None and len(stored.custom_id) == 300
    assert "\x00" not in stored.message


def test_deleting_a_batch_takes_its_bad_lines(ledger: Ledger) -> None:
    b = _batch(ledger)
    bad_lines.add(ledger.engine, b, "-", [NewBadLine(1, "blank_line", "blank line")])
    ledger.delete_batch(b)
    assert bad_lines.counts(ledger.engine, b) == {}


def test_names_over_the_ledgers_limits_are_refused_the_same_on_every_store(
    ledger: Ledger,
) -> None:
    with pytest.raises(
        LimitError, match=f"batch name is 500 characters, over the ledger's {BATCH_NAME_CHARS}"
    ):
        _batch(ledger, "n" * 500)
    with pytest.raises(LimitError, match="NUL"):
        _batch(ledger, "a\x00b")
    assert ledger.batches() == []
    assert text_problem("key", "k" * KEY_CHARS, KEY_CHARS) is None
    assert "over the ledger's 300" in (text_problem("key", "k" * 400, KEY_CHARS) or "")
    assert clip("abcdef", 4) == "abc\u2026"


def _create_at_once(ledger: Ledger, name: str, n: int) -> list[tuple[int, bool] | BaseException]:
    start = threading.Barrier(n)
    results: list[tuple[int, bool] | BaseException] = []

    def create() -> None:
        start.wait()
        try:
            info, new = ledger.create_batch(
                name=name, spec_name="judge", spec={"t": 1}, model="m", route="shared"
            )
            results.append((info.id, new))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_racing_creations_of_one_batch_give_one_batch_and_no_error(ledger: Ledger) -> None:
    # Many threads, each on its own connection, create the same new batch at once.
    for attempt in range(5):
        results = _create_at_once(ledger, f"race-{attempt}", 8)
        assert [r for r in results if isinstance(r, BaseException)] == []
        made = [r for r in results if not isinstance(r, BaseException)]
        assert len({i for i, _ in made}) == 1 and sum(new for _, new in made) == 1
    assert len(ledger.batches()) == 5


def test_summaries_count_finish_reasons_tokens_and_waiting_records(ledger: Ledger) -> None:
    b = _batch(ledger)
    add_records(ledger, b, [(f"k{i}", i, {"url": "/v1/completions", "i": i}) for i in range(6)])
    ids = [r.id for r in iter_records(ledger.engine, b)]
    for n, rid in enumerate(ids[:4]):
        claim = ledger.claim(rid, worker="w", instance="i", task_id=None, lease_seconds=30)
        assert claim is not None
        if n == 3:
            ledger.fail(
                claim, kind="truncated", message="cut", completion_tokens=16, finish_reason="length"
            )
        else:
            reason = "length" if n == 0 else "stop"
            ledger.succeed(claim, Outcome("t", None, 10, 5, 1.0, finish_reason=reason))
    ledger.mark_published(ids[4:5])
    assert summary.finish_reasons(ledger.engine, b) == {"length": 2, "stop": 2}
    assert summary.usage(ledger.engine, b) == summary.Usage(30, 31)
    assert summary.waiting_unpublished(ledger.engine, b) == 1
    assert summary.sample_input(ledger.engine, b)["url"] == "/v1/completions"  # type: ignore[index]
    started = summary.last_started(ledger.engine, b)
    assert started is not None and started.tzinfo is not None

"""The registry of input formats: a format is one entry, and the suffix, ``--format``, the
key field and the spec a batch gets all come from it. The one enqueue function
(:func:`producer.enqueue.enqueue`) is what every caller stores and publishes with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.context import Context
from producer.enqueue import EnqueueOptions, enqueue
from producer.readers import ReaderError, formats
from producer.readers.base import BadRow, Row
from producer.readers.jsonl import read_jsonl
from producer.sources import file_source, records_source
from workers.settings import Settings
from workers.spec import SpecError
from workers.store.queries import iter_records

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def context(tmp_path: Path, redis_url: str) -> Iterator[Context]:
    settings = Settings(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'vfleet.db'}",
        fleet_file=tmp_path / "no-fleet.toml",
    )
    c = Context(settings)
    yield c
    c.close()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formats registered by a test are gone after it."""
    for name in ("FORMATS", "_NAMES", "_SUFFIXES"):
        monkeypatch.setattr(formats, name, dict(getattr(formats, name)))


def read_upper(path: Path, *, max_record_bytes: int | None = None) -> Iterator[Row | BadRow]:
    """A toy format: JSONL whose field names are upper-cased."""
    for item in read_jsonl(path, max_record_bytes=max_record_bytes):
        yield (
            Row(item.line, {k.upper(): v for k, v in item.data.items()})
            if isinstance(item, Row)
            else item
        )


def test_a_new_format_is_one_entry_and_its_defaults_are_the_batchs(
    registry: None, context: Context, tmp_path: Path
) -> None:
    upper = formats.register(
        formats.Format(
            "upper",
            read_upper,
            suffixes=(".upper",),
            aliases=("shout",),
            key_field="UID",
            spec="classify",
        )
    )
    src = tmp_path / "labels.upper"
    rows = [{"uid": "a", "text": "cats"}, {"uid": "b", "text": "dogs"}, {"uid": "a", "text": "x"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    assert formats.detect_format(src) is upper
    assert formats.lookup("SHOUT") is upper
    assert formats.detect_format(Path("x.upper.gz")) is upper  # a text format may be gzipped
    source = file_source(src)
    assert source.fmt is upper
    report = enqueue(context, source, EnqueueOptions(model="m", labels=["pets", "other"]))

    assert report.batch.name == "labels" and report.batch.spec_name == "classify"
    assert (report.read, report.added, report.duplicate_count) == (3, 2, 1)
    ledger = context.ledger
    stored = [(r.seq, r.key, r.input) for r in iter_records(ledger.engine, report.batch.id)]
    assert stored == [
        (1, "a", {"UID": "a", "TEXT": "cats"}),
        (2, "b", {"UID": "b", "TEXT": "dogs"}),
    ]
    assert "duplicate key 'a' (first at line 1)" in report.duplicates[0]


def test_a_name_or_suffix_two_formats_claim_is_refused(registry: None) -> None:
    with pytest.raises(ValueError, match="taken by 'jsonl'"):
        formats.register(formats.Format("mine", read_upper, suffixes=(".ndjson",)))
    with pytest.raises(ValueError, match="taken by 'parquet'"):
        formats.register(formats.Format("mine", read_upper, aliases=("pq",)))


def test_the_built_in_entries_say_what_each_format_is() -> None:
    assert list(formats.FORMATS) == ["jsonl", "csv", "tsv", "openai", "parquet"]
    openai, parquet = formats.FORMATS["openai"], formats.FORMATS["parquet"]
    # OpenAI batch files: keyed by custom_id whatever --key says, run with the openai spec.
    assert (openai.requests, openai.spec, openai.key_for("id")) == (True, "openai", "custom_id")
    assert openai.refines == "jsonl" and openai.sniff is not None
    assert formats.FORMATS["csv"].key_for(None) is None
    assert formats.FORMATS["csv"].key_for("id") == "id"
    assert parquet.seekable and parquet.spec == "judge"
    with pytest.raises(ReaderError, match="compressed inside"):
        formats.detect_format(Path("data.parquet.gz"))
    with pytest.raises(ReaderError) as info:
        formats.detect_format(Path("data.xml"))
    assert ".parquet" in str(info.value) and "parquet" in str(info.value).rsplit("(", 1)[1]


def test_dicts_enqueue_through_the_same_function_with_jsonl_defaults(
    context: Context,
) -> None:
    records = [{"id": i, "question": f"q{i}", "answer": "a"} for i in range(5)]
    records.insert(2, ["not", "a", "dict"])  # type: ignore[arg-type]
    source = records_source(records)
    report = enqueue(context, source, EnqueueOptions(batch="mem", model="m", key="id"))
    assert report.batch.spec_name == "judge"
    assert (report.read, report.added, report.bad_count) == (5, 5, 1)
    assert report.bad[0].error == "line 3: not a dict but a list"
    options = EnqueueOptions(batch="mem", model="m", key="id")
    again = enqueue(context, records_source(iter(records)), options)
    assert (again.read, again.added, again.already_stored) == (5, 0, 5)


def test_a_spec_that_does_not_fit_the_format_is_refused_before_anything_is_stored(
    context: Context, tmp_path: Path
) -> None:
    src = tmp_path / "r.jsonl"
    src.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(SpecError, match="does not fit format 'jsonl'"):
        enqueue(context, file_source(src), EnqueueOptions(spec="openai", model="m"))
    assert context.ledger.batches() == []

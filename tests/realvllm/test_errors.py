"""What real vLLM refuses or cuts short, and what vfleet makes of it: one attempt each, a
clear kind, and the evidence kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realvllm.harness import RealFleet, write_jsonl

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(2400)]


def judge_rows(n: int, *, prefix: str, answer: str = "Paris.") -> list[dict[str, str]]:
    return [
        {
            "id": f"{prefix}{i}",
            "question": f"What is the capital of France? ({i})",
            "answer": answer,
        }
        for i in range(n)
    ]


def test_prompts_over_the_context_fail_once_with_context_length(
    real_fleet: RealFleet, tmp_path: Path
) -> None:
    long = judge_rows(4, prefix="long", answer="Paris is the capital. " * 300)  # ~2,000 tokens
    short = judge_rows(6, prefix="short")
    src = write_jsonl(tmp_path / "mixed.jsonl", long + short)
    real_fleet.enqueue(src, "overlong", "--spec", "judge", "--key", "id")
    real_fleet.wait_done("overlong", 10)
    records = {r.key: r for r in real_fleet.records("overlong")}
    for row in long:
        r = records[row["id"]]
        assert (r.status, r.error_kind, r.attempts) == ("failed", "context_length", 1), r.error
        assert "maximum context length is 1024 tokens" in (r.error or "")
    assert all(records[row["id"]].status == "succeeded" for row in short)


def test_max_tokens_over_the_context_fails_at_once_with_a_clear_reason(
    real_fleet: RealFleet, tmp_path: Path
) -> None:
    spec = tmp_path / "greedy.toml"
    spec.write_text('template = "{{ question }}"\n[params]\ntemperature = 0\nmax_tokens = 4096\n')
    src = write_jsonl(tmp_path / "in.jsonl", judge_rows(3, prefix="g"))
    real_fleet.enqueue(src, "greedy", "--spec", str(spec), "--key", "id")
    real_fleet.wait_done("greedy", 3)
    for r in real_fleet.records("greedy"):
        assert (r.status, r.error_kind, r.attempts) == ("failed", "context_length", 1)
        assert "max_tokens 4096 is over the model's context of 1024 tokens" in (r.error or "")


def test_an_unbounded_string_is_cut_by_max_tokens_and_kept_as_truncated(
    real_fleet: RealFleet, tmp_path: Path
) -> None:
    # What failed every record of the first run against real vLLM: a schema whose string
    # has no maxLength lets a small model write until max_tokens.
    spec = tmp_path / "unbounded.toml"
    spec.write_text(
        'template = "Grade: {{ answer }}"\nmax_reasks = 2\n[params]\ntemperature = 0\n'
        "max_tokens = 128\n"
        '[json_schema]\ntype = "object"\nrequired = ["score", "reasoning"]\n'
        '[json_schema.properties.score]\ntype = "integer"\n'
        '[json_schema.properties.reasoning]\ntype = "string"\n'
    )
    src = write_jsonl(tmp_path / "in.jsonl", judge_rows(6, prefix="u"))
    real_fleet.enqueue(src, "unbounded", "--spec", str(spec), "--key", "id")
    real_fleet.wait_done("unbounded", 6)
    cut = [r for r in real_fleet.records("unbounded") if r.status == "failed"]
    assert len(cut) >= 5  # a random model closes a string only by chance
    for r in cut:
        assert (r.error_kind, r.attempts, r.finish_reason) == ("truncated", 1, "length")
        assert r.completion_tokens == 128 and r.prompt_tokens
        assert r.output_text and r.output_text.startswith('{"score":')

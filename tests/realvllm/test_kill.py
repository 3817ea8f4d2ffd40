"""A real vLLM server's whole process group killed mid-batch, then restarted: every record
ends succeeded exactly once, and the restarted server takes work again."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.realvllm.conftest import SUCCESS_FIGURES
from tests.realvllm.harness import RealFleet, write_jsonl
from tests.services import wait_for
from tests.vllm_server import VLLMServer, group_members

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(2400)]

SHARED = 80
AFTER = 24


def rows(n: int, prefix: str) -> list[dict[str, str]]:
    return [
        {"id": f"{prefix}{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
        for i in range(n)
    ]


def test_a_killed_and_restarted_server_loses_and_duplicates_nothing(
    real_fleet: RealFleet, vllm_servers: list[VLLMServer], tmp_path: Path
) -> None:
    victim, name = vllm_servers[0], real_fleet.instances[0].name
    real_fleet.enqueue(write_jsonl(tmp_path / "a.jsonl", rows(SHARED, "k")), "kill", "--key", "id")
    wait_for(lambda: real_fleet.done("kill") >= SHARED // 5, timeout=300, what="a fifth done")
    assert victim.process is not None
    pgid = victim.process.pid
    assert len(group_members(pgid)) >= 3  # API server, EngineCore, its worker
    victim.kill()
    killed_at = time.monotonic()
    try:
        assert group_members(pgid) == []  # nothing of the server survives
        # A generous stall window: one record has been seen to wait 160 s after the kill
        # (its message bouncing off the dead server's worker) while the rest finished.
        shared = real_fleet.wait_done("kill", SHARED, stall=420)
        finished_at = time.monotonic()
    finally:
        victim.start()  # the package's other tests need both servers
        restart = victim.wait_ready()
    assert shared["succeeded"] == SHARED, shared
    records = real_fleet.records("kill")
    assert sorted(r.key for r in records) == sorted(f"k{i}" for i in range(SHARED))
    assert all(r.status == "succeeded" and r.output is not None for r in records)
    retried = [r for r in records if r.attempts > 1]
    assert retried, "no record was in flight on the killed server"
    # The restarted server takes work again: its worker claims some of the next batch.
    after = write_jsonl(tmp_path / "p.jsonl", rows(AFTER, "p"))
    real_fleet.enqueue(after, "after", "--key", "id")
    assert real_fleet.wait_done("after", AFTER)["succeeded"] == AFTER
    served = Counter(r.instance for r in real_fleet.records("after"))
    assert served[name] > 0, served
    SUCCESS_FIGURES.append(
        f"kill test: {SHARED} records, all succeeded once ({len(retried)} retried after the "
        f"kill, batch done {finished_at - killed_at:.0f}s after it); restarted server ready "
        f"in {restart:.0f}s, then ran {served[name]} of the next {AFTER} records"
    )

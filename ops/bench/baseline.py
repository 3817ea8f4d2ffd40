"""The seeds' approach: a ``ThreadPoolExecutor`` and a thread-safe round-robin client.

What the users had (seeds 002 and 004): one ``openai.OpenAI`` client per instance, a
lock-protected index that hands them out in turn, every record submitted to the pool at
once, results written to a JSONL file as ``as_completed`` yields them, and a failed call
logged and dropped (the record has no result). The clients keep the ``openai`` defaults
(2 retries with backoff) but a 30 s timeout instead of 600 s, so a run stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import openai

from ops.bench.config import CLIENT_TIMEOUT
from ops.bench.outcome import Outcome, OutcomeWriter
from ops.bench.workload import JudgePrompt


class MultiVLLMClient:
    """Round-robin over one ``openai.OpenAI`` client per instance (the seeds' class)."""

    def __init__(self, base_urls: Sequence[str], *, timeout: float = CLIENT_TIMEOUT) -> None:
        self.clients = [
            openai.OpenAI(base_url=u, api_key="sim", timeout=timeout) for u in base_urls
        ]
        self.lock = threading.Lock()
        self.index = 0

    def get_next_client(self) -> tuple[int, openai.OpenAI]:
        """The next client in turn, with its index."""
        with self.lock:
            i = self.index
            self.index = (self.index + 1) % len(self.clients)
        return i, self.clients[i]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def analyze(
    client: MultiVLLMClient, prompt: JudgePrompt, model: str, record: dict[str, Any]
) -> Outcome:
    """Judge one record on the next instance; an error ends the record (no result)."""
    i, c = client.get_next_client()
    started = time.time()
    try:
        resp = c.chat.completions.create(**prompt.request(model, record))
    except openai.OpenAIError as e:
        now = time.time()
        message = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return Outcome(str(record["id"]), False, i, now, now - started, error=message)
    now = time.time()
    tokens = resp.usage.completion_tokens if resp.usage else None
    return Outcome(str(record["id"]), True, i, now, now - started, tokens=tokens)


def run_pool(
    *,
    base_urls: Sequence[str],
    threads: int,
    prompt: JudgePrompt,
    model: str,
    records: list[dict[str, Any]],
    writer: OutcomeWriter,
    time_limit: float,
) -> int:
    """Run the records through the pool; returns how many were written (cut at ``time_limit``)."""
    client = MultiVLLMClient(base_urls)
    deadline = time.monotonic() + time_limit
    written = 0
    executor = ThreadPoolExecutor(max_workers=threads)
    try:
        futures = {executor.submit(analyze, client, prompt, model, r): r for r in records}
        for future in as_completed(futures, timeout=time_limit):
            writer.write(future.result())
            written += 1
            if time.monotonic() > deadline:
                break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        client.close()
    return written

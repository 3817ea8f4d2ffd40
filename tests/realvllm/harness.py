"""Real vfleet workers in front of real vLLM servers: fleet file, settings, driving, reading.

Like :class:`tests.pipeline.Pipeline`, but the instances are :class:`tests.vllm_server.
VLLMServer` processes that the package's fixture owns (they outlive one test).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.demo import write_fleet
from producer.supervise import ProcessGroup, settings_env, vfleet_argv, wait_for_workers
from tests.services import vfleet
from tests.vllm_server import MAX_NUM_SEQS, MODEL_NAME, VLLMServer
from workers.celery_app import create_app
from workers.fleet import InstanceConfig
from workers.settings import Settings
from workers.store.ledger import Ledger
from workers.store.models import Record
from workers.store.opening import open_ledger
from workers.store.queries import iter_records

# A CPU server answers in a second or two; a killed one must be noticed within a test.
SETTINGS: dict[str, Any] = {
    "request_timeout": 60,
    "connect_timeout": 3,
    "retry_backoff_base": 0.5,
    "retry_backoff_max": 4,
    "lease_seconds": 30,
    "reconcile_interval": 2,
    "reconcile_grace": 4,
    "visibility_timeout": 900,
    "shutdown_grace": 8,
    "db_retry_seconds": 60,
}


class RealFleet:
    """``vfleet worker`` processes for the servers, one SQLite ledger, the broker given."""

    def __init__(self, tmp: Path, broker_url: str, servers: Sequence[VLLMServer]) -> None:
        self.tmp = tmp
        self.servers = list(servers)
        self.instances = [
            InstanceConfig(
                name=f"vllm-{n + 1}",
                base_url=s.base_url,
                model=MODEL_NAME,
                concurrency=MAX_NUM_SEQS,
            )
            for n, s in enumerate(self.servers)
        ]
        self.settings = Settings(
            broker_url=broker_url,
            database_url=f"sqlite:///{tmp / 'vfleet.db'}",
            fleet_file=tmp / "fleet.toml",
            **SETTINGS,
        )
        self.env = settings_env(self.settings) | {
            f"VFLEET_{k.upper()}": str(v) for k, v in SETTINGS.items()
        }
        self.group = ProcessGroup()
        self._ledger: Ledger | None = None

    def start(self) -> RealFleet:
        write_fleet(self.settings.fleet_file, self.instances)
        self._ledger = open_ledger(self.settings)
        for inst in self.instances:
            self.group.start(
                inst.name,
                vfleet_argv("worker", "--instance", inst.name),
                env=self.env,
                log=self.tmp / f"worker-{inst.name}.log",
            )
        seen = wait_for_workers(create_app(self.settings), len(self.instances), timeout=120)
        assert seen >= len(self.instances), f"only {seen} workers answered a ping"
        return self

    def stop(self) -> None:
        self.group.stop()
        if self._ledger is not None:
            self._ledger.engine.dispose()

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None
        return self._ledger

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return vfleet(*args, env=self.env, timeout=timeout)

    def enqueue(self, path: Path, batch: str, *extra: str) -> None:
        done = self.cli("enqueue", str(path), "--batch", batch, *extra)
        assert done.returncode == 0, done.stderr

    def counts(self, batch: str) -> dict[str, int]:
        return self.ledger.counts(self.ledger.batch(batch).id)

    def done(self, batch: str) -> int:
        c = self.counts(batch)
        return c["succeeded"] + c["failed"]

    def wait_done(self, batch: str, total: int, *, stall: float = 180) -> dict[str, int]:
        """Wait for the batch while it makes progress: fail only when no record has finished
        for ``stall`` seconds (a busy 2-core box is slow, not stuck)."""
        last, deadline = -1, time.monotonic() + stall
        while True:
            done = self.done(batch)
            if done >= total:
                return self.counts(batch)
            if done > last:
                last, deadline = done, time.monotonic() + stall
            if time.monotonic() > deadline:
                pytest.fail(f"batch {batch}: {done} of {total} done, none for {stall:.0f}s")
            time.sleep(0.5)

    def records(self, batch: str) -> list[Record]:
        return list(iter_records(self.ledger.engine, self.ledger.batch(batch).id))


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def scrape(server: VLLMServer) -> dict[str, float]:
    """The server's ``/metrics`` as ``{sample name: value summed over labels}``."""
    text = httpx2.get(f"{server.root_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out

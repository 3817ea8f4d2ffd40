"""A whole fleet for end-to-end and chaos tests: simulators, fleet file, real Celery workers.

Each simulated instance runs in its own process (so one can die and come back), each worker
is a real ``vfleet worker`` subprocess, and the ledger is read directly for assertions.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx2
import redis
from prometheus_client.parser import text_string_to_metric_families

from ops.sim.launcher import SimFleet, free_ports
from producer.demo import write_fleet
from producer.supervise import ProcessGroup, settings_env, vfleet_argv, wait_for_workers
from tests.services import vfleet, wait_for
from workers.celery_app import create_app
from workers.fleet import InstanceConfig
from workers.keys import hedged_key
from workers.settings import Settings
from workers.store.ledger import Ledger
from workers.store.opening import open_ledger
from workers.store.queries import iter_records

MODEL = "sim-model"
DEFAULT_SIM_ARGS = (
    "--max-num-seqs",
    "16",
    "--ttft",
    "0.01",
    "--itl",
    "0.0005",
    "--output-tokens",
    "5-20",
)
# Short enough that faults are noticed and recovered from within a test's time, long enough
# that a busy 2-core machine does not turn a slow answer into a fault: no request times
# out and no lease expires under a live worker (renewed every quarter lease).
TEST_SETTINGS: dict[str, Any] = {
    "request_timeout": 30,
    "connect_timeout": 5,
    "retry_backoff_base": 0.2,
    "retry_backoff_max": 2,
    "lease_seconds": 30,
    "reconcile_interval": 2,
    "reconcile_grace": 10,
    "visibility_timeout": 300,
    "shutdown_grace": 8,
    "db_retry_seconds": 60,
}


class Pipeline:
    """Start with ``with Pipeline(...) as p``; ``p.cli(...)`` runs vfleet against it."""

    def __init__(
        self,
        tmp: Path,
        broker_url: str,
        *,
        instances: int = 4,
        concurrency: int = 16,
        sim_args: tuple[str, ...] = DEFAULT_SIM_ARGS,
        per_instance_args: dict[int, tuple[str, ...]] | None = None,
        worker_args: tuple[str, ...] = (),
        database_url: str | None = None,
        **settings: Any,
    ) -> None:
        self.tmp = tmp
        self.sim_args = ("--model", MODEL, *sim_args)
        self.per_instance_args = per_instance_args or {}
        self.worker_args = worker_args
        self.ports = free_ports(instances)
        self.sims: list[SimFleet | None] = [None] * instances
        self.settings = Settings(
            broker_url=broker_url,
            database_url=database_url or f"sqlite:///{tmp / 'vfleet.db'}",
            fleet_file=tmp / "fleet.toml",
            **{**TEST_SETTINGS, **settings},
        )
        self.concurrency = concurrency
        self.group = ProcessGroup()
        self.instances = [
            InstanceConfig(
                name=f"sim-{n + 1}",
                base_url=f"http://127.0.0.1:{port}/v1",
                model=MODEL,
                concurrency=concurrency,
            )
            for n, port in enumerate(self.ports)
        ]
        self.env = settings_env(self.settings)
        self._ledger: Ledger | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Pipeline:
        try:
            for n in range(len(self.ports)):
                self.start_sim(n)
            write_fleet(self.tmp / "fleet.toml", self.instances)
            self._ledger = open_ledger(self.settings)
            for inst in self.instances:
                self.start_worker(inst.name)
            self.wait_workers(len(self.instances))
        except BaseException:
            self.__exit__(None, None, None)  # what started must stop, even half a fleet
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.group.stop()
        for sim in self.sims:
            if sim is not None:
                sim.stop()
        if self._ledger is not None:
            self._ledger.engine.dispose()

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None
        return self._ledger

    def start_sim(self, n: int, *extra: str) -> SimFleet:
        old = self.sims[n]
        if old is not None:
            old.stop()
        args = (*self.sim_args, *self.per_instance_args.get(n, ()), *extra)
        sim = SimFleet(
            instances=1,
            base_port=self.ports[n],
            extra_args=args,
            log_path=self.tmp / f"sim-{n + 1}.log",
        )
        self.sims[n] = sim.start()
        return sim

    def start_worker(self, name: str) -> None:
        key = f"{name}#{sum(1 for k in self.group.procs if k.startswith(name))}"
        self.group.start(
            key,
            vfleet_argv("worker", "--instance", name, *self.worker_args),
            env=self.env,
            log=self.tmp / f"worker-{name}.log",
        )

    def worker_pid(self, name: str) -> int:
        alive = [
            p for k, p in self.group.procs.items() if k.startswith(f"{name}#") and p.poll() is None
        ]
        assert alive, f"no live worker for {name}"
        return alive[-1].pid

    def signal_worker(self, name: str, sig: signal.Signals) -> int:
        """Send ``sig`` to the instance's worker; returns its exit code once it is gone."""
        proc = next(
            p for k, p in self.group.procs.items() if k.startswith(f"{name}#") and p.poll() is None
        )
        proc.send_signal(sig)
        return proc.wait(60)

    def wait_workers(self, n: int, timeout: float = 180) -> None:
        app = create_app(self.settings)
        seen = wait_for_workers(app, n, timeout=timeout)
        assert seen >= n, f"only {seen} of {n} workers answered a ping in {timeout}s"

    # -- driving and reading -------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120):  # type: ignore[no-untyped-def]
        return vfleet(*args, env=self.env, timeout=timeout)

    def enqueue(self, path: Path, batch: str, *extra: str) -> None:
        res = self.cli("enqueue", str(path), "--batch", batch, "--key", "id", *extra)
        assert res.returncode == 0, res.stderr

    def counts(self, batch: str) -> dict[str, int]:
        return self.ledger.counts(self.ledger.batch(batch).id)

    def done(self, batch: str) -> int:
        c = self.counts(batch)
        return c["succeeded"] + c["failed"]

    def wait_done(self, batch: str, total: int, timeout: float = 300) -> dict[str, int]:
        wait_for(
            lambda: self.done(batch) == total, timeout=timeout, what=f"batch {batch} to finish"
        )
        return self.counts(batch)

    def wait_progress(self, batch: str, at_least: int, timeout: float = 300) -> None:
        wait_for(
            lambda: self.done(batch) >= at_least,
            timeout=timeout,
            what=f"{at_least} records of {batch} done",
        )

    def records(self, batch: str) -> list[Any]:
        return list(iter_records(self.ledger.engine, self.ledger.batch(batch).id))

    def hedged(self, batch: str) -> set[int]:
        """Ids of the batch's records the feeder sent to a second instance (hedges)."""
        client = redis.Redis.from_url(self.settings.broker_url)
        try:
            members = client.smembers(hedged_key(self.ledger.batch(batch).id))
            return {int(m) for m in members}  # type: ignore[union-attr]
        finally:
            client.close()

    def sim_requests(self) -> float:
        """Completions every live simulated instance has answered, from its /metrics."""
        total = 0.0
        for sim in self.sims:
            if sim is None or sim.process.poll() is not None:
                continue
            text = httpx2.get(f"{sim.root_urls[0]}/metrics", timeout=5).text
            for fam in text_string_to_metric_families(text):
                if fam.name == "vllm:request_success":
                    total += sum(s.value for s in fam.samples if s.name.endswith("_total"))
        return total


class RecoveryClock:
    """Measures how long the pipeline takes to get back to speed after a fault.

    Recovery time: from the fault until a 2-second window first completes records at
    half the rate seen before the fault.
    """

    def __init__(self, pipeline: Pipeline, batch: str) -> None:
        self.p = pipeline
        self.batch = batch
        self.samples: list[tuple[float, int]] = []
        self.fault_at: float | None = None

    def sample(self) -> None:
        self.samples.append((time.monotonic(), self.p.done(self.batch)))

    def fault(self) -> None:
        self.sample()
        self.fault_at = time.monotonic()

    def watch_until_done(self, total: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample()
            if self.samples[-1][1] >= total:
                return
            time.sleep(0.25)
        raise AssertionError(f"batch {self.batch} did not finish within {timeout}s")

    def recovery_seconds(self) -> float | None:
        assert self.fault_at is not None
        before = [(t, n) for t, n in self.samples if t <= self.fault_at]
        after = [(t, n) for t, n in self.samples if t > self.fault_at]
        if len(before) < 2 or not after:
            return None
        (t0, n0), (t1, n1) = before[0], before[-1]
        rate = (n1 - n0) / max(t1 - t0, 1e-6)
        for i, (ta, na) in enumerate(after):
            for tb, nb in after[i:]:
                if tb - ta >= 2.0:
                    if (nb - na) / (tb - ta) >= rate / 2:
                        return max(0.0, ta - self.fault_at)
                    break
        return None


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def judge_rows(n: int, prefix: str = "r") -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}{i}",
            "question": f"What is {i} + {i}?",
            "answer": str(i * 2),
            "reference": str(i * 2),
        }
        for i in range(n)
    ]

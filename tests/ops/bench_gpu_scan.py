"""Benchmark: a GPU scan of N hosts whose nvidia-smi takes 1 s, sequential vs parallel.

    python -m tests.ops.bench_gpu_scan [--hosts 20] [--delay 1]

Every host is an alias of one local sshd (tests/sshd.py) with a fake nvidia-smi that sleeps
``--delay`` seconds. Each run uses a fresh pool, so the time includes the SSH handshakes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ops.gpu import gpu_scan_command, parse_gpu_scan
from ops.ssh.config import SSHConfigFile
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool
from tests.sshd import Sshd, sshd_available, write_client_files


def _timed(pool: SSHPool, hosts: list[str]) -> float:
    start = time.monotonic()
    results = pool.run_many(hosts, gpu_scan_command())
    elapsed = time.monotonic() - start
    for r in results.values():
        assert r.value is not None, r.error
        assert parse_gpu_scan(r.value.stdout, r.value.stderr, r.value.exit_status).gpus
    return elapsed


def scan(config: Path, known: Path, hosts: list[str], parallelism: int) -> tuple[float, float]:
    """(cold, warm): a scan with a fresh pool (handshakes included), then one reusing it."""
    with SSHPool(
        ssh_config=SSHConfigFile(config),
        known_hosts=KnownHosts(known),
        allow_agent=False,
        parallelism=parallelism,
    ) as pool:
        return _timed(pool, hosts), _timed(pool, hosts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--delay", type=float, default=1.0)
    args = parser.parse_args()
    if not sshd_available():
        raise SystemExit("needs /usr/sbin/sshd: apt-get install openssh-server")
    with tempfile.TemporaryDirectory() as tmp, Sshd(Path(tmp) / "sshd") as sshd:
        env = {"SetEnv": f"FAKE_GPU_MODE=idle FAKE_GPU_DELAY={args.delay:g}"}
        aliases = {f"gpu{i:02d}": env for i in range(args.hosts)}
        config, known = write_client_files(sshd, Path(tmp) / "client", aliases)
        hosts = list(aliases)
        sequential = scan(config, known, hosts, parallelism=1)
        parallel = scan(config, known, hosts, parallelism=args.hosts)
    print(f"hosts={args.hosts} nvidia-smi delay={args.delay:g}s")
    print("                       cold pool   warm pool")
    print(f"sequential (1 at once)  {sequential[0]:7.2f} s  {sequential[1]:7.2f} s")
    print(f"parallel ({args.hosts} at once)   {parallel[0]:7.2f} s  {parallel[1]:7.2f} s")
    cold, warm = sequential[0] / parallel[0], sequential[1] / parallel[1]
    print(f"ratio                   {cold:7.1f} x  {warm:7.1f} x")


if __name__ == "__main__":
    main()

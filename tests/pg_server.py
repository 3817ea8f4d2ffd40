"""A PostgreSQL server the test owns: ``initdb`` + ``pg_ctl`` in a temp dir, run as the
``postgres`` user (PostgreSQL refuses root). Fault tests stop and start it; the machine's
own server is never touched."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from ops.redis_server import free_port

PG_USER = "postgres"


def pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL's server is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="vfleet-pg-")
        self.root = Path(self._tmp.name)
        self.data = self.root / "data"
        self.sock = self.root / "sock"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        run_as_root = os.geteuid() == 0
        cmd = ["runuser", "-u", PG_USER, "--", *argv] if run_as_root else list(argv)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        self.sock.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        self._as_postgres(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            PG_USER,
            "--no-sync",
        )
        return self

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.root / "pg.log"),
            "-w",
            "start",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user={PG_USER} "
                    "dbname=postgres connect_timeout=2"
                ).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not accept connections in time")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
        )

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        self._tmp.cleanup()

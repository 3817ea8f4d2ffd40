"""A real OpenSSH ``sshd`` for the tests, on a free loopback port, with a fake nvidia-smi.

The server runs as a non-daemon child (``sshd -D -e``) with its own host key, an authorized
client key and ``SetEnv PATH=<bin>:...`` so that ``nvidia-smi`` is the fake below. The fake
reads ``FAKE_GPU_MODE`` and ``FAKE_GPU_DELAY``, which the client sends per host alias
(``SetEnv`` in the test ssh_config, ``AcceptEnv FAKE_GPU_*`` in sshd_config).

Every process a session starts carries ``VFLEET_TEST_SSHD=<root>`` in its environment:
:func:`session_processes` finds them (a test asserts none outlive a scan) and
:meth:`Sshd.stop` ends any that are left, so no remote command outlives the test.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import psutil

from ops.redis_server import free_port
from tests import leftovers
from tests.services import missing

SSHD = "/usr/sbin/sshd"
INSTALL_HINT = "OpenSSH server not installed: apt-get install openssh-server"

UUID0 = "GPU-1b6c0b7e-0f5a-4a8e-9d51-6f1f8e2a0001"
UUID1 = "GPU-1b6c0b7e-0f5a-4a8e-9d51-6f1f8e2a0002"
A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"
MARKER = "VFLEET_TEST_SSHD"

# What nvidia-smi prints with --format=csv,noheader,nounits, per mode.
GPU_OUTPUT = {
    "idle": f"0, {UUID0}, {A100}, 0, 0, 81920, 4, 31, 61.52, 400.00\n"
    f"1, {UUID1}, {A100}, 0, 0, 81920, 4, 30, 60.10, 400.00\n",
    "busy": f"0, {UUID0}, {A100}, 97, 61, 81920, 74000, 71, 389.77, 400.00\n"
    f"1, {UUID1}, {A100}, 0, 0, 81920, 4, 30, 60.10, 400.00\n",
    "mig": f"0, {UUID0}, {A100}, [N/A], [N/A], 81920, 13, 35, 82.00, 400.00\n",
    "unsupported": f"0, {UUID0}, NVIDIA GeForce RTX 3090, 3, 1, 24576, 12, 40, "
    "[Not Supported], [Not Supported]\n",
    # A GPU in a bad state next to a healthy idle one: unknown is never idle.
    "error": f"0, {UUID0}, {H100}, [Unknown Error], [Unknown Error], 81559, 0, 33, "
    "[Unknown Error], 700.00\n"
    f"1, {UUID1}, {H100}, 0, 0, 81559, 1, 31, 69.12, 700.00\n",
    # A loaded H100 box: a vLLM server on each GPU.
    "h100": f"0, {UUID0}, {H100}, 98, 71, 81559, 73420, 67, 612.30, 700.00\n"
    f"1, {UUID1}, {H100}, 96, 69, 81559, 73420, 66, 598.74, 700.00\n",
}
APPS_OUTPUT = {
    "busy": f"4242, /usr/bin/python3, 73990, {UUID0}\n",
    "h100": f"31337, /opt/venv/bin/python3 -m vllm.entrypoints.openai.api_server, 73000, {UUID0}\n"
    f"31338, VLLM::EngineCore, 73000, {UUID1}\n",
}

FAKE_NVIDIA_SMI = """#!/bin/sh
mode="${FAKE_GPU_MODE:-idle}"
case "$*" in *query-compute-apps*) what=apps ;; *) what=gpus ;; esac
case "$mode" in
  hang) exec sleep 3600 ;;
  nodriver) echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA \
driver. Make sure that the latest NVIDIA driver is installed and running."; exit 9 ;;
  missing) echo "sh: 1: nvidia-smi: not found" >&2; exit 127 ;;
esac
if [ "$what" = gpus ] && [ -n "$FAKE_GPU_DELAY" ]; then sleep "$FAKE_GPU_DELAY"; fi
cat "$(dirname "$0")/out/$mode.$what" 2>/dev/null
exit 0
"""


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen") is not None


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vfleet-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


class Sshd:
    """An sshd we own, under ``root`` (a temporary directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.host_key = root / "ssh_host_ed25519_key"
        self.client_key = root / "id_ed25519"
        self.bin = root / "bin"
        self.user = getpass.getuser()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "sshd.log"

    def _write_files(self) -> None:
        # The test run's marker too, so that its leftover check sees remote commands.
        run_marker = f"{leftovers.MARKER}={os.environ.get(leftovers.MARKER, '')}"
        self.root.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key)
        keygen(self.client_key)
        shutil.copy(self.client_key.with_suffix(".pub"), self.root / "authorized_keys")
        (self.bin / "out").mkdir(parents=True)
        smi = self.bin / "nvidia-smi"
        smi.write_text(FAKE_NVIDIA_SMI)
        smi.chmod(0o755)
        for mode, text in GPU_OUTPUT.items():
            (self.bin / "out" / f"{mode}.gpus").write_text(text)
            (self.bin / "out" / f"{mode}.apps").write_text(APPS_OUTPUT.get(mode, ""))
        (self.root / "sshd_config").write_text(
            textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.host_key}
            PidFile {self.root / "sshd.pid"}
            AuthorizedKeysFile {self.root / "authorized_keys"}
            PermitRootLogin yes
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            AllowTcpForwarding yes
            AcceptEnv FAKE_GPU_*
            SetEnv PATH={self.bin}:/usr/local/bin:/usr/bin:/bin {MARKER}={self.root} {run_marker}
            MaxStartups 200
            MaxSessions 200
            LogLevel ERROR
            """)
        )

    def start(self, timeout: float = 20.0) -> Sshd:
        """Write keys and config, start sshd, wait until it sends its banner."""
        if self.process is None:
            self._write_files()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        cfg = str(self.root / "sshd_config")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", cfg], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-500:]}")
            if _banner(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer in {timeout}s: {self.log.read_text()[-500:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        # Whatever a session left running is a leak: end it, and the run's final check
        # (tests.leftovers) reports it.
        for proc in session_processes(self.root):
            with contextlib.suppress(psutil.Error):
                leftovers.report(proc, where=f"left by a session of the test sshd {self.root}")
                proc.kill()

    @property
    def known_hosts_line(self) -> str:
        key = self.host_key.with_suffix(".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def ssh_config(
        self, aliases: Mapping[str, Mapping[str, str]], *, port: int | None = None
    ) -> str:
        """ssh_config text: each alias → this server, with extra ``Key value`` options
        (``HostName`` and ``Port`` replace this server's)."""
        blocks = []
        for alias, extra in aliases.items():
            lines = [
                f"Host {alias}",
                f"  HostName {extra.get('HostName', '127.0.0.1')}",
                f"  Port {extra.get('Port', port or self.port)}",
                f"  User {self.user}",
                f"  IdentityFile {self.client_key}",
                "  IdentitiesOnly yes",
            ]
            lines += [f"  {k} {v}" for k, v in extra.items() if k not in ("Port", "HostName")]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def session_processes(root: Path, **env: str) -> list[psutil.Process]:
    """Live processes that sessions of the sshd under ``root`` started (with ``env`` in
    their environment too, if given)."""
    wanted = {MARKER: str(root), **env}
    found = []
    for proc in psutil.process_iter():
        try:
            environ = proc.environ()
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if all(environ.get(k) == v for k, v in wanted.items()):
            found.append(proc)
    return found


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class SilentServer:
    """A loopback TCP server that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.sock.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self._held:
            conn.close()


def start_sshd(root: Path) -> Iterator[Sshd]:
    """Yield a started :class:`Sshd` (for fixtures); skip or fail when sshd is missing."""
    if not sshd_available():
        missing(INSTALL_HINT)
    server = Sshd(root).start()
    try:
        yield server
    finally:
        server.stop()


def write_client_files(
    server: Sshd, root: Path, aliases: Mapping[str, Mapping[str, str]], *, trusted: bool = True
) -> tuple[Path, Path]:
    """(ssh_config, known_hosts) under ``root``; known_hosts holds the server key if trusted."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "ssh_config"
    config.write_text(server.ssh_config(aliases))
    known = root / "known_hosts"
    known.write_text(server.known_hosts_line if trusted else "")
    return config, known


class NetnsHost:
    """A "remote host" only SSH reaches: a network namespace of its own, holding the
    servers started with :meth:`run` on its loopback, and an sshd in it.

    The namespace has nothing but its own loopback. A listener on this machine's loopback
    (:attr:`port`) hands each connection to ``sshd -i`` started inside the namespace, so
    SSH (and its direct-tcpip channels) arrive there, while a server bound to
    ``127.0.0.1:P`` in it cannot be reached from here at all. Needs root and iproute2.
    """

    def __init__(self, sshd: Sshd) -> None:
        self.sshd = sshd
        self.name = f"vft-{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.log = sshd.root / f"netns-{self.name}.log"

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here, else why not."""
        if shutil.which("ip") is None:
            return "iproute2 not installed: apt-get install iproute2"
        if os.geteuid() != 0:
            return "network namespaces need root"
        return None

    def start(self) -> NetnsHost:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(
                ["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True
            )
        except BaseException:
            self.stop()
            raise
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._thread.start()
        return self

    def run(self, argv: list[str], *, log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace (stopped by :meth:`stop`)."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv], stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        return proc

    def _accept(self) -> None:
        cfg = str(self.sshd.root / "sshd_config")
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, self.log.open("ab") as err:
                self.procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", self.name, SSHD, "-i", "-e", "-f", cfg],
                        stdin=conn.fileno(),
                        stdout=conn.fileno(),
                        stderr=err,
                    )
                )

    @property
    def known_hosts_line(self) -> str:
        key = self.sshd.host_key.with_suffix(".pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sock.close()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def __enter__(self) -> NetnsHost:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

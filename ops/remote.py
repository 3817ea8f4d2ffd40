"""Start, list and stop vLLM servers on a fleet host, each in a detached tmux session.

A server vfleet starts lives in the tmux session ``vfleet-<port>`` on its host, with the
session options ``@vfleet_model`` and ``@vfleet_expires`` saying what it serves and until
when. The command comes from a template (``VFLEET_SERVE_COMMAND``) with ``{model}``,
``{port}``, ``{gpus}``, ``{tp}``, ``{extra}`` and ``{python}``; every value is shell-quoted
(``shlex.quote``) or checked to be digits, so no argument can run a command of its own. A
quoted value is a word of its own only outside quotes, so a template that puts a
placeholder inside quotes (``"{model}"``, where ``$(...)`` would run) is refused.

A lifetime wraps the command in ``timeout`` inside the session: it ends when the lifetime
does, whether or not vfleet is still running. Output goes to the pane and to
``~/.cache/vfleet/serve-<port>.log`` on the host.
"""

from __future__ import annotations

import logging
import re
import shlex
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ops.endpoint import DEFAULT_HTTP_TIMEOUT, ChannelHttp, ProbeError, models_url, read_models
from ops.errors import OpsError
from ops.ssh.errors import SSHConnectError
from ops.ssh.pool import CommandResult, SSHPool

logger = logging.getLogger(__name__)

SESSION_PREFIX = "vfleet-"
DEFAULT_SERVE_COMMAND = (
    "vllm serve {model} --host 127.0.0.1 --port {port} --tensor-parallel-size {tp} {extra}"
)
DEFAULT_READY_TIMEOUT = 900.0
DEFAULT_STOP_TIMEOUT = 30.0
LOG_DIR = "$HOME/.cache/vfleet"
KILL_AFTER = 10  # seconds between timeout's TERM and KILL
SERVER_HOST = "127.0.0.1"
_POLL = 1.0
_SEP = "|"
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_SOCKET = re.compile(r"^[A-Za-z0-9_.-]+$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NO_TMUX = 127


class RemoteLaunchError(OpsError):
    """Starting, listing or stopping a server on a host failed."""


class RemoteArgumentError(RemoteLaunchError):
    """A host, port, model, GPU list, lifetime or template that vfleet refuses (nothing ran)."""


class ServeTimeoutError(RemoteLaunchError):
    """The server did not answer ``/v1/models`` in time (its session is left running)."""


# -- arguments ---------------------------------------------------------------------------


def check_host(host: str) -> str:
    """``host`` if it is a plausible SSH alias. Raises :class:`RemoteArgumentError`."""
    if not _HOST.match(host):
        raise RemoteArgumentError(f"bad host {host!r}: use an SSH alias (letters, digits, _.@-)")
    return host


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise RemoteArgumentError(f"bad port {port}: ports are 1-65535")
    return port


def check_model(model: str) -> str:
    """``model`` if it can be a model name or path (quoted later, never interpreted)."""
    if not model.strip() or model.startswith("-") or any(ord(c) < 32 for c in model):
        raise RemoteArgumentError(
            f"bad model {model!r}: give a model name or path (no leading '-', no control chars)"
        )
    return model


def parse_host_port(text: str) -> tuple[str, int]:
    """``gpu1:8001`` → ``("gpu1", 8001)``. Raises :class:`RemoteArgumentError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise RemoteArgumentError(f"bad server {text!r}: use HOST:PORT, e.g. gpu1:8001")
    return check_host(host), check_port(int(port))


def parse_gpus(text: str) -> tuple[int, ...]:
    """``"0,1"`` → ``(0, 1)``. Raises :class:`RemoteArgumentError`."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise RemoteArgumentError(f"bad GPU list {text!r}: use indices like 0,1 or 'auto'")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus):
        raise RemoteArgumentError(f"bad GPU list {text!r}: an index is repeated")
    return gpus


def parse_duration(text: str) -> float:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"30"`` (seconds) → seconds (> 0)."""
    compact = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(compact):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not compact or pos != len(compact) or total <= 0:
        raise RemoteArgumentError(f"bad duration {text!r}: use e.g. 45s, 90m, 2h, 1h30m")
    return total


@dataclass(frozen=True)
class ServeSpec:
    """What to start where. Build with :meth:`checked` to validate every field."""

    host: str
    model: str
    port: int
    gpus: tuple[int, ...] = ()
    tp: int = 1
    lifetime: float | None = None
    extra: tuple[str, ...] = ()

    @classmethod
    def checked(
        cls,
        host: str,
        model: str,
        port: int,
        *,
        gpus: Sequence[int] = (),
        tp: int | None = None,
        lifetime: float | None = None,
        extra: Sequence[str] = (),
    ) -> ServeSpec:
        size = tp if tp is not None else max(1, len(gpus))
        if size < 1:
            raise RemoteArgumentError(f"bad --tp {size}: at least 1")
        if gpus and len(gpus) < size:
            raise RemoteArgumentError(f"--tp {size} needs {size} GPUs, --gpus names {len(gpus)}")
        if lifetime is not None and lifetime <= 0:
            raise RemoteArgumentError("the lifetime must be positive")
        if any("\0" in a for a in extra):
            raise RemoteArgumentError("extra arguments may not hold NUL characters")
        return cls(
            check_host(host), check_model(model), check_port(port), tuple(gpus), size,
            lifetime, tuple(extra),
        )  # fmt: skip

    @property
    def session(self) -> str:
        return session_name(self.port)

    @property
    def log_path(self) -> str:
        return f"{LOG_DIR}/serve-{self.port}.log"


def session_name(port: int) -> str:
    return f"{SESSION_PREFIX}{port}"


def quoted_placeholders(template: str) -> list[tuple[str, str]]:
    """``(placeholder, "single" or "double")`` for each placeholder of ``template`` that
    sits inside shell quotes (a backslash escapes the next character outside single quotes).

    Raises :class:`RemoteArgumentError` when ``template`` is not a format string.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise RemoteArgumentError(f"bad serve command template {template!r}: {e}") from e
    state, escaped, found = "", False, []
    for literal, field, _spec, _conv in parts:
        for ch in literal:
            if escaped:
                escaped = False
            elif ch == "\\" and state != "'":
                escaped = True
            elif state == "" and ch in "'\"":
                state = ch
            elif ch == state:
                state = ""
        if field is not None and state:
            found.append((field, "single" if state == "'" else "double"))
    return found


def render_command(template: str, spec: ServeSpec, *, python: str = sys.executable) -> str:
    """The server's shell command: ``template`` with every value quoted.

    Raises :class:`RemoteArgumentError` for a placeholder the template may not use, or one
    it puts inside quotes (where a quoted value is not one literal word).
    """
    inside = quoted_placeholders(template)
    if inside:
        field, kind = inside[0]
        raise RemoteArgumentError(
            f"bad serve command template: {{{field}}} is inside {kind} quotes, where a value "
            f"could run commands of its own; write it bare (vfleet quotes every value)"
        )
    values = {
        "model": shlex.quote(spec.model),
        "port": str(spec.port),
        "gpus": ",".join(str(g) for g in spec.gpus),
        "tp": str(spec.tp),
        "extra": " ".join(shlex.quote(a) for a in spec.extra),
        "python": shlex.quote(python),
    }
    try:
        return template.format(**values).strip()
    except (KeyError, IndexError, ValueError) as e:
        names = ", ".join("{" + k + "}" for k in values)
        raise RemoteArgumentError(
            f"bad serve command template {template!r}: {e} (placeholders: {names})"
        ) from e


def tmux_literal(value: str) -> str:
    """``value`` as tmux reads it back from its command line: tmux takes an argument's
    trailing ``;`` as the end of a command unless it is written ``\\;``."""
    return value[:-1] + "\\;" if value.endswith(";") else value


def tmux(socket: str | None) -> str:
    """``tmux`` or ``tmux -L SOCKET`` (a private tmux server, as the tests use)."""
    if socket is None:
        return "tmux"
    if not _SOCKET.match(socket):
        raise RemoteArgumentError(f"bad tmux socket name {socket!r}")
    return f"tmux -L {socket}"


def launch_command(
    spec: ServeSpec, command: str, *, tmux_socket: str | None = None, now: float | None = None
) -> str:
    """The one remote shell line that starts ``command`` in session ``vfleet-<port>``."""
    inner = f'{command} 2>&1 | tee -a "{spec.log_path}"'
    if spec.gpus:
        inner = f"export CUDA_VISIBLE_DEVICES={','.join(map(str, spec.gpus))}; {inner}"
    script = f"exec sh -c {shlex.quote(inner)}"
    expires = ""
    if spec.lifetime is not None:
        secs = max(1, round(spec.lifetime))
        script = f"exec timeout -k {KILL_AFTER} {secs} sh -c {shlex.quote(inner)}"
        expires = str(round((now if now is not None else time.time()) + secs))
    t, target = tmux(tmux_socket), f"={spec.session}:"  # '=': exact name, ':': its window
    return (
        f'mkdir -p "{LOG_DIR}" && {no_tmux_guard()}'
        f"{t} new-session -d -s {spec.session} {shlex.quote(script)} \\; "
        f"set-option -t {target} @vfleet_model {shlex.quote(tmux_literal(spec.model))} \\; "
        f"set-option -t {target} @vfleet_expires {shlex.quote(expires)}"
    )


def no_tmux_guard() -> str:
    return f"{{ command -v tmux >/dev/null 2>&1 || exit {_NO_TMUX}; }} && "


@dataclass(frozen=True)
class RemoteSession:
    """A server vfleet started on ``host`` (a ``vfleet-<port>`` tmux session)."""

    host: str
    port: int
    model: str | None
    created: float | None
    expires: float | None

    @property
    def name(self) -> str:
        return session_name(self.port)

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "port": self.port, "session": self.name, "model": self.model,
            "created": self.created, "expires": self.expires,
        }  # fmt: skip


def parse_sessions(host: str, text: str) -> list[RemoteSession]:
    """Sessions from ``tmux ls -F`` output (``name|created|expires|model``), vfleet's only."""
    found = []
    for line in text.splitlines():
        name, _, rest = line.partition(_SEP)
        port = name.removeprefix(SESSION_PREFIX)
        if not name.startswith(SESSION_PREFIX) or not port.isdigit():
            continue
        created, _, rest = rest.partition(_SEP)
        expires, _, model = rest.partition(_SEP)
        found.append(
            RemoteSession(host, int(port), model or None, _number(created), _number(expires))
        )
    return sorted(found, key=lambda s: s.port)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# -- running them -------------------------------------------------------------------------


class RemoteServers:
    """Launch, wait for, list and stop servers through ``ssh_pool``."""

    def __init__(
        self,
        *,
        ssh_pool: SSHPool,
        command_template: str = DEFAULT_SERVE_COMMAND,
        tmux_socket: str | None = None,
        python: str = sys.executable,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
    ) -> None:
        self.pool = ssh_pool
        self.template = command_template
        self.tmux = tmux(tmux_socket)
        self.tmux_socket = tmux_socket
        self.python = python
        self.http_timeout = http_timeout

    def _run(self, host: str, command: str) -> CommandResult:
        result = self.pool.run(host, command)
        if result.exit_status == _NO_TMUX:
            raise RemoteLaunchError(f"{host}: tmux is not installed there (apt-get install tmux)")
        return result

    def port_open(self, host: str, port: int) -> bool:
        """Does something accept connections on ``port`` of ``host``'s loopback?"""
        try:
            chan = self.pool.open_channel(host, SERVER_HOST, port)
        except SSHConnectError as e:
            if "cannot reach" in e.reason:
                return False
            raise
        chan.close()
        return True

    def launch(self, spec: ServeSpec) -> str:
        """Start the server's session; return the command it runs.

        Raises :class:`RemoteLaunchError` when the port is taken or tmux refuses.
        """
        command = render_command(self.template, spec, python=self.python)
        if self.port_open(spec.host, spec.port):
            raise RemoteLaunchError(f"{spec.host}: port {spec.port} is already in use")
        line = launch_command(spec, command, tmux_socket=self.tmux_socket)
        result = self._run(spec.host, line)
        if result.exit_status != 0:
            err = result.stderr.strip().splitlines()
            why = err[0] if err else f"exit status {result.exit_status}"
            if "duplicate session" in why:
                why = f"session {spec.session} already exists (vfleet stop {spec.host}:{spec.port})"
            if "can't find session" not in why:  # it started and exited at once: wait says why
                raise RemoteLaunchError(f"{spec.host}: cannot start {spec.session}: {why}")
        logger.info("%s: started %s: %s", spec.host, spec.session, command)
        return command

    def alive(self, host: str, port: int) -> bool:
        target = shlex.quote(f"={session_name(port)}")
        return self._run(host, f"{self.tmux} has-session -t {target} 2>/dev/null").exit_status == 0

    def log_tail(self, spec: ServeSpec, lines: int = 5) -> str:
        out = self.pool.run(spec.host, f'tail -n {lines} "{spec.log_path}" 2>/dev/null').stdout
        return " | ".join(x.strip() for x in out.splitlines() if x.strip())

    def probe(self, host: str, port: int) -> str | None:
        """The served model if ``/v1/models`` answers on ``host``'s port, else None."""
        http = ChannelHttp(
            lambda h, p: self.pool.open_channel(host, h, p), timeout=self.http_timeout
        )
        try:
            return read_models(http.get(models_url(f"http://{SERVER_HOST}:{port}/v1")))[0] or ""
        except ProbeError:
            return None

    def wait_ready(
        self,
        spec: ServeSpec,
        *,
        timeout: float = DEFAULT_READY_TIMEOUT,
        on_tick: Callable[[float], None] | None = None,
    ) -> str:
        """Wait until the server answers ``/v1/models``; its model id.

        Raises :class:`RemoteLaunchError` when its session ends first (with the log's
        tail), :class:`ServeTimeoutError` after ``timeout`` seconds.
        """
        start = time.monotonic()
        while True:
            model = self.probe(spec.host, spec.port)
            if model is not None:
                return model
            if not self.alive(spec.host, spec.port):
                tail = self.log_tail(spec)
                raise RemoteLaunchError(
                    f"{spec.host}: the server on port {spec.port} exited before it was ready"
                    + (f": {tail}" if tail else "")
                )
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                raise ServeTimeoutError(
                    f"{spec.host}: port {spec.port} did not answer /v1/models in {timeout:g}s; "
                    f"session {spec.session} left running (vfleet stop {spec.host}:{spec.port})"
                )
            if on_tick is not None:
                on_tick(elapsed)
            time.sleep(_POLL)

    def sessions(self, host: str) -> list[RemoteSession]:
        """The servers vfleet started on ``host``."""
        fmt = _SEP.join(
            ["#{session_name}", "#{session_created}", "#{@vfleet_expires}", "#{@vfleet_model}"]
        )
        line = f"{no_tmux_guard()}{{ {self.tmux} ls -F {shlex.quote(fmt)} 2>/dev/null; true; }}"
        return parse_sessions(host, self._run(host, line).stdout)

    def stop(self, host: str, port: int, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """End the session ``vfleet-<port>`` (its whole process group) and wait for the port
        to close. Raises :class:`RemoteLaunchError` if there is no such session or the port
        stays open."""
        target = shlex.quote(f"={session_name(port)}")
        pane = shlex.quote(f"={session_name(port)}:")
        pid_line = f"{self.tmux} display-message -p -t {pane} '#{{pane_pid}}' 2>/dev/null"
        result = self._run(host, f"{no_tmux_guard()}{pid_line}")
        pid = result.stdout.strip()
        if result.exit_status != 0 or not pid.isdigit():
            raise RemoteLaunchError(f"{host}: no vfleet session for port {port} (vfleet sessions)")
        self._run(host, f"{self.tmux} kill-session -t {target}; kill -TERM -- -{pid} 2>/dev/null")
        deadline = time.monotonic() + timeout
        while self.port_open(host, port):
            if time.monotonic() > deadline:
                self._run(host, f"kill -KILL -- -{pid} 2>/dev/null")
                raise RemoteLaunchError(
                    f"{host}: port {port} still open {timeout:g}s after stopping; sent SIGKILL"
                )
            time.sleep(_POLL / 2)

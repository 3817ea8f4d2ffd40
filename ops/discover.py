"""Find OpenAI-compatible servers: listening TCP ports, locally or over SSH, probed for
``/v1/models``; and the fleet-file blocks that describe what was found.

Listening ports come from ``ss -ltnH`` on a remote host (falling back to ``/proc/net/tcp``
when ``ss`` is missing) and from ``/proc/net/tcp{,6}`` locally. Remote ports are probed
through an SSH channel, so servers bound to the host's loopback are found too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ops.endpoint import HttpClient, ProbeError, model_cards, models_url
from ops.errors import OpsError

REMOTE_LISTENERS_COMMAND = "ss -ltnH 2>/dev/null || cat /proc/net/tcp /proc/net/tcp6"
PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
WILDCARDS = {"0.0.0.0", "::", "*", "[::]"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}
_PROC_LINE = re.compile(r"^\s*\d+:\s+([0-9A-Fa-f]+):([0-9A-Fa-f]{4})\s+[0-9A-Fa-f:]+\s+0A\s")
_MAX_PORTS = 4096


class DiscoverError(OpsError):
    """Bad discovery input (a port range that is not one)."""


@dataclass(frozen=True)
class Listener:
    address: str
    port: int


@dataclass
class FoundServer:
    """An OpenAI-compatible server found listening on ``port`` of ``host`` (None: here)."""

    host: str | None
    port: int
    base_url: str
    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None

    @property
    def name(self) -> str:
        return f"{self.host or 'local'}-{self.port}"


def parse_ports(spec: str) -> list[int]:
    """``"8000-8010,9000"`` → the ports, sorted. Raises :class:`DiscoverError`."""
    ports: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        try:
            lo, hi = int(first), int(last or first)
        except ValueError as e:
            raise DiscoverError(f"bad port range {part!r} (use e.g. 8000-8010,9000)") from e
        if not (1 <= lo <= hi <= 65535):
            raise DiscoverError(f"bad port range {part!r}: ports are 1-65535, low to high")
        ports.update(range(lo, hi + 1))
    if not ports or len(ports) > _MAX_PORTS:
        raise DiscoverError(f"port range {spec!r} must name 1 to {_MAX_PORTS} ports")
    return sorted(ports)


def _proc_address(hex_addr: str) -> str:
    if len(hex_addr) == 8:
        return ".".join(str(int(hex_addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
    if hex_addr == "0" * 32:
        return "::"
    if hex_addr == "0" * 24 + "01000000":
        return "::1"
    return "ipv6"


def parse_listeners(text: str) -> list[Listener]:
    """Listening sockets from ``ss -ltnH`` or ``/proc/net/tcp`` text (either, mixed)."""
    found: dict[tuple[str, int], Listener] = {}
    for line in text.splitlines():
        m = _PROC_LINE.match(line)
        if m:
            item = Listener(_proc_address(m.group(1)), int(m.group(2), 16))
        else:
            item_or_none = _ss_line(line)
            if item_or_none is None:
                continue
            item = item_or_none
        found[(item.address, item.port)] = item
    return sorted(found.values(), key=lambda x: (x.port, x.address))


def _ss_line(line: str) -> Listener | None:
    cols = line.split()
    if len(cols) < 4 or cols[0] != "LISTEN":
        return None
    address, _, port = cols[3].rpartition(":")
    if not port.isdigit():
        return None
    address = address.split("%", 1)[0]  # 127.0.0.53%lo
    return Listener(address.strip("[]") if address != "[::]" else "::", int(port))


def local_listeners() -> list[Listener]:
    """This machine's listening TCP sockets (Linux ``/proc/net``)."""
    text = ""
    for path in PROC_NET:
        try:
            text += path.read_text()
        except OSError:
            continue
    return parse_listeners(text)


def connect_address(listener: Listener) -> str:
    """Where to connect for a listener: its address, or loopback for a wildcard bind."""
    if listener.address in WILDCARDS:
        return "127.0.0.1"
    return f"[{listener.address}]" if ":" in listener.address else listener.address


def probe_models(http: HttpClient, root: str) -> tuple[list[str], int | None] | None:
    """(model ids, first max_model_len) if ``root/v1/models`` answers like OpenAI, else None."""
    try:
        cards = model_cards(http.get(models_url(f"{root}/v1")))
    except ProbeError:
        return None
    first = next((c.max_model_len for c in cards if c.max_model_len is not None), None)
    return [c.id for c in cards], first


def discover(
    listeners: Iterable[Listener],
    ports: Sequence[int],
    *,
    http_client: HttpClient,
    host: str | None = None,
    public_address: str | None = None,
    on_probe: Callable[[int], None] | None = None,
) -> list[FoundServer]:
    """Probe each listener whose port is in ``ports``; return the servers that answered.

    ``host``: the SSH alias they run on (None: this machine). A server bound to a wildcard
    address gets ``public_address`` in its base URL when given (reachable from elsewhere);
    one bound to loopback keeps 127.0.0.1 (reached through SSH to ``host``).
    """
    wanted = set(ports)
    found: list[FoundServer] = []
    seen: set[int] = set()
    for listener in listeners:
        if listener.port not in wanted or listener.port in seen:
            continue
        seen.add(listener.port)
        address = connect_address(listener)
        answer = probe_models(http_client, f"http://{address}:{listener.port}")
        if on_probe is not None:
            on_probe(listener.port)
        if answer is None:
            continue
        shown = public_address if public_address and listener.address in WILDCARDS else address
        url = f"http://{shown}:{listener.port}/v1"
        found.append(FoundServer(host, listener.port, url, answer[0], answer[1]))
    return found


def fleet_blocks(
    servers: Iterable[FoundServer],
    *,
    known_names: Iterable[str],
    known_urls: Iterable[tuple[str | None, str]],
    known_hosts: Iterable[str],
) -> tuple[str, list[FoundServer]]:
    """TOML to append to a fleet file for ``servers`` not already in it (by name or by
    (host, base_url)), with ``[hosts.X]`` tables for hosts it lacks; and those servers."""
    names, urls, hosts = set(known_names), set(known_urls), set(known_hosts)
    text: list[str] = []
    added: list[FoundServer] = []
    for s in servers:
        if s.name in names or (s.host, s.base_url) in urls or not s.models:
            continue
        if s.host is not None and s.host not in hosts:
            text.append(f"\n[hosts.{json.dumps(s.host)}]\n")
            hosts.add(s.host)
        text.append("\n[[instances]]\n")
        text.append(f"name = {json.dumps(s.name)}\n")
        text.append(f"base_url = {json.dumps(s.base_url)}\n")
        text.append(f"model = {json.dumps(s.models[0])}\n")
        if s.host is not None:
            text.append(f"host = {json.dumps(s.host)}\n")
        names.add(s.name)
        urls.add((s.host, s.base_url))
        added.append(s)
    return "".join(text), added

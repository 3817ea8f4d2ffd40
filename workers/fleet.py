"""The fleet file: which hosts exist and which vLLM instances serve on them.

A TOML file (``fleet.toml`` by default)::

    [hosts.gpu1]                 # an alias from ~/.ssh/config, or explicit fields
    hostname = "10.0.0.11"
    user = "ml"

    [[instances]]
    name = "gpu1-8001"
    base_url = "http://127.0.0.1:8001/v1"
    model = "Qwen/Qwen2.5-7B-Instruct"
    concurrency = 32             # requests in flight on this instance
    host = "gpu1"                # optional: the host it runs on
    via = "gpu1"                 # optional: reach base_url through this host's SSH
    gpus = [0, 1]                # optional: GPU indices it uses
    api_key_env = "OPENROUTER_API_KEY"  # optional: env var holding its API key
    rpm = 600                    # optional: requests-per-minute limit

    [aliases]                    # optional: model names batch files ask for -> served model
    "gpt-4o-mini" = "Qwen/Qwen2.5-7B-Instruct"
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.errors import ConfigError

DEFAULT_CONCURRENCY = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class HostConfig(BaseModel):
    """An SSH-reachable machine. Unset fields come from ``~/.ssh/config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    hostname: str | None = None
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key_file: str | None = None
    proxy_jump: str | None = None


class InstanceConfig(BaseModel):
    """One OpenAI-compatible server (a vLLM process, usually)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    base_url: str
    model: str
    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=4096)
    host: str | None = None
    # Reached only through this host's SSH: base_url is on that host's loopback.
    via: str | None = None
    gpus: tuple[int, ...] = ()
    api_key_env: str | None = None
    rpm: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> InstanceConfig:
        if not _NAME.match(self.name):
            raise ValueError(f"instance name {self.name!r} may hold only letters, digits, _.:-")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"instance {self.name}: base_url must start with http:// or https://")
        return self

    def api_key(self) -> str:
        """The API key from ``api_key_env``; vLLM without ``--api-key`` accepts any."""
        if self.api_key_env is None:
            return "EMPTY"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"instance {self.name}: environment variable {self.api_key_env} is not set"
            )
        return key


class Fleet(BaseModel):
    """Hosts and instances, looked up by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: dict[str, HostConfig] = {}
    instances: tuple[InstanceConfig, ...] = ()
    # A request for model ``key`` (an OpenAI batch line's body.model, or --model) runs on
    # the instances serving ``value``.
    aliases: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> Fleet:
        served = {i.model for i in self.instances}
        for asked, target in self.aliases.items():
            if served and target not in served:
                raise ValueError(
                    f"alias {asked!r} maps to {target!r}, which no instance serves "
                    f"(served: {', '.join(sorted(served))})"
                )
        seen: set[str] = set()
        for inst in self.instances:
            if inst.name in seen:
                raise ValueError(f"instance {inst.name!r} is defined twice")
            seen.add(inst.name)
            for field in ("host", "via"):
                value = getattr(inst, field)
                if value is not None and value not in self.hosts:
                    raise ValueError(f"instance {inst.name}: {field} {value!r} is not in [hosts]")
        return self

    def instance(self, name: str) -> InstanceConfig:
        """Return the instance called ``name``; raise :class:`ConfigError` if none is."""
        for inst in self.instances:
            if inst.name == name:
                return inst
        known = ", ".join(i.name for i in self.instances) or "none"
        raise ConfigError(f"no instance named {name!r} in the fleet file (known: {known})")

    def models(self) -> list[str]:
        """Served model names, in fleet-file order, without repeats."""
        return list(dict.fromkeys(i.model for i in self.instances))

    def alias(self, model: str) -> str:
        """The served model a request for ``model`` runs on: its alias target, or itself."""
        return self.aliases.get(model, model)

    @classmethod
    def of(cls, instances: Iterable[InstanceConfig]) -> Fleet:
        return cls(instances=tuple(instances))


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def parse_fleet(text: str, *, source: str = "fleet file") -> Fleet:
    """Parse fleet TOML text. Raises :class:`ConfigError` with a one-line reason."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from e
    hosts = raw.get("hosts", {})
    if isinstance(hosts, dict):
        raw["hosts"] = {k: {"name": k, **v} if isinstance(v, dict) else v for k, v in hosts.items()}
    try:
        return Fleet.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_one_line(e)}") from e


def load_fleet(path: Path, *, required: bool = True) -> Fleet:
    """Read the fleet file at ``path``.

    Returns an empty fleet when the file is missing and ``required`` is false.
    Raises :class:`ConfigError` when it is missing (and required) or invalid.
    """
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError as e:
        if not required:
            return Fleet()
        raise ConfigError(
            f"fleet file {path} not found (set VFLEET_FLEET_FILE or --fleet; "
            "see fleet.example.toml)"
        ) from e
    except OSError as e:
        raise ConfigError(f"fleet file {path}: {e.strerror}") from e
    return parse_fleet(text, source=str(path))

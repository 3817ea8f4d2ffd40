"""Simulator options: one frozen ``SimConfig`` per served instance, and the parsers behind them.

Every parser raises ``SimConfigError`` with a message that starts with the option's name, so the
CLI can print it as one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ops.sim.errors import SimConfigError

DEFAULT_MODEL = "sim-model"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_MODEL_LEN = 8192
DEFAULT_MAX_NUM_SEQS = 32
DEFAULT_TTFT = 0.05
DEFAULT_ITL = 0.01
DEFAULT_OUTPUT_TOKENS = (20, 80)
DEFAULT_SEED = 0
DEFAULT_TIME_FACTOR_UNDER_LOAD = 1.5
DEFAULT_RETRY_AFTER = 1
DEFAULT_FAIL_KINDS = ("500",)
FAIL_KINDS = ("429", "500", "503", "hang", "reset")
METRICS_VERSIONS = ("v1", "v0")
# How a request longer than the context is answered: "clamp" as vLLM 0.32 does (a prompt over
# the context or a max_tokens over max_model_len is a 400, a completion budget past the end
# of the context is cut short, finish_reason "length"), "reject" as older vLLM did (a 400
# whenever prompt + max_tokens exceeds the context).
CONTEXT_CHECKS = ("clamp", "reject")
# KV cache capacity in tokens per max-num-seqs slot: usage = tokens held / (slots * this).
KV_TOKENS_PER_SEQ = 2048

MetricsVersion = Literal["v1", "v0"]
ContextCheck = Literal["clamp", "reject"]


@dataclass(frozen=True)
class SimConfig:
    """What one simulated vLLM instance serves and how it behaves."""

    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    model: str = DEFAULT_MODEL
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    ttft: float = DEFAULT_TTFT
    itl: float = DEFAULT_ITL
    output_tokens: tuple[int, int] = DEFAULT_OUTPUT_TOKENS
    seed: int = DEFAULT_SEED
    startup_delay: float = 0.0
    time_factor_under_load: float = DEFAULT_TIME_FACTOR_UNDER_LOAD
    metrics_version: MetricsVersion = "v1"
    invalid_json_rate: float = 0.0
    control_char_rate: float = 0.0
    whitespace_padding: bool = False
    run_on_strings: bool = False
    context_check: ContextCheck = "clamp"
    fail_rate: float = 0.0
    fail_kinds: tuple[str, ...] = DEFAULT_FAIL_KINDS
    retry_after: int = DEFAULT_RETRY_AFTER
    die_after: int | None = None
    dead_after: int | None = None
    slow_factor: float = 1.0

    @property
    def effective_ttft(self) -> float:
        """Time to first token on an idle engine, after the ``--slow`` factor."""
        return self.ttft * self.slow_factor

    @property
    def effective_itl(self) -> float:
        """Inter-token latency on an idle engine, after the ``--slow`` factor."""
        return self.itl * self.slow_factor

    @property
    def kv_cache_tokens(self) -> int:
        """Simulated KV cache capacity in tokens."""
        return self.max_num_seqs * KV_TOKENS_PER_SEQ


def parse_output_tokens(value: str) -> tuple[int, int]:
    """Parse ``"N"`` or ``"MIN-MAX"`` into an inclusive range of output tokens.

    Raises:
        SimConfigError: not integers, below 1, or MIN above MAX.
    """
    text = value.strip()
    low_text, sep, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if sep else low
    except ValueError:
        raise SimConfigError(f"--output-tokens: expected N or MIN-MAX, got {value!r}") from None
    if low < 1:
        raise SimConfigError("--output-tokens: must be at least 1")
    if low > high:
        raise SimConfigError("--output-tokens: MIN must not exceed MAX")
    return low, high


def _parse_port(text: str, option: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise SimConfigError(f"{option}: expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise SimConfigError(f"{option}: port {port} is out of range 1..65535")
    return port


def parse_slow(value: str) -> tuple[int, float]:
    """Parse ``"PORT:FACTOR"`` (``--slow 18004:4``) into ``(port, factor)``.

    Raises:
        SimConfigError: not of that form, or the factor is not positive.
    """
    port_text, sep, factor_text = value.partition(":")
    if not sep:
        raise SimConfigError(f"--slow: expected PORT:FACTOR, got {value!r}")
    port = _parse_port(port_text, "--slow")
    try:
        factor = float(factor_text)
    except ValueError:
        raise SimConfigError(f"--slow: expected a number after ':', got {value!r}") from None
    if not factor > 0:
        raise SimConfigError(f"--slow: factor must be positive, got {factor_text}")
    return port, factor


def parse_per_port_count(value: str, option: str) -> tuple[int | None, int]:
    """Parse ``"N"`` (every instance) or ``"PORT:N"`` (one instance) for ``--die-after`` etc.

    Returns ``(port or None, N)``.

    Raises:
        SimConfigError: malformed, or N below 1.
    """
    port_text, sep, count_text = value.rpartition(":")
    port = _parse_port(port_text, option) if sep else None
    try:
        count = int(count_text)
    except ValueError:
        raise SimConfigError(f"{option}: expected N or PORT:N, got {value!r}") from None
    if count < 1:
        raise SimConfigError(f"{option}: N must be at least 1, got {count}")
    return port, count


def parse_fail_kinds(value: str) -> tuple[str, ...]:
    """Parse ``"429,500,hang"`` into a tuple of failure kinds.

    Raises:
        SimConfigError: empty, or a kind not in ``FAIL_KINDS``.
    """
    kinds = tuple(part.strip() for part in value.split(",") if part.strip())
    if not kinds:
        raise SimConfigError("--fail-kinds: give at least one of " + ",".join(FAIL_KINDS))
    for kind in kinds:
        if kind not in FAIL_KINDS:
            raise SimConfigError(
                f"--fail-kinds: unknown kind {kind!r} (choose from {','.join(FAIL_KINDS)})"
            )
    return kinds


def _check_rate(value: float, option: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise SimConfigError(f"{option}: must be between 0 and 1, got {value}")


def validate(config: SimConfig) -> SimConfig:
    """Check the ranges of a config's fields and return it unchanged.

    Raises:
        SimConfigError: naming the first offending option.
    """
    positive_ints = {
        "--max-model-len": config.max_model_len,
        "--max-num-seqs": config.max_num_seqs,
    }
    for option, number in positive_ints.items():
        if number < 1:
            raise SimConfigError(f"{option}: must be at least 1, got {number}")
    non_negative = {
        "--ttft": config.ttft,
        "--itl": config.itl,
        "--startup-delay": config.startup_delay,
        "--retry-after": float(config.retry_after),
    }
    for option, seconds in non_negative.items():
        if seconds < 0:
            raise SimConfigError(f"{option}: must not be negative, got {seconds}")
    if config.time_factor_under_load < 1.0:
        raise SimConfigError(
            f"--time-factor-under-load: must be at least 1.0, got {config.time_factor_under_load}"
        )
    if config.metrics_version not in METRICS_VERSIONS:
        raise SimConfigError(
            f"--metrics-version: expected v1 or v0, got {config.metrics_version!r}"
        )
    _check_rate(config.fail_rate, "--fail-rate")
    _check_rate(config.invalid_json_rate, "--invalid-json-rate")
    _check_rate(config.control_char_rate, "--control-char-rate")
    if config.context_check not in CONTEXT_CHECKS:
        raise SimConfigError(
            f"--context-check: expected clamp or reject, got {config.context_check!r}"
        )
    parse_output_tokens(f"{config.output_tokens[0]}-{config.output_tokens[1]}")
    return config


def _per_port(values: Sequence[str], option: str, ports: Sequence[int]) -> dict[int, int]:
    """Resolve repeated ``N`` / ``PORT:N`` values to a count per served port."""
    counts: dict[int, int] = {}
    for value in values:
        port, count = parse_per_port_count(value, option)
        if port is None:
            counts.update(dict.fromkeys(ports, count))
        elif port not in ports:
            raise SimConfigError(f"{option}: port {port} is not one of the served ports")
        else:
            counts[port] = count
    return counts


def instance_ports(instances: int, port: int | None, base_port: int | None) -> list[int]:
    """The ports served: ``--port`` for one instance, ``--base-port`` .. + N-1 for several.

    Raises:
        SimConfigError: no instance, both options, or ports beyond 65535.
    """
    if instances < 1:
        raise SimConfigError(f"--instances: must be at least 1, got {instances}")
    if port is not None and base_port is not None:
        raise SimConfigError("--port: use either --port or --base-port, not both")
    if port is not None and instances > 1:
        raise SimConfigError("--port: serves one instance; use --base-port with --instances")
    first = port if port is not None else base_port if base_port is not None else DEFAULT_PORT
    _parse_port(str(first), "--base-port" if base_port is not None else "--port")
    if first + instances - 1 > 65535:
        raise SimConfigError("--base-port: the last instance's port would exceed 65535")
    return [first + index for index in range(instances)]


def build_configs(
    template: SimConfig,
    ports: Sequence[int],
    *,
    slow: Sequence[str] = (),
    die_after: Sequence[str] = (),
    dead_after: Sequence[str] = (),
) -> list[SimConfig]:
    """One validated config per port, applying the per-port overrides.

    Raises:
        SimConfigError: a bad override or field.
    """
    validate(template)
    slow_factors: dict[int, float] = {}
    for value in slow:
        port, factor = parse_slow(value)
        if port not in ports:
            raise SimConfigError(f"--slow: port {port} is not one of the served ports")
        slow_factors[port] = factor
    die = _per_port(die_after, "--die-after", ports)
    dead = _per_port(dead_after, "--dead-after", ports)
    return [
        dataclasses.replace(
            template,
            port=port,
            slow_factor=slow_factors.get(port, 1.0),
            die_after=die.get(port),
            dead_after=dead.get(port),
        )
        for port in ports
    ]

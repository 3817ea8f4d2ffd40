"""``vfleet sim``: serve one or several simulated vLLM instances.

The lead registers ``sim`` with ``app.command("sim")(ops.sim.cli.sim)``; ``python -m ops.sim``
runs it alone. Bad options print one line, ``vfleet sim: error: ...``, and exit with 2.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ops.sim.config import (
    CONTEXT_CHECKS,
    DEFAULT_HOST,
    DEFAULT_ITL,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_MODEL,
    DEFAULT_RETRY_AFTER,
    DEFAULT_SEED,
    DEFAULT_TIME_FACTOR_UNDER_LOAD,
    DEFAULT_TTFT,
    SimConfig,
    build_configs,
    instance_ports,
    parse_fail_kinds,
    parse_output_tokens,
)
from ops.sim.errors import SimConfigError, SimStartError

USAGE_EXIT_CODE = 2
PROG = "vfleet sim"


def fail(message: str) -> typer.Exit:
    """Print ``vfleet sim: error: <message>`` on stderr; return the Exit(2) to raise."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(USAGE_EXIT_CODE)


def sim(
    model: Annotated[str, typer.Option(help="Served model name.")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[
        int | None, typer.Option(help="Port of a single instance (default 8000).")
    ] = None,
    instances: Annotated[int, typer.Option(help="Number of independent instances.")] = 1,
    base_port: Annotated[
        int | None, typer.Option(help="First port when serving several instances.")
    ] = None,
    max_model_len: Annotated[
        int, typer.Option(help="Context length (prompt + completion tokens).")
    ] = DEFAULT_MAX_MODEL_LEN,
    max_num_seqs: Annotated[
        int, typer.Option(help="Requests running at once; the rest wait FIFO.")
    ] = DEFAULT_MAX_NUM_SEQS,
    ttft: Annotated[float, typer.Option(help="Time to first token, seconds.")] = DEFAULT_TTFT,
    itl: Annotated[float, typer.Option(help="Inter-token latency, seconds.")] = DEFAULT_ITL,
    output_tokens: Annotated[
        str, typer.Option(help="Output tokens of a text answer: N or MIN-MAX.")
    ] = "20-80",
    seed: Annotated[int, typer.Option(help="Seed of answers and injected faults.")] = DEFAULT_SEED,
    startup_delay: Annotated[
        float, typer.Option(help="Seconds /health answers 503 before turning 200.")
    ] = 0.0,
    time_factor_under_load: Annotated[
        float, typer.Option(help="Slow-down with a full batch (1.0 with one request).")
    ] = DEFAULT_TIME_FACTOR_UNDER_LOAD,
    metrics_version: Annotated[
        str, typer.Option(help="Metric names: v1 (vLLM V1) or v0 (older).")
    ] = "v1",
    slow: Annotated[
        list[str] | None,
        typer.Option(help="PORT:FACTOR: that instance is FACTOR x slower (repeatable)."),
    ] = None,
    invalid_json_rate: Annotated[
        float, typer.Option(help="Fraction of JSON answers made invalid on purpose.")
    ] = 0.0,
    control_char_rate: Annotated[
        float,
        typer.Option(help="Fraction of JSON answers with a raw control character in a string."),
    ] = 0.0,
    whitespace_padding: Annotated[
        bool,
        typer.Option(
            help="Pad JSON with whitespace until max_tokens, as vLLM does for a small model "
            "without disable_any_whitespace."
        ),
    ] = False,
    run_on_strings: Annotated[
        bool,
        typer.Option(
            help="A JSON string without maxLength never ends: the answer runs to max_tokens."
        ),
    ] = False,
    context_check: Annotated[
        str,
        typer.Option(
            help="clamp (vLLM 0.32: a completion past the context is cut short) or reject "
            "(older vLLM: prompt + max_tokens over the context is a 400)."
        ),
    ] = "clamp",
    fail_rate: Annotated[
        float, typer.Option(help="Fraction of completion requests that fail on purpose.")
    ] = 0.0,
    fail_kinds: Annotated[
        str, typer.Option(help="Failure kinds: any of 429,500,503,hang,reset.")
    ] = "500",
    retry_after: Annotated[
        int, typer.Option(help="Retry-After seconds sent with an injected 429.")
    ] = DEFAULT_RETRY_AFTER,
    die_after: Annotated[
        list[str] | None,
        typer.Option(help="N or PORT:N: the instance crashes after N requests (repeatable)."),
    ] = None,
    dead_after: Annotated[
        list[str] | None,
        typer.Option(help="N or PORT:N: the engine dies (health 503, 500s) after N (repeatable)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level on stderr.")] = "WARNING",
) -> None:
    """Serve vLLM's OpenAI-compatible API with simulated latency, metrics and faults."""
    try:
        template = SimConfig(
            host=host,
            model=model,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            ttft=ttft,
            itl=itl,
            output_tokens=parse_output_tokens(output_tokens),
            seed=seed,
            startup_delay=startup_delay,
            time_factor_under_load=time_factor_under_load,
            metrics_version="v0" if metrics_version == "v0" else "v1",
            invalid_json_rate=invalid_json_rate,
            control_char_rate=control_char_rate,
            whitespace_padding=whitespace_padding,
            run_on_strings=run_on_strings,
            context_check="reject" if context_check == "reject" else "clamp",
            fail_rate=fail_rate,
            fail_kinds=parse_fail_kinds(fail_kinds),
            retry_after=retry_after,
        )
        if log_level.upper() not in logging.getLevelNamesMapping():
            raise SimConfigError(f"--log-level: unknown level {log_level!r}")
        if metrics_version not in ("v0", "v1"):
            raise SimConfigError(f"--metrics-version: expected v1 or v0, got {metrics_version!r}")
        if context_check not in CONTEXT_CHECKS:
            raise SimConfigError(
                f"--context-check: expected clamp or reject, got {context_check!r}"
            )
        ports = instance_ports(instances, port, base_port)
        configs = build_configs(
            template, ports, slow=slow or (), die_after=die_after or (), dead_after=dead_after or ()
        )
    except SimConfigError as e:
        raise fail(str(e)) from None
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from ops.sim.server import serve  # late: bad options fail fast, without loading aiohttp

    try:
        serve(configs)
    except SimStartError as e:
        raise fail(str(e)) from None

"""``vfleet exporter``: Prometheus metrics from the ledger (batches, instances, GPUs, vLLM)."""

from __future__ import annotations

from typing import Annotated

import typer

from producer.context import Context
from workers.errors import ConfigError

DEFAULT_EXPORTER_PORT = 9464
DEFAULT_EXPORTER_ADDRESS = "127.0.0.1"


def exporter(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="HTTP port of /metrics.")
    ] = DEFAULT_EXPORTER_PORT,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_EXPORTER_ADDRESS,
    latency_window: Annotated[
        float, typer.Option(min=1, help="Minutes of finished records the latency covers.")
    ] = 15.0,
) -> None:
    """Serve Prometheus metrics read from the SQL ledger at every scrape: batch progress,
    per-instance throughput and latency, GPU and vLLM snapshots."""
    from datetime import timedelta

    from workers.exporter import LedgerCollector, serve
    from workers.store.opening import open_ledger

    c: Context = ctx.obj
    ledger = open_ledger(c.settings, pool_size=2)
    collector = LedgerCollector(ledger.engine, latency_window=timedelta(minutes=latency_window))
    typer.echo(f"serving metrics on http://{address}:{port}/metrics", err=True)
    try:
        serve(collector, port=port, address=address)
    except OSError as e:
        raise ConfigError(f"cannot listen on {address}:{port}: {e.strerror}") from e
    finally:
        ledger.engine.dispose()


def register(app: typer.Typer) -> None:
    app.command("exporter")(exporter)

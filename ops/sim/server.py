"""Run one or several simulated instances in one process and one event loop.

Each instance has its own port, scheduler, metrics and counters. ``--die-after`` crashes one
instance: its listening socket closes (the port refuses connections) and its connections drop,
while the others keep serving; when every instance is dead the process exits at once with
``os._exit(DIE_EXIT_CODE)``, like a crashed engine. SIGTERM and SIGINT stop all instances
cleanly and ``serve`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ops.sim.config import SimConfig
from ops.sim.instance import SimInstance

logger = logging.getLogger(__name__)

DIE_EXIT_CODE = 70
# Lets the last response leave the socket before the process vanishes.
_DIE_GRACE_SECONDS = 0.05


def ready_line(config: SimConfig) -> str:
    """The line printed when an instance is ready."""
    slow = f", {config.slow_factor:g}x slower" if config.slow_factor != 1.0 else ""
    return (
        f"sim: serving {config.model} on http://{config.host}:{config.port} "
        f"(max-num-seqs {config.max_num_seqs}{slow})"
    )


class SimServer:
    """The instances of one process and the event that stops them."""

    def __init__(self, configs: Sequence[SimConfig]) -> None:
        self.instances = [SimInstance(config, on_death=self._on_death) for config in configs]
        self._stop = asyncio.Event()

    def _on_death(self, instance: SimInstance) -> None:
        if all(not each.alive for each in self.instances):
            logger.warning("every instance is dead: exiting with %d", DIE_EXIT_CODE)
            sys.stdout.flush()
            loop = asyncio.get_running_loop()
            loop.call_later(_DIE_GRACE_SECONDS, os._exit, DIE_EXIT_CODE)

    def request_stop(self) -> None:
        """Ask ``run`` to stop all instances and return."""
        self._stop.set()

    def _announce_when_ready(self, instance: SimInstance) -> None:
        instance.mark_ready()
        print(ready_line(instance.config), flush=True)

    async def start(self) -> None:
        """Bind every port, then schedule each instance's readiness after its startup delay.

        Raises:
            SimStartError: a port cannot be bound (nothing stays bound).
        """
        started: list[SimInstance] = []
        try:
            for instance in self.instances:
                await instance.start()
                started.append(instance)
        except BaseException:
            for instance in started:
                await instance.stop()
            raise
        loop = asyncio.get_running_loop()
        for instance in self.instances:
            delay = instance.config.startup_delay
            loop.call_later(delay, self._announce_when_ready, instance)

    async def run(self) -> None:
        """Serve until ``request_stop`` (or SIGTERM/SIGINT), then stop cleanly."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await asyncio.gather(*(instance.stop() for instance in self.instances))


def serve(configs: Sequence[SimConfig]) -> None:
    """Serve ``configs`` (one instance each) until SIGTERM or SIGINT.

    Raises:
        SimStartError: a port cannot be bound.
    """

    async def main() -> None:
        await SimServer(configs).run()

    asyncio.run(main())

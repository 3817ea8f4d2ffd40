"""A background thread in every instance worker: gate, leases, feeding, hedging, reconciling.

Every job here is cheap and idempotent, and the shared ones (feed, hedge, reconcile) run
under a Redis lock, so any number of workers may run them: the fleet keeps itself fed with
no extra process, and beat's ``vfleet.reconcile`` is a second line of defence. Only the
worker whose turn it is (:class:`workers.locks.Turn`) runs the shared ones, so the fleet
makes one round per interval however many workers it has.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.exceptions import RedisError

from workers.feeder import Feeder
from workers.health import HealthGate
from workers.keys import FEED_TURN, RECONCILE_TURN, health_key
from workers.locks import Turn, process_token
from workers.runtime import WorkerRuntime

logger = logging.getLogger(__name__)

HEALTH_TTL_INTERVALS = 5
SUSPECT_PROBE_SPACING = 0.25
"""Seconds between probes asked for by calls that got a 5xx."""
HEALTH_REFRESH_INTERVALS = 2
"""An unchanged health key is written again after this many health intervals."""
HEDGE_INTERVAL = 1.0
BUSY_FEED_INTERVAL = 0.05
"""How soon the feed runs again after a round that published: a fast fleet drains its
window in well under ``VFLEET_FEED_INTERVAL``, and must not wait for the next tick."""
TURN_HOLD_INTERVALS = 2
"""A shared job's turn lasts this many of its intervals past its holder's last round."""
REDIS_DOWN_LOG_EVERY = 30.0
"""While Redis is away, each job says so once per this many seconds, in one line."""


@dataclass
class _Job:
    name: str
    interval: float
    run: Callable[[], object]
    due: float = 0.0
    busy_interval: float | None = None
    """If set: the next run this soon when the last one returned a true value."""
    turn: Turn | None = None
    """A fleet-wide job: it runs only while this worker has the turn."""
    redis_down_since: float | None = None
    said_at: float = 0.0


class Housekeeper(threading.Thread):
    """Runs the periodic jobs until :meth:`stop`."""

    def __init__(
        self,
        *,
        runtime: WorkerRuntime,
        feeder: Feeder,
        redis_client: redis.Redis,
    ) -> None:
        super().__init__(name="vfleet-housekeeper", daemon=True)
        self.runtime = runtime
        self.feeder = feeder
        self.redis = redis_client
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._published_up: bool | None = None
        self._published_at = -math.inf
        s = runtime.settings
        token = process_token()
        feed_turn = self._turn(FEED_TURN, token, s.feed_interval)
        self.jobs = [
            _Job("leases", s.lease_seconds / 4, runtime.renew_leases),
            _Job(
                "feed",
                s.feed_interval,
                feeder.feed,
                busy_interval=BUSY_FEED_INTERVAL,
                turn=feed_turn,
            ),
            _Job("hedge", max(HEDGE_INTERVAL, s.feed_interval), feeder.hedge, turn=feed_turn),
            _Job(
                "reconcile",
                s.reconcile_interval,
                feeder.reconcile,
                due=time.monotonic() + s.reconcile_interval,
                turn=self._turn(RECONCILE_TURN, token, s.reconcile_interval),
            ),
        ]
        self._probe_asked_at = -math.inf
        if runtime.gate is not None:
            self._health_job = _Job("health", s.health_interval, self.check_health)
            self.jobs.insert(0, self._health_job)
            runtime.gate.add_suspicion_listener(self.probe_soon)

    def _turn(self, name: str, token: str, interval: float) -> Turn:
        return Turn(self.redis, name, token=token, hold=interval * TURN_HOLD_INTERVALS)

    def probe_soon(self) -> None:
        """Run the health job now (a call got a 5xx), at most once per
        :data:`SUSPECT_PROBE_SPACING`: a storm of errors asks a few probes, not one each."""
        now = time.monotonic()
        if now - self._probe_asked_at < SUSPECT_PROBE_SPACING:
            return
        self._probe_asked_at = now
        self._health_job.due = now
        self._wake.set()

    def check_health(self) -> None:
        """Probe the instance (unless its calls are being answered) and refresh the health
        key. A flip is the gate listeners' business: :mod:`workers.worker_main` logs it,
        publishes it at once and changes the queues consumed."""
        gate = self.runtime.gate
        if gate is None:
            return
        interval = self.runtime.settings.health_interval
        gate.step_unless_answered(within=interval)
        # The key lives HEALTH_TTL_INTERVALS intervals: writing it every other one keeps it
        # alive, and a change of state is written as soon as it is seen.
        if (
            gate.healthy != self._published_up
            or time.monotonic() - self._published_at >= interval * HEALTH_REFRESH_INTERVALS
        ):
            self.publish_health()

    def publish_health(self) -> None:
        """Write the gate's state to the instance's health key (for the feeder and views)."""
        gate = self.runtime.gate
        if gate is not None:
            up = gate.healthy
            if publish_gate(self.redis, self.runtime.instance.name, gate, self.health_ttl):
                self._published_up, self._published_at = up, time.monotonic()

    @property
    def health_ttl(self) -> int:
        return max(1, int(self.runtime.settings.health_interval * HEALTH_TTL_INTERVALS))

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if now >= job.due:
                    job.due = now + job.interval
                    self._run(job, now)
            wake = min(j.due for j in self.jobs) - time.monotonic()
            self._wake.wait(max(0.01, wake))
            self._wake.clear()

    def _run(self, job: _Job, now: float) -> None:
        try:
            # Another worker's turn: its round serves the fleet, this one has nothing to do.
            result = job.run() if job.turn is None or job.turn.take() else None
        except RedisError as e:  # the broker is away: expected, said in one line now and then
            if job.redis_down_since is None:
                job.redis_down_since = now
            if now - job.said_at >= REDIS_DOWN_LOG_EVERY:
                job.said_at = now
                logger.warning("housekeeping job %s: Redis unavailable (%s)", job.name, e)
            return
        except Exception:  # a failed round must not end the thread
            logger.exception("housekeeping job %s failed", job.name)
            return
        if job.redis_down_since is not None:
            logger.warning(
                "housekeeping job %s: Redis back after %.0fs", job.name, now - job.redis_down_since
            )
            job.redis_down_since, job.said_at = None, 0.0
        if result and job.busy_interval is not None:
            job.due = now + job.busy_interval

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout)


def publish_gate(client: redis.Redis, instance: str, gate: HealthGate, ttl: int) -> bool:
    """SET the instance's health key from ``gate``; False (logged) when Redis is away."""
    try:
        client.set(health_key(instance), gate.record(), ex=ttl)
    except RedisError as e:
        logger.warning("instance %s: could not publish health: %s", instance, e)
        return False
    return True

"""Errors raised by the simulator.

::

    OpsError (ops.errors)
     └── SimError
          ├── SimConfigError (also ValueError)  bad option or option combination
          ├── SimStartError                     a port cannot be bound, or a launched fleet
          │                                     never became healthy
          ├── SimRequestError                   answered with an HTTP error in vLLM's JSON
          │                                     shape (400, 404, 429, 500, 503)
          └── EngineDeadError                   the simulated engine died (admin kill,
                                                --dead-after)
"""

from __future__ import annotations

from ops.errors import OpsError

# What vLLM's EngineDeadError says.
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class SimError(OpsError):
    """Root of the simulator's errors."""


class SimConfigError(SimError, ValueError):
    """An option, or a combination of options, is invalid."""


class SimStartError(SimError):
    """The simulator could not start (port in use) or did not become healthy in time."""


class SimRequestError(SimError):
    """A request that gets an error response: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "BadRequestError",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.headers = headers or {}


class EngineDeadError(SimError):
    """The simulated engine is dead: health is 503 and completions fail with 500."""

    def __init__(self) -> None:
        super().__init__(ENGINE_DEAD_MESSAGE)

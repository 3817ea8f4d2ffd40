"""What every command needs, built once at the entry point and handed down lazily.

Nothing connects until a command asks for it: ``vfleet config show`` opens no database,
``vfleet status`` opens no broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from workers.errors import ConfigError
from workers.fleet import Fleet, load_fleet
from workers.settings import Settings
from workers.store.opening import open_ledger

if TYPE_CHECKING:
    from celery import Celery

    from workers.store.ledger import Ledger

# Celery, SQLAlchemy and the openai client take a second to import: commands import them
# when they need them, so `vfleet --help` and `vfleet config show` stay instant.


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (non-None ``overrides``) on top.

    Raises :class:`ConfigError` with one line naming the bad variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        name = "VFLEET_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"{name}: {first['msg']}") from e


@dataclass
class Context:
    """Per-invocation state of the CLI (and of a :mod:`producer.api` handle)."""

    settings: Settings
    fleet_required: bool = True
    _cache: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def fleet(self) -> Fleet:
        return load_fleet(Path(self.settings.fleet_file), required=self.fleet_required)

    @cached_property
    def ledger(self) -> Ledger:
        return open_ledger(self.settings)

    @cached_property
    def celery(self) -> Celery:
        from workers.celery_app import create_app

        return create_app(self.settings, fleet=self.fleet)

    def close(self) -> None:
        """Close what was opened: the ledger's connections, the app's broker pool."""
        ledger = self.__dict__.pop("ledger", None)
        if ledger is not None:
            ledger.engine.dispose()
        app = self.__dict__.pop("celery", None)
        if app is not None:
            app.close()

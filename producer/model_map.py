"""Which served model a batch runs on, and what becomes of the model each request asks for.

A batch runs on one model: the instances serving it share its queue. For a template spec
that is ``--model`` or the fleet's only model. For an OpenAI batch file it is what the
lines' ``body.model`` asks for, looked up in the fleet file's ``[aliases]``; ``--model M``
runs every line on ``M`` instead. The worker sends each body with the model it runs, and
the output's ``model`` says so; :class:`ModelMap` keeps, per asked model, what it ran on
and why, so the enqueue can say it.

A request for a model the fleet does not serve fails the enqueue with one line naming the
served models when it is the first line's (nothing is stored), and is a bad line
(``model_not_found``) after that; one asking for another served model than the batch's is
a bad line too (``mismatched_model``: one model a batch, as OpenAI's batches have).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from producer.readers import codes
from producer.readers.base import BadRow
from producer.readers.openai import body_model
from workers.errors import ConfigError
from workers.fleet import Fleet
from workers.store.limits import MODEL_CHARS, check_text

FORCED = "--model"
ALIAS = "alias in the fleet file"
ASKED = "as asked"
DEFAULT = "the fleet's model"


@dataclass
class ModelMap:
    """The batch's model, and how the models requests ask for map onto it."""

    model: str
    forced: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    # Served models; empty when there is no fleet file to check against.
    served: tuple[str, ...] = ()
    asked: Counter[str] = field(default_factory=Counter)

    def runs_on(self, asked: str | None) -> tuple[str, str]:
        """``(model, why)`` a request asking for ``asked`` runs on."""
        if self.forced is not None:
            return self.forced, FORCED
        if asked is None:
            return self.model, DEFAULT
        if asked in self.aliases:
            return self.aliases[asked], ALIAS
        return asked, ASKED

    def check(self, line: int, data: dict[str, Any], raw: str) -> BadRow | None:
        """The :class:`BadRow` of a batch line that cannot run in this batch, or None."""
        asked = body_model(data)
        model, _ = self.runs_on(asked)
        cid = data.get("custom_id")
        custom_id = str(cid) if isinstance(cid, str | int) else None
        if self.served and model not in self.served:
            return BadRow(
                line, codes.MODEL_NOT_FOUND, not_served(asked or model, self.served), raw, custom_id
            )
        if model != self.model:
            message = (
                f"body.model {asked!r} runs on {model!r}, but this batch runs {self.model!r} "
                "(one model a batch: enqueue those lines as another batch, or pass --model)"
            )
            return BadRow(line, codes.MISMATCHED_MODEL, message, raw, custom_id)
        self.asked[asked or ""] += 1
        return None

    def remapped(self) -> bool:
        """Whether some request runs on another model than the one it names."""
        return any(self.runs_on(asked or None)[0] != asked for asked in self.asked)

    def describe(self) -> list[str]:
        """One phrase per model asked for: ``'gpt-4o' -> 'qwen' (alias in the fleet file)``."""
        out = []
        for asked, n in sorted(self.asked.items(), key=lambda kv: (-kv[1], kv[0])):
            model, why = self.runs_on(asked or None)
            name = repr(asked) if asked else "no body.model"
            out.append(f"{name} -> {model!r} ({why}, {n} request{'' if n == 1 else 's'})")
        return out


def not_served(asked: str, served: tuple[str, ...]) -> str:
    return (
        f"model {asked!r} is not served by the fleet (it serves {', '.join(served)}); "
        "pass --model to run it on one of those, or map it in the fleet file's [aliases]"
    )


def plan(fleet: Fleet, model: str | None, *, requests: bool, first_asked: str | None) -> ModelMap:
    """The batch's :class:`ModelMap`. ``requests``: the records are OpenAI batch requests,
    ``first_asked`` the first one's ``body.model``.

    Raises :class:`ConfigError` (one line) when the model is not served, or none is given
    and the fleet serves none or several.
    """
    served = tuple(fleet.models())
    aliases = dict(fleet.aliases)
    if model is not None:
        forced = check_text("--model", fleet.alias(model), MODEL_CHARS)
        if served and forced not in served:
            raise ConfigError(not_served(model, served))
        return ModelMap(forced, forced, aliases, served)
    if requests and first_asked is not None:
        runs = check_text("body.model", fleet.alias(first_asked), MODEL_CHARS)
        if served and runs not in served:
            raise ConfigError(f"the first request's {not_served(first_asked, served)}")
        return ModelMap(runs, None, aliases, served)
    return ModelMap(default_model(fleet), None, aliases, served)


def default_model(fleet: Fleet) -> str:
    """The one model the fleet serves. Raises :class:`ConfigError`."""
    models = fleet.models()
    if len(models) == 1:
        return models[0]
    if not models:
        raise ConfigError("no --model given and the fleet file names no instance")
    raise ConfigError(f"the fleet serves several models ({', '.join(models)}): pass --model")

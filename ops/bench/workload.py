"""The work every mode does: judge records, the judge prompt and the request they send.

The prompt is vfleet's built-in ``judge`` spec, read as a data file (``workers/specs/
judge.toml``, found without importing ``workers``) and rendered the way vfleet renders it:
an immutable Jinja2 sandbox with ``StrictUndefined``, the record's fields plus ``record`` and
``labels``. Every mode therefore sends the same body (model, messages, ``temperature``,
``max_tokens``, ``response_format`` json_schema), and the simulator, whose answers are a
function of the body, gives every mode the same answer lengths and so the same timings.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ops.bench.errors import BenchSetupError

JUDGE_SPEC = "judge"
_TOPICS = (
    "the boiling point of water at sea level",
    "the capital of Australia",
    "why the sky is blue",
    "what a hash table is",
    "the difference between TCP and UDP",
    "how vaccines train the immune system",
    "the largest planet of the solar system",
    "what photosynthesis produces",
)


def spec_path(name: str = JUDGE_SPEC) -> Path:
    """Where vfleet's built-in spec ``name`` lives (a data file; ``workers`` is not imported).

    Raises:
        BenchSetupError: the ``workers`` package or the spec file is not found.
    """
    found = importlib.util.find_spec("workers")
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        path = Path(location) / "specs" / f"{name}.toml"
        if path.is_file():
            return path
    raise BenchSetupError(f"spec {name!r}: workers/specs/{name}.toml not found")


@dataclass(frozen=True)
class JudgePrompt:
    """A spec's system prompt, user template, sampling parameters and answer schema."""

    name: str
    system: str | None
    template: str
    params: dict[str, Any]
    json_schema: dict[str, Any] | None
    labels: list[str] | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> JudgePrompt:
        """Read a spec TOML file (default: the built-in judge spec)."""
        source = path or spec_path()
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise BenchSetupError(f"spec {source}: {e}") from e
        return cls(
            name=str(data.get("name", source.stem)),
            system=data.get("system"),
            template=str(data["template"]),
            params=dict(data.get("params") or {}),
            json_schema=data.get("json_schema"),
            labels=data.get("labels"),
        )

    def messages(self, record: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages for ``record``, rendered like vfleet renders them."""
        env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        context = {**record, "record": dict(record), "labels": self.labels}
        messages = []
        if self.system is not None:
            messages.append(
                {"role": "system", "content": env.from_string(self.system).render(context)}
            )
        messages.append({"role": "user", "content": env.from_string(self.template).render(context)})
        return messages

    def response_format(self) -> dict[str, Any] | None:
        """The ``response_format`` json_schema field vfleet sends for this spec."""
        if self.json_schema is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.json_schema, "strict": True},
        }

    def request(self, model: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``chat.completions.create`` for ``record``."""
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": self.messages(record),
            **self.params,
        }
        fmt = self.response_format()
        if fmt is not None:
            kwargs["response_format"] = fmt
        return kwargs


def judge_record(i: int) -> dict[str, Any]:
    """The ``i``-th benchmark record: a question, a candidate answer and a reference."""
    topic = _TOPICS[i % len(_TOPICS)]
    return {
        "id": f"r{i:07d}",
        "question": f"Question {i}: explain {topic} in two sentences.",
        "answer": f"Candidate {i} says something about {topic}, partly right.",
        "reference": f"The reference explanation of {topic} (variant {i % 97}).",
    }


def iter_records(n: int) -> Iterator[dict[str, Any]]:
    """The first ``n`` benchmark records."""
    return (judge_record(i) for i in range(n))


def write_records(path: Path, n: int) -> Path:
    """Write ``n`` records as JSONL to ``path``; returns ``path``."""
    with path.open("w", encoding="utf-8") as fh:
        for record in iter_records(n):
            fh.write(json.dumps(record) + "\n")
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def nominal_latency(tokens: float, *, ttft: float, itl: float, slow: float = 1.0) -> float:
    """Seconds an idle simulated instance takes for an answer of ``tokens`` tokens."""
    return (ttft + max(0.0, tokens - 1) * itl) * slow

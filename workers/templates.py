"""Jinja2 templates rendered in a sandbox with a bound on time, work and output size.

The immutable sandbox stops a template from reaching Python internals or changing the
record; it does not stop one from running for ever (two nested ``range(100000)`` loops)
or from building a string of gigabytes (``'x' * 10**9``). :func:`render` bounds both:

* every loop iteration, call and intercepted operator is a *step*; more than
  ``max_steps`` steps, or more than ``max_seconds`` of wall-clock time, stops the render;
* the output, and every intermediate string or list a call, filter, ``~`` or an
  operator builds, may hold at most ``max_chars`` characters (items), and numbers that
  would make one bigger (``'x' * n``, ``'x'|center(n)``, ``'%0*d'``, ``2 ** n``) are refused
  before anything is allocated;
* recursion too deep (a macro calling itself) stops the render.

Each of these raises :class:`RenderBoundError`, a :class:`jinja2.TemplateRuntimeError`:
whoever renders a user's template over a user's record treats it like any other
template failure of that record.

Loops are bounded by rewriting the parsed template: the iterable of every ``{% for %}``
goes through :meth:`BoundedEnvironment.guard_iter`, and every ``~`` through
:meth:`BoundedEnvironment.guard_value`, which Jinja reaches as ``environment.<name>``
(no template variable can shadow it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_MAX_SECONDS = 2.0
"""Wall-clock time one render may take."""

DEFAULT_MAX_STEPS = 2_000_000
"""Loop iterations, calls and operators one render may run."""

DEFAULT_MAX_CHARS = 4 * 1024 * 1024
"""Characters of output (and of any one intermediate value) one render may build."""

_MAX_POWER_BITS = 64 * 1024
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\d*|\*)(?:\.(\d*|\*))?")
_NUMBER = re.compile(r"\d+")
# Filters and str methods whose number arguments are widths of the value they build.
_WIDTH_FILTERS = frozenset({"center", "indent"})
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class RenderBoundError(jinja2.TemplateRuntimeError):
    """A render went over its time, step, size or recursion bound."""


@dataclass(frozen=True)
class Bounds:
    """How much one render may do."""

    max_seconds: float = DEFAULT_MAX_SECONDS
    max_steps: int = DEFAULT_MAX_STEPS
    max_chars: int = DEFAULT_MAX_CHARS


@dataclass
class _Budget:
    bounds: Bounds
    deadline: float
    steps: int = 0
    output: int = 0

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.bounds.max_steps:
            raise RenderBoundError(
                f"rendering ran over {self.bounds.max_steps:,} steps (loops or calls); "
                "the template does too much work for one record"
            )
        # Every step: one step may be slow (a sort of a long list), and the clock is cheap.
        if time.monotonic() > self.deadline:
            raise RenderBoundError(
                f"rendering took over {self.bounds.max_seconds:g} s; "
                "the template does too much work for one record"
            )

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.bounds.max_chars:
            raise RenderBoundError(
                f"{what} of {n:,} characters or items is over the {self.bounds.max_chars:,} limit"
            )


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "vfleet_template_budget", default=None
)


def _current() -> _Budget | None:
    return _budget.get()


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus the steps and sizes a :class:`_Budget` counts.

    Outside :func:`render` (no budget set) it behaves like the plain immutable sandbox.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        if budget is not None:
            budget.tick()
            _check_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if budget is not None:
            _check_size(budget, result)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        if budget is not None:
            budget.tick()
            _check_binop(budget, operator, left, right)
        result = self.binop_table[operator](left, right)
        if budget is not None:
            _check_size(budget, result)
        return result

    def guard_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Every item of ``iterable``, one step each."""
        budget = _current()
        for item in iterable:
            if budget is not None:
                budget.tick()
            yield item

    def guard_value(self, value: Any) -> Any:
        """``value``, if it is not too big."""
        budget = _current()
        if budget is not None:
            _check_size(budget, value)
        return value


def _bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)  # keeps jinja_pass_arg: pass_context filters stay such
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        if budget is None:
            return f(*args, **kwargs)
        budget.tick()
        if name in _WIDTH_FILTERS:
            _check_numbers(budget, args[1:], kwargs)
        elif name == "format" and args and isinstance(args[0], str):
            _check_percent(budget, args[0])
        result = f(*args, **kwargs)
        _check_size(budget, result)
        return result

    return bounded


def _check_call(budget: _Budget, obj: Any, args: tuple[Any, ...], kwargs: Any) -> None:
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, str) and getattr(obj, "__name__", "") in _WIDTH_METHODS:
        _check_numbers(budget, args, kwargs)
        return
    # The sandbox hands str.format out wrapped; the wrapper keeps the method.
    wrapped = getattr(obj, "__wrapped__", None)
    fmt = getattr(wrapped, "__self__", None)
    if isinstance(fmt, str) and getattr(wrapped, "__name__", "") in ("format", "format_map"):
        for spec in _FORMAT_FIELD.findall(fmt):
            for number in _NUMBER.findall(spec):
                budget.size(int(number), "a format width")


def _check_numbers(budget: _Budget, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    # A width over the output bound would build a value over it: refuse it before the
    # value is allocated.
    for value in (*args, *kwargs.values()):
        if _is_int(value) and value > budget.bounds.max_chars:
            budget.size(value, "a width")


def _check_percent(budget: _Budget, fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number.isdigit():
                budget.size(int(number), "a format width")


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int):
                budget.size(len(seq) * max(n, 0), "a repeated value")
    elif operator == "+" and isinstance(left, str | list | tuple):
        with contextlib.suppress(TypeError):
            budget.size(len(left) + len(right), "a joined value")
    elif operator == "%" and isinstance(left, str):
        _check_percent(budget, left)
    elif (
        operator == "**"
        and _is_int(left)
        and _is_int(right)
        and abs(left) > 1
        and right * math.log2(abs(left)) > _MAX_POWER_BITS
    ):
        raise RenderBoundError(f"{left} ** {right} is too big a number for a template")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(budget: _Budget, value: Any) -> None:
    if isinstance(value, str | list | tuple | dict):
        budget.size(len(value))


def _guard(node: nodes.Template) -> nodes.Template:
    """Route every loop's iterable through ``guard_iter`` and every ``~`` through
    ``guard_value``."""

    def call(name: str, arg: nodes.Node) -> nodes.Call:
        return nodes.Call(nodes.EnvironmentAttribute(name), [arg], [], None, None)

    for loop in node.find_all(nodes.For):
        loop.iter = call("guard_iter", loop.iter)
    for parent in [node, *node.find_all(nodes.Node)]:
        for name in parent.fields:
            child = getattr(parent, name, None)
            if isinstance(child, nodes.Concat):
                setattr(parent, name, call("guard_value", child))
            elif isinstance(child, list) and any(isinstance(c, nodes.Concat) for c in child):
                guarded = [
                    call("guard_value", c) if isinstance(c, nodes.Concat) else c for c in child
                ]
                setattr(parent, name, guarded)
    return node


# StrictUndefined: a missing field is an error, never an empty string in the prompt. No
# optimizer: it folds constant expressions at compile time, outside any bound, so that
# ``{{ 'x'|center(10**9) }}`` would take its time and memory when the spec is loaded.
_ENV = BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, optimized=False)


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The template, compiled with its loops bounded. Raises
    :class:`jinja2.TemplateSyntaxError`."""
    # Jinja evaluates constant output (``{{ 'x'|center(10**9) }}``) while compiling; a
    # budget of no steps makes any such call fail there, so it is left to run, bounded,
    # at render time.
    token = _budget.set(_Budget(Bounds(max_steps=0), deadline=0.0))
    try:
        return _ENV.from_string(_guard(_ENV.parse(source)))
    finally:
        _budget.reset(token)


def render(source: str, context: Mapping[str, Any], bounds: Bounds | None = None) -> str:
    """Render ``source`` over ``context`` within ``bounds`` (the defaults if None).

    Raises :class:`RenderBoundError` when a bound is crossed, and whatever else the
    template raises (:class:`jinja2.TemplateError`, ``TypeError``...).
    """
    limits = bounds or Bounds()
    budget = _Budget(limits, time.monotonic() + limits.max_seconds)
    template = compile_template(source)
    token = _budget.set(budget)
    try:
        return _collect(template.generate(context), budget)
    except RecursionError as e:
        raise RenderBoundError("recursion too deep (a macro calling itself?)") from e
    except MemoryError as e:
        raise RenderBoundError("out of memory while rendering") from e
    finally:
        _budget.reset(token)


def _collect(chunks: Iterator[str], budget: _Budget) -> str:
    parts: list[str] = []
    for chunk in chunks:
        budget.output += len(chunk)
        budget.size(budget.output, "the output")
        budget.tick()
        parts.append(chunk)
    return "".join(parts)

"""Templates render in a sandbox bounded in time, work and size: a hostile template fails
its record as a template error, fast, and ordinary templates render as before."""

from __future__ import annotations

import time

import pytest

from workers.errors import TemplateError
from workers.spec import Spec, plan_requests
from workers.templates import Bounds, RenderBoundError, render

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("source", "out"),
    [
        ("{% for i in range(3) %}{{ i }}{% if loop.last %}!{% endif %}{% endfor %}", "012!"),
        ("{% for i in [] %}x{% else %}none{% endfor %}", "none"),
        ("{% for x in xs if x %}{{ x }}{{ loop.length }}{% endfor %}", "1222"),
        ("{% for t in tree recursive %}{{ t.n }}({{ loop(t.c) }}){% endfor %}", "1(2())"),
        ("{{ 'a' ~ n ~ 'b' }} {{ xs|join(',') }} {{ '%5d' % n }} {{ '{:>3}'.format(n) }}", ""),
        ("{{ 'ab' * 3 }} {{ n ** 3 }} {{ 'x'|center(5) }}|", "ababab 343   x  |"),
    ],
)
def test_ordinary_templates_render_as_before(source: str, out: str) -> None:
    context = {"xs": [0, 1, 2], "n": 7, "tree": [{"n": 1, "c": [{"n": 2, "c": []}]}]}
    rendered = render(source, context)
    if out:
        assert rendered == out
    else:
        assert rendered == "a7b 0,1,2     7   7"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "steps",
        ),
        ("{{ 'x' * 10**9 }}", "over the"),
        ("{{ 'x'|center(1000000000) }}", "a width"),
        ("{{ 'x'.ljust(10**9) }}", "a width"),
        ("{{ '%0999999999d' % 1 }}", "format width"),
        ("{{ '{:>999999999}'.format(1) }}", "format width"),
        ("{{ '%0999999999d'|format(1) }}", "format width"),
        ("{{ 2 ** 1000000000 }}", "too big a number"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
        (
            "{% set ns = namespace(s='x') %}"
            "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "over the",
        ),
        ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "the output"),
    ],
    ids=[
        "nested-loops",
        "repeat",
        "center-filter",
        "ljust-method",
        "percent-width",
        "format-width",
        "format-filter",
        "power",
        "recursion",
        "doubling",
        "output",
    ],
)
def test_hostile_templates_stop_quickly_with_a_bound_error(source: str, needle: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderBoundError, match=needle):
        render(source, {})
    assert time.monotonic() - started < 10


def test_the_time_bound_stops_slow_work_that_takes_few_steps() -> None:
    # Each step is a sort of 100,000 items: few steps, much time.
    source = "{% for i in range(1000) %}{{ (range(100000)|list|sort)|length }}{% endfor %}"
    with pytest.raises(RenderBoundError, match=r"took over 0\.2 s"):
        render(source, {}, Bounds(max_seconds=0.2))


def test_a_bounded_render_is_a_template_error_of_its_record() -> None:
    spec = Spec(
        name="hostile",
        template="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
        "{% endfor %}{{ question }}",
    )
    started = time.monotonic()
    with pytest.raises(TemplateError, match="template: rendering ran over"):
        plan_requests(spec, {"question": "q"})
    assert time.monotonic() - started < 10


def test_a_spec_with_a_huge_constant_loads_at_once_and_fails_when_rendered() -> None:
    # Jinja folds constant output while compiling; that must not run unbounded either.
    started = time.monotonic()
    spec = Spec(name="const", template="{{ 'x'|center(1000000000) }}")
    assert time.monotonic() - started < 5
    with pytest.raises(TemplateError, match="a width"):
        plan_requests(spec, {})


def test_the_sandbox_still_refuses_internals_and_huge_ranges() -> None:
    with pytest.raises(TemplateError, match="unsafe"):
        plan_requests(Spec(name="s", template="{{ x.__class__.__mro__ }}"), {"x": 1})
    with pytest.raises(TemplateError, match="MAX_RANGE"):
        plan_requests(Spec(name="r", template="{{ range(10**9)|list }}"), {})

"""Remote launch arguments: validation, quoting and the remote command line (no SSH)."""

from __future__ import annotations

import shlex

import pytest

from ops.remote import (
    DEFAULT_SERVE_COMMAND,
    RemoteArgumentError,
    ServeSpec,
    launch_command,
    parse_duration,
    parse_gpus,
    parse_host_port,
    parse_sessions,
    quoted_placeholders,
    render_command,
    tmux,
    tmux_literal,
)

HOSTILE = ["x; touch /tmp/pwned", "$(id)", "`id`", "a'b\"c", "--max-model-len", "4096"]


def test_durations() -> None:
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == parse_duration("45") == 45
    assert parse_duration("0.5m") == 30
    for bad in ("", "soon", "5x", "h2", "-5s", "0", "1h; id"):
        with pytest.raises(RemoteArgumentError, match="bad duration"):
            parse_duration(bad)


def test_gpus_and_servers() -> None:
    assert parse_gpus("0, 1") == (0, 1)
    for bad in ("0,x", "1;id", "", "0,0", "-1"):
        with pytest.raises(RemoteArgumentError, match="bad GPU list"):
            parse_gpus(bad)
    assert parse_host_port("gpu1:8001") == ("gpu1", 8001)
    assert parse_host_port("me@gpu.lab:22") == ("me@gpu.lab", 22)
    for bad in ("gpu1", "gpu1:x", ":8001", "gpu1:0", "a b:1", "$(id):1"):
        with pytest.raises(RemoteArgumentError):
            parse_host_port(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": "gpu1;id"}, "bad host"),
        ({"model": "-rf"}, "bad model"),
        ({"model": "m\nid"}, "bad model"),
        ({"model": " "}, "bad model"),
        ({"port": 0}, "bad port"),
        ({"gpus": (0,), "tp": 2}, "needs 2 GPUs"),
        ({"lifetime": -1.0}, "positive"),
        ({"extra": ("a\0b",)}, "NUL"),
    ],
)
def test_bad_specs_are_refused_before_anything_runs(
    kwargs: dict[str, object], message: str
) -> None:
    args = {"host": "gpu1", "model": "m", "port": 8001, **kwargs}
    host, model, port = args.pop("host"), args.pop("model"), args.pop("port")
    with pytest.raises(RemoteArgumentError, match=message):
        ServeSpec.checked(host, model, port, **args)  # type: ignore[arg-type]


def test_every_value_reaches_the_command_as_one_literal_word() -> None:
    spec = ServeSpec.checked("gpu1", HOSTILE[0], 8001, gpus=(2, 3), extra=HOSTILE[1:])
    line = render_command(DEFAULT_SERVE_COMMAND, spec)
    assert shlex.split(line) == [
        "vllm", "serve", HOSTILE[0], "--host", "127.0.0.1", "--port", "8001",
        "--tensor-parallel-size", "2", *HOSTILE[1:],
    ]  # fmt: skip
    python = render_command(
        "{python} -m ops.sim --port {port} --model {model}", spec, python="/p y"
    )
    assert shlex.split(python) == ["/p y", "-m", "ops.sim", "--port", "8001", "--model", HOSTILE[0]]
    with pytest.raises(RemoteArgumentError, match="placeholders"):
        render_command("vllm serve {model} {oops}", spec)


def test_launch_line_wraps_a_lifetime_and_names_the_session() -> None:
    spec = ServeSpec.checked("gpu1", "x; id", 8001, gpus=(1,), lifetime=90)
    line = launch_command(spec, "vllm serve m", tmux_socket="t1", now=1000.0)
    words = shlex.split(line)
    assert words[words.index("new-session") :][:4] == ["new-session", "-d", "-s", "vfleet-8001"]
    script = words[words.index("vfleet-8001") + 1]
    assert script.startswith("exec timeout -k 10 90 sh -c ")
    inner = shlex.split(script)[-1]
    assert inner.startswith("export CUDA_VISIBLE_DEVICES=1; vllm serve m 2>&1 | tee -a ")
    assert words[-3:] == ["=vfleet-8001:", "@vfleet_expires", "1090"]
    assert words[words.index("@vfleet_model") :][:2] == ["@vfleet_model", "x; id"]
    assert "tmux -L t1 new-session" in line
    with pytest.raises(RemoteArgumentError):
        tmux("a;b")


def test_sessions_listing_keeps_only_vfleet_sessions() -> None:
    text = "main|1700000000||\nvfleet-8001|1700000000|1700003600|org/m|odd\nvfleet-x|1||\n"
    (s,) = parse_sessions("gpu1", text)
    assert (s.port, s.model, s.created, s.expires) == (8001, "org/m|odd", 1.7e9, 1700003600.0)
    assert s.as_dict()["session"] == "vfleet-8001"


@pytest.mark.parametrize(
    ("template", "found"),
    [
        ('sh -c "vllm serve {model}"', [("model", "double")]),
        ("sh -c 'vllm serve {model} --port {port}'", [("model", "single"), ("port", "single")]),
        ('vllm serve {model} --name "x" {extra}', []),
        ('vllm serve \\"{model}\\"', []),  # escaped quotes quote nothing
        ('echo "it\'s" {model}', []),  # a ' inside double quotes opens nothing
        ("echo 'a\\' {model}", []),  # no escapes inside single quotes: the quote closed
        ("{python} -m ops.sim --port {port} --model {model}", []),
    ],
)
def test_placeholders_inside_quotes_are_found(template: str, found: list[tuple[str, str]]) -> None:
    assert quoted_placeholders(template) == found


@pytest.mark.parametrize("template", ['sh -c "vllm serve {model}"', "sh -c 'echo {extra}'"])
def test_a_template_quoting_a_placeholder_is_refused(template: str) -> None:
    spec = ServeSpec.checked("gpu1", "$(touch /tmp/pwned)", 8001, extra=("$(id)",))
    with pytest.raises(RemoteArgumentError, match=r"inside (double|single) quotes"):
        render_command(template, spec)


def test_a_trailing_semicolon_reaches_tmux_escaped() -> None:
    assert tmux_literal("org/m;") == "org/m\\;"
    assert tmux_literal("a\\;") == "a\\\\;"
    assert tmux_literal("x;y") == "x;y"
    spec = ServeSpec.checked("gpu1", "org/m;", 8001)
    words = shlex.split(launch_command(spec, "vllm serve m"))
    assert words[words.index("@vfleet_model") + 1] == "org/m\\;"

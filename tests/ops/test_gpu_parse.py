"""nvidia-smi output parsing and the idle rule: pure functions, no SSH."""

from __future__ import annotations

import subprocess

import pytest

from ops.gpu import (
    SEPARATOR,
    IdleRule,
    gpu_scan_command,
    number,
    parse_app_line,
    parse_gpu_line,
    parse_gpu_scan,
)
from tests.sshd import A100, APPS_OUTPUT, GPU_OUTPUT, UUID0, UUID1


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("42", 42.0),
        (" 61.52 ", 61.52),
        ("[N/A]", None),
        ("N/A", None),
        ("[Not Supported]", None),
        ("[Unknown Error]", None),
        ("[Insufficient Permissions]", None),
        ("", None),
        ("garbage", None),
        ("81920 MiB", 81920.0),
        ("97 %", 97.0),
    ],
)
def test_number_tolerates_every_token_nvidia_smi_prints(token: str, value: float | None) -> None:
    assert number(token) == value


def test_gpu_line_reads_every_field() -> None:
    g = parse_gpu_line(f"3, {UUID0}, {A100}, 97, 61, 81920, 74000, 71, 389.77, 400.00")
    assert g is not None
    assert (g.index, g.uuid, g.name) == (3, UUID0, A100)
    assert (g.utilization_gpu, g.utilization_memory) == (97.0, 61.0)
    assert (g.memory_total_mib, g.memory_used_mib) == (81920.0, 74000.0)
    assert (g.temperature_c, g.power_draw_w, g.power_limit_w) == (71.0, 389.77, 400.0)
    assert g.memory_percent == pytest.approx(90.33, abs=0.01)


def test_mig_gpu_has_no_utilisation_but_keeps_memory() -> None:
    scan = parse_gpu_scan(GPU_OUTPUT["mig"] + SEPARATOR + "\n")
    (g,) = scan.gpus
    assert g.utilization_gpu is None and g.utilization_memory is None
    assert g.memory_used_mib == 13.0
    assert scan.error is None


def test_unsupported_power_fields_become_none() -> None:
    (g,) = parse_gpu_scan(GPU_OUTPUT["unsupported"]).gpus
    assert g.name == "NVIDIA GeForce RTX 3090"
    assert g.power_draw_w is None and g.power_limit_w is None
    assert g.utilization_gpu == 3.0


def test_compute_processes_attach_to_their_gpu_by_uuid() -> None:
    scan = parse_gpu_scan(GPU_OUTPUT["busy"] + SEPARATOR + "\n" + APPS_OUTPUT["busy"])
    by_uuid = {g.uuid: g for g in scan.gpus}
    assert [p.pid for p in by_uuid[UUID0].processes] == [4242]
    assert by_uuid[UUID0].processes[0].name == "/usr/bin/python3"
    assert by_uuid[UUID0].processes[0].used_memory_mib == 73990.0
    assert by_uuid[UUID1].processes == ()


def test_process_line_with_na_memory_and_comma_in_name() -> None:
    p = parse_app_line(f"77, /opt/my, odd name, [N/A], {UUID1}")
    assert p is not None
    assert (p.pid, p.name, p.used_memory_mib, p.gpu_uuid) == (77, "/opt/my, odd name", None, UUID1)
    assert parse_app_line("No running processes found") is None


def test_missing_nvidia_smi_is_an_error_not_a_crash() -> None:
    scan = parse_gpu_scan("", "bash: nvidia-smi: command not found\n", 127)
    assert scan.gpus == () and scan.error is not None
    assert "nvidia-smi not found" in scan.error


def test_driver_failure_message_becomes_the_error() -> None:
    text = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"
    scan = parse_gpu_scan(text + SEPARATOR + "\n" + text, "", 9)
    assert scan.gpus == ()
    assert scan.error is not None and "exit 9" in scan.error and "NVIDIA driver" in scan.error


def test_garbage_lines_are_skipped_and_reported() -> None:
    text = "\x00\x01 binary junk\n" + GPU_OUTPUT["idle"] + "1, 2\n" + SEPARATOR + "\nnot, a, pid\n"
    scan = parse_gpu_scan(text)
    assert [g.index for g in scan.gpus] == [0, 1]
    assert len(scan.warnings) == 3


def test_empty_output_is_an_error() -> None:
    assert parse_gpu_scan("").error == "nvidia-smi failed (exit 0): no output"


def test_scan_command_is_one_posix_shell_command_that_reports_a_missing_binary() -> None:
    cmd = gpu_scan_command()
    assert cmd.startswith("sh -c ")
    assert "--query-gpu=index,uuid,name,utilization.gpu,utilization.memory,memory.total," in cmd
    assert "--query-compute-apps=pid,process_name,used_memory,gpu_uuid" in cmd
    done = subprocess.run(
        cmd, shell=True, capture_output=True, text=True, env={"PATH": "/nonexistent"}, timeout=10
    )
    assert done.returncode == 127
    assert parse_gpu_scan(done.stdout, done.stderr, done.returncode).error is not None


@pytest.mark.parametrize(
    ("util", "mem", "procs", "idle"),
    [
        (0.0, 0.1, 0, True),
        (4.9, 4.9, 0, True),
        (5.0, 0.1, 0, False),  # at the threshold is not below it
        (0.0, 6.0, 0, False),
        (0.0, 0.1, 1, False),  # a process holding the GPU, however quiet
        (None, 0.1, 0, False),  # [Unknown Error] or MIG's [N/A]: unknown is never idle
        (0.0, None, 0, False),  # unknown memory is not idle
        (None, None, 0, False),
    ],
)
def test_instant_idle(util: float | None, mem: float | None, procs: int, idle: bool) -> None:
    assert IdleRule(utilization=5, memory_percent=5, scans=3).instant(util, mem, procs) is idle


@pytest.mark.parametrize(
    ("util", "mem", "procs", "state"),
    [
        (0.0, 0.1, 0, "idle"),
        (None, 0.1, 0, "unknown"),
        (0.0, None, 0, "unknown"),
        (None, 50.0, 0, "busy"),  # what is known already says busy
        (97.0, None, 0, "busy"),
        (None, None, 2, "busy"),
    ],
)
def test_a_reading_is_idle_busy_or_unknown(
    util: float | None, mem: float | None, procs: int, state: str
) -> None:
    assert IdleRule(utilization=5, memory_percent=5).judge(util, mem, procs) == state


def test_an_unknown_error_gpu_is_unknown_never_idle() -> None:
    line = "0, GPU-x, NVIDIA H100 80GB HBM3, [Unknown Error], [Unknown Error], 81559, 0, 33, "
    reading = parse_gpu_line(line + "[Unknown Error], 700.00")
    assert reading is not None and reading.utilization_gpu is None
    assert reading.memory_percent == 0.0
    rule = IdleRule()
    assert rule.judge(reading.utilization_gpu, reading.memory_percent, 0) == "unknown"


def test_the_idle_streak_counts_the_latest_idle_scans() -> None:
    rule = IdleRule(scans=3)
    assert [rule.streak(x) for x in ([], [True], [True, True], [False, True], [True] * 5)] == [
        0, 1, 2, 0, 3,
    ]  # fmt: skip
    assert "5%" in rule.describe() and "3 scans" in rule.describe()


def test_idle_must_hold_for_n_scans() -> None:
    rule = IdleRule(scans=3)
    assert not rule.held([True, True])  # not enough history yet
    assert rule.held([True, True, True])
    assert not rule.held([True, False, True])
    assert rule.held([True, True, True, False])  # older readings beyond N do not count

"""SSH against a real OpenSSH sshd: config resolution, host keys, pooling, timeouts."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.gpu import gpu_scan_command, parse_gpu_scan
from ops.redis_server import free_port as closed_port
from ops.ssh.config import HostOverrides, SSHConfigFile, parse_jump, parse_setenv, split_hop
from ops.ssh.errors import (
    CommandTimeoutError,
    HostKeyError,
    SSHAuthError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
)
from ops.ssh.hostkeys import KnownHosts
from ops.ssh.pool import SSHPool, bounded
from tests.services import wait_for
from tests.sshd import (
    SilentServer,
    Sshd,
    keygen,
    session_processes,
    start_sshd,
    write_client_files,
)

ALIASES = {
    "gpu-idle": {"SetEnv": "FAKE_GPU_MODE=idle"},
    "gpu-busy": {"SetEnv": "FAKE_GPU_MODE=busy"},
    "gpu-hang": {"SetEnv": "FAKE_GPU_MODE=hang"},
    "jumped": {"ProxyJump": "gpu-idle", "SetEnv": "FAKE_GPU_MODE=busy"},
}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


def make_pool(config: Path, known: Path, **kw: object) -> SSHPool:
    accept = bool(kw.pop("accept_new", False))
    return SSHPool(
        ssh_config=SSHConfigFile(config),
        known_hosts=KnownHosts(known, accept_new=accept),
        allow_agent=False,
        **kw,  # type: ignore[arg-type]
    )


def test_ssh_config_patterns_and_fleet_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host gpu*\n  HostName 10.0.0.9\n  User ml\n  Port 2222\n  IdentityFile ~/k1\n"
        '  ProxyJump bastion\n  SetEnv A=1 B="x y"\nHost *\n  User fallback\n'
    )
    conf = SSHConfigFile(cfg)
    t = conf.resolve("gpu7")
    assert (t.hostname, t.user, t.port, t.proxy_jump) == ("10.0.0.9", "ml", 2222, ("bastion",))
    assert t.key_files[0].endswith("/k1") and not t.key_files[0].startswith("~")
    assert t.environment == (("A", "1"), ("B", "x y"))
    assert t.known_hosts_name == "[10.0.0.9]:2222"
    o = conf.resolve("gpu7", HostOverrides(hostname="h", user="u", port=22, proxy_jump="none"))
    assert (o.hostname, o.user, o.port, o.proxy_jump) == ("h", "u", 22, ())
    assert o.known_hosts_name == "h"
    other = conf.resolve("db1")
    assert (other.hostname, other.user, other.port) == ("db1", "fallback", 22)
    assert SSHConfigFile(tmp_path / "absent").resolve("x").hostname == "x"


def test_jump_and_setenv_parsing() -> None:
    assert parse_jump("a, b") == ("a", "b") and parse_jump("none") == ()
    assert split_hop("me@jump:2200") == ("me", "jump", 2200)
    assert split_hop("jump") == (None, "jump", None)
    assert parse_setenv("X=1 junk Y=") == (("X", "1"), ("Y", ""))


def test_command_runs_with_per_alias_environment(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES)
    with make_pool(cfg, known) as pool:
        out = pool.run("gpu-busy", "echo $FAKE_GPU_MODE; echo oops >&2; exit 3")
        assert (out.stdout, out.stderr, out.exit_status) == ("busy\n", "oops\n", 3)
        scan = pool.run("gpu-idle", gpu_scan_command())
        assert len(parse_gpu_scan(scan.stdout, scan.stderr, scan.exit_status).gpus) == 2


def test_connection_is_pooled_and_replaced_when_it_dies(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES)
    with make_pool(cfg, known) as pool:
        first = pool.client("gpu-idle")
        pool.run("gpu-idle", "true")
        assert pool.client("gpu-idle") is first
        transport = first.get_transport()
        assert transport is not None
        transport.close()  # the connection drops under us
        assert pool.run("gpu-idle", "echo back").stdout == "back\n"
        assert pool.client("gpu-idle") is not first


def test_proxy_jump_reaches_the_target_through_the_jump_host(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES)
    with make_pool(cfg, known) as pool:
        out = pool.run("jumped", "echo $FAKE_GPU_MODE $SSH_CONNECTION")
    mode, client_ip, *_ = out.stdout.split()
    assert mode == "busy" and client_ip == "127.0.0.1"


def test_unknown_host_key_is_refused_with_a_clear_message(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES, trusted=False)
    with make_pool(cfg, known) as pool, pytest.raises(HostKeyError) as err:
        pool.run("gpu-idle", "true")
    assert "is not in" in str(err.value) and "--accept-new-host-keys" in str(err.value)
    assert "ssh-ed25519" in str(err.value) and "SHA256:" in str(err.value)
    assert known.read_text() == ""


def test_accept_new_records_the_key_once(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES, trusted=False)
    with make_pool(cfg, known, accept_new=True) as pool:
        assert pool.run("gpu-idle", "echo ok").stdout == "ok\n"
    lines = known.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    with make_pool(cfg, known) as pool:  # now known: accepted without the option
        assert pool.run("gpu-busy", "echo ok").stdout == "ok\n"


def test_changed_host_key_is_refused_even_with_accept_new(sshd: Sshd, tmp_path: Path) -> None:
    cfg, known = write_client_files(sshd, tmp_path, ALIASES)
    other = tmp_path / "other_host_key"
    keygen(other)
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with make_pool(cfg, known, accept_new=True) as pool, pytest.raises(HostKeyError) as err:
        pool.run("gpu-idle", "true")
    assert "HOST KEY CHANGED" in str(err.value)


def test_dead_and_silent_hosts_fail_alone_and_fast(sshd: Sshd, tmp_path: Path) -> None:
    with SilentServer() as silent:
        aliases = {
            **ALIASES,
            "closed": {"Port": str(closed_port())},
            "silent": {"Port": str(silent.port)},
        }
        cfg, known = write_client_files(sshd, tmp_path, aliases)
        with make_pool(cfg, known, connect_timeout=4.0, command_timeout=4.0) as pool:
            start = time.monotonic()
            done: list[str] = []
            results = pool.run_many(
                ["gpu-idle", "closed", "silent", "gpu-hang", "gpu-busy"],
                gpu_scan_command(),
                on_result=lambda r: done.append(r.host),
            )
            elapsed = time.monotonic() - start
    assert results["gpu-idle"].ok and results["gpu-busy"].ok
    assert isinstance(results["closed"].error, SSHConnectError)
    assert "refused" in str(results["closed"].error)
    assert isinstance(results["silent"].error, SSHTimeoutError)
    assert isinstance(results["gpu-hang"].error, CommandTimeoutError)
    assert "did not finish in 4s; stopped on the host" in str(results["gpu-hang"].error)
    assert not isinstance(results["silent"].error, CommandTimeoutError)
    assert results["silent"].error.state == "unreachable"
    assert results["closed"].error.state == "unreachable"
    assert results["gpu-hang"].error.state == "timeout"
    # The healthy hosts never waited for the broken ones...
    assert set(done[:3]) == {"gpu-idle", "gpu-busy", "closed"}
    assert results["gpu-idle"].elapsed < 4.0 and results["gpu-busy"].elapsed < 4.0
    # ...and the two timeouts ran side by side, not one after the other (>= 8 s).
    assert elapsed < 8.0


def test_parallel_scan_of_slow_hosts_is_bounded_and_concurrent(sshd: Sshd, tmp_path: Path) -> None:
    aliases = {f"slow{i}": {"SetEnv": "FAKE_GPU_MODE=idle FAKE_GPU_DELAY=1"} for i in range(8)}
    cfg, known = write_client_files(sshd, tmp_path, aliases)
    with make_pool(cfg, known, parallelism=4) as pool:
        start = time.monotonic()
        results = pool.run_many(list(aliases), gpu_scan_command())
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results.values())
    assert all(r.elapsed >= 1.0 for r in results.values())
    # 8 hosts x 1 s, 4 at a time: two rounds, so at least 2 s; one by one would be >= 8 s.
    assert 2.0 <= elapsed < 7.5


def test_a_hung_command_leaves_no_process_on_the_host_after_two_scans(
    sshd: Sshd, tmp_path: Path
) -> None:
    """A hung nvidia-smi (the fake sleeps an hour) is killed on the host when its scan's
    time is up: two scans in a row leave nothing behind, and each ends with a timeout."""
    tag = uuid.uuid4().hex
    cfg, known = write_client_files(
        sshd, tmp_path, {"hung": {"SetEnv": f"FAKE_GPU_MODE=hang FAKE_GPU_TAG={tag}"}}
    )
    with make_pool(cfg, known, command_timeout=2.0, kill_after=1.0) as pool:
        for scan in (1, 2):
            errors: list[SSHError] = []

            def run(errors: list[SSHError]) -> None:
                try:
                    pool.run("hung", gpu_scan_command())
                except SSHError as e:
                    errors.append(e)

            start = time.monotonic()
            thread = threading.Thread(target=run, args=(errors,))
            thread.start()
            # The hang is real: the wrapper shell and the fake nvidia-smi run on the host...
            wait_for(
                lambda: len(session_processes(sshd.root, FAKE_GPU_TAG=tag)) >= 2,
                timeout=15,
                what=f"scan {scan}'s hung nvidia-smi on the host",
            )
            thread.join(30)
            assert not thread.is_alive()
            assert len(errors) == 1 and isinstance(errors[0], CommandTimeoutError), errors
            # ...and the host's own bound ended it: 2 s, and the client had the answer then.
            assert 2.0 <= time.monotonic() - start < 2.0 + 1.0 + 2.0 + 3.0
            left = session_processes(sshd.root, FAKE_GPU_TAG=tag)
            assert left == [], [p.cmdline() for p in left]


def test_a_command_is_bounded_by_coreutils_timeout_in_a_posix_shell() -> None:
    line = bounded("echo 'a b'; exit 3", 30, 5)
    assert line == "timeout -k 5 30 sh -c 'echo '\"'\"'a b'\"'\"'; exit 3'"


def test_a_refused_key_is_an_auth_error_not_an_unreachable_host(sshd: Sshd, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    keygen(stranger)
    cfg, known = write_client_files(sshd, tmp_path, {"who": {}})
    cfg.write_text(cfg.read_text().replace(str(sshd.client_key), str(stranger)))
    with make_pool(cfg, known) as pool, pytest.raises(SSHAuthError) as err:
        pool.run("who", "true")
    assert err.value.state == "auth" and "authentication failed" in str(err.value)

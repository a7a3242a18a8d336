"""Reloading a running daemon's topology with SIGHUP and ``vswitchctl reload``, on real namespaces.

Each test rewrites its own node's TOML file while the daemon runs and then asks for a reload, the
way an operator edits /etc/vswitch/vswitchd.toml and runs ``systemctl reload vswitchd``. The
daemon's log is the only answer SIGHUP gets, so the tests read it, as the operator would read the
journal.
"""
from __future__ import annotations

import dataclasses
import signal
import time

import pytest

from harness import (
    PING_SCRIPT,
    PYTHON,
    Daemon,
    PodSpec,
    expected_devices,
    node_namespaces,
    processes_with_argument,
    program,
)

pytestmark = pytest.mark.integration

LOG_TIMEOUT = 30.0
SETTLE_TIMEOUT = 5.0  # the kernel removes a namespace asynchronously after its last reference


def rewrite(daemon: Daemon, **changes) -> None:
    """Change the running node's file, and remember the TAPs it names for the cleanup."""
    daemon.spec = dataclasses.replace(daemon.spec, **changes)
    daemon.config_path.write_text(daemon.spec.render())
    daemon.known_taps.update(expected_devices(daemon.config_path))


def hang_up(daemon: Daemon) -> int:
    """Send SIGHUP; returns how much log there was before, to look only at what follows."""
    assert daemon.proc is not None and daemon.running()
    seen = len(daemon.log())
    daemon.proc.send_signal(signal.SIGHUP)
    return seen


def wait_for_log(daemon: Daemon, text: str, since: int) -> str:
    """The log written after ``since`` once it contains ``text``; fails with the log otherwise."""
    deadline = time.monotonic() + LOG_TIMEOUT
    while time.monotonic() < deadline:
        tail = daemon.log()[since:]
        if text in tail:
            return tail
        assert daemon.running(), f"vswitchd exited; log:\n{daemon.log()}"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {LOG_TIMEOUT:.0f} s; log:\n{daemon.log()}")


def wait_for_namespaces(daemon: Daemon, expected: list[str]) -> list[str]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        found = node_namespaces(daemon.spec.name)
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def ping(daemon: Daemon, source: str, *targets: str) -> None:
    result = daemon.python_in(source, PING_SCRIPT, "1", *targets)
    missing = [target for target in targets if result.get(target) is None]
    assert not missing, f"{source} got no reply from {missing}; log:\n{daemon.log()}"


def all_ping(daemon: Daemon) -> None:
    ips = {name: str(ip) for name, ip in daemon.spec.pod_ips().items()}
    for source in ips:
        ping(daemon, source, str(daemon.spec.gateway),
             *(ip for name, ip in ips.items() if name != source))


def sleeper(marker: str) -> tuple[str, tuple[str, ...]]:
    return ("sleeper", (PYTHON, program("sleeper"), marker))


def test_sighup_adds_a_pod_and_removes_another(make_daemon) -> None:
    daemon = make_daemon((), start=False)
    marker = f"vsw-reload-marker-{daemon.spec.name}"
    daemon.replace_pods((PodSpec("keep"), PodSpec("gone", containers=(sleeper(marker),))))
    daemon.start()
    assert processes_with_argument(marker), "the gone pod's container is not running"
    keep_ip = str(daemon.spec.pod_ips()["keep"])

    # "fresh" gets the address "gone" gives up (the next free one in file order).
    rewrite(daemon, pods=(PodSpec("keep"), PodSpec("fresh")))
    since = hang_up(daemon)
    wait_for_log(daemon, "reload: 1 pod added, 1 removed", since)
    daemon.remember_objects()

    expected = sorted([daemon.spec.netns("keep"), daemon.spec.netns("fresh")])
    assert wait_for_namespaces(daemon, expected) == expected
    assert processes_with_argument(marker) == {}, "the removed pod's container still runs"
    ping(daemon, "fresh", str(daemon.spec.gateway), keep_ip)
    ping(daemon, "keep", str(daemon.spec.pod_ips()["fresh"]))
    assert sorted(p["name"] for p in daemon.ctl("pods")) == ["fresh", "keep"]


def test_a_broken_file_and_sighup_leave_everything_working(make_daemon) -> None:
    daemon = make_daemon((PodSpec("alpha"), PodSpec("bravo")))
    namespaces = node_namespaces(daemon.spec.name)
    good = daemon.config_path.read_text()
    # A valid new pod before a broken one: all or nothing, so "charlie" must not appear either.
    broken = good + '\n[[pods]]\nname = "charlie"\n\n[[pods]]\nname = "delta"\nip = "192.0.2.9"\n'
    daemon.config_path.write_text(broken)

    since = hang_up(daemon)
    tail = wait_for_log(daemon, "reload failed", since)

    assert f"reload failed: {daemon.config_path}: pods[3].ip: 192.0.2.9 is outside" in tail, tail
    assert "nothing was changed" in tail
    assert node_namespaces(daemon.spec.name) == namespaces
    assert sorted(p["name"] for p in daemon.ctl("pods")) == ["alpha", "bravo"]
    all_ping(daemon)

    # Fixed, the same file reloads; the daemon was never in a half-applied state in between.
    daemon.config_path.write_text(good)
    since = hang_up(daemon)
    assert "reload: no changes" in wait_for_log(daemon, "reload: no changes", since)


def test_vswitchctl_reload_applies_or_explains(make_daemon) -> None:
    daemon = make_daemon((PodSpec("alpha"),))
    rewrite(daemon, pods=(PodSpec("alpha"), PodSpec("bravo")))

    result = daemon.ctl_run("reload")

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nlog:\n{daemon.log()}"
    assert result.stdout.splitlines()[0] == "reload: 1 pod added"
    daemon.remember_objects()
    all_ping(daemon)

    # A change that needs a restart is refused, and nothing else in the file is applied.
    namespaces = node_namespaces(daemon.spec.name)
    running = daemon.spec
    rewrite(daemon, mtu=1400, pods=running.pods + (PodSpec("charlie"),))
    refused = daemon.ctl_run("reload")
    assert refused.returncode == 1
    assert refused.stderr.startswith("vswitchctl: reload refused: "), refused.stderr
    assert "node.mtu: 1500 -> 1400" in refused.stderr
    assert node_namespaces(daemon.spec.name) == namespaces

    daemon.config_path.write_text(running.render().replace('name = "bravo"', 'name = "Bravo"'))
    bad = daemon.ctl_run("reload")
    assert bad.returncode == 1
    assert f"reload failed: {daemon.config_path}: pods[1].name: " in bad.stderr, bad.stderr
    assert node_namespaces(daemon.spec.name) == namespaces
    daemon.spec = running
    all_ping(daemon)

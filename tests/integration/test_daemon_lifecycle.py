"""The daemon's life: shutdown (SIGINT removes everything, SIGTERM keeps the pods for the next
start), crash and restart, crash and ``clean``, config errors.

Each test gets its own node (random name and CIDR) because it stops or kills the daemon. Pods run
a long sleep with a unique marker argument, so that a pod process surviving a shutdown, or a
duplicate started by a restart, is found wherever it lives.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from harness import (
    PING_SCRIPT,
    PYTHON,
    VSWITCHD,
    Daemon,
    PodSpec,
    node_namespaces,
    processes_with_argument,
    program,
    tun_devices,
)

pytestmark = pytest.mark.integration

SETTLE_TIMEOUT = 5.0  # the kernel removes namespaces asynchronously after their last reference


def sleeper(marker: str) -> tuple[str, tuple[str, ...]]:
    return ("sleeper", (PYTHON, program("sleeper"), marker))


def marker_of(daemon: Daemon) -> str:
    return f"vsw-test-marker-{daemon.spec.name}"


def lifecycle_pods(marker: str) -> tuple[PodSpec, ...]:
    return (PodSpec("web", containers=(sleeper(marker),)), PodSpec("db"))


def new_node(make_daemon, *, start: bool = True) -> Daemon:
    """A two-pod node whose ``web`` pod runs a sleeper marked with the node's name."""
    daemon = make_daemon((), start=False)
    daemon.replace_pods(lifecycle_pods(marker_of(daemon)))
    if start:
        daemon.start()
    return daemon


def node_taps(daemon: Daemon) -> list[str]:
    return sorted(set(tun_devices()) & daemon.known_taps)


def wait_until_gone(daemon: Daemon) -> tuple[list[str], list[str], dict]:
    """Poll until namespaces, TAPs and marked processes are gone, or the timeout passes."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        state = (
            node_namespaces(daemon.spec.name),
            node_taps(daemon),
            processes_with_argument(marker_of(daemon)),
        )
        if not any(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def assert_pings(daemon: Daemon) -> None:
    ips = {name: str(ip) for name, ip in daemon.spec.pod_ips().items()}
    for source in ips:
        targets = [ip for name, ip in ips.items() if name != source] + [str(daemon.spec.gateway)]
        result = daemon.python_in(source, PING_SCRIPT, "1", *targets)
        missing = [t for t in targets if result.get(t) is None]
        assert not missing, f"{source} got no reply from {missing}; log:\n{daemon.log()}"


def count_host_addresses(daemon: Daemon) -> tuple[int, int]:
    """How many times the host port's address and the pod CIDR route exist in the root namespace."""
    host = str(daemon.spec.host_address)
    cidr = daemon.spec.pod_cidr
    with IPRoute() as ipr:
        addresses = sum(1 for a in ipr.get_addr(family=2) if a.get("IFA_ADDRESS") == host)
        routes = sum(
            1 for r in ipr.get_routes(family=2)
            if r.get("RTA_DST") == str(cidr.network_address) and r["dst_len"] == cidr.prefixlen
        )
    return addresses, routes


# ---------------------------------------------------------------------------------------------
# Shutdown and crashes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["SIGINT"])
def test_signal_removes_namespaces_taps_and_pod_processes(make_daemon, signum: int) -> None:
    daemon = new_node(make_daemon)
    # First prove the objects exist, or their absence afterwards would prove nothing.
    assert node_namespaces(daemon.spec.name) == sorted(
        daemon.spec.netns(p.name) for p in daemon.spec.pods)
    assert node_taps(daemon), "the host port's TAP should be in the root namespace"
    assert processes_with_argument(marker_of(daemon)), "the web pod's container is not running"

    status = daemon.stop(signum=signum)

    assert status == 0, f"exit status {status}; log:\n{daemon.log()}"
    namespaces, taps, processes = wait_until_gone(daemon)
    assert namespaces == [] and taps == [] and processes == {}, daemon.log()
    assert not os.path.exists(daemon.spec.socket), "the control socket was left behind"
    assert count_host_addresses(daemon) == (0, 0)


def test_sigterm_keeps_namespaces_taps_and_pod_processes(make_daemon) -> None:
    daemon = new_node(make_daemon)
    namespaces = node_namespaces(daemon.spec.name)
    taps = node_taps(daemon)
    processes = processes_with_argument(marker_of(daemon))
    assert namespaces and taps and processes

    status = daemon.stop(signum=signal.SIGTERM)

    assert status == 0, f"exit status {status}; log:\n{daemon.log()}"
    assert node_namespaces(daemon.spec.name) == namespaces
    assert node_taps(daemon) == taps
    assert processes_with_argument(marker_of(daemon)) == processes
    # The control socket goes with the daemon; the host port keeps its address and routes.
    assert not os.path.exists(daemon.spec.socket), "the control socket was left behind"
    assert count_host_addresses(daemon) == (1, 1)

    # What SIGTERM kept, `clean` removes.
    result = daemon.clean()
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    namespaces, taps, processes = wait_until_gone(daemon)
    assert namespaces == [] and taps == [] and processes == {}, result.stdout + result.stderr
    assert count_host_addresses(daemon) == (0, 0)
    assert list(Path(daemon.spec.state_dir).iterdir()) == []


def test_restart_after_sigterm_re_attaches_pods_and_containers(make_daemon) -> None:
    daemon = new_node(make_daemon)
    inodes = {name: os.stat(f"/run/netns/{name}").st_ino
              for name in node_namespaces(daemon.spec.name)}
    processes = processes_with_argument(marker_of(daemon))

    assert daemon.stop(signum=signal.SIGTERM) == 0, daemon.log()
    daemon.start()

    assert {name: os.stat(f"/run/netns/{name}").st_ino
            for name in node_namespaces(daemon.spec.name)} == inodes
    assert processes_with_argument(marker_of(daemon)) == processes
    assert_pings(daemon)
    assert count_host_addresses(daemon) == (1, 1)
    assert "removed leftover" not in daemon.log(), daemon.log()


def test_restart_after_sigkill_recovers_without_duplicates(make_daemon) -> None:
    daemon = new_node(make_daemon)
    assert_pings(daemon)
    before = processes_with_argument(marker_of(daemon))
    daemon.kill()
    assert node_namespaces(daemon.spec.name), "a killed daemon cannot have removed its namespaces"

    daemon.start()

    assert_pings(daemon)
    assert node_namespaces(daemon.spec.name) == sorted(
        daemon.spec.netns(p.name) for p in daemon.spec.pods)
    survivors = processes_with_argument(marker_of(daemon))
    assert len(survivors) == 1, f"expected one sleeper after the restart, found {survivors}"
    # The container outlived the killed daemon and was re-adopted, not started again.
    assert survivors == before
    listed = daemon.ctl("pods")
    assert sorted(p["name"] for p in listed) == sorted(p.name for p in daemon.spec.pods)
    assert count_host_addresses(daemon) == (1, 1)


def test_clean_after_sigkill_removes_everything(make_daemon) -> None:
    daemon = new_node(make_daemon)
    daemon.kill()
    assert node_namespaces(daemon.spec.name), "a killed daemon cannot have removed its namespaces"

    result = daemon.ctl_run("clean", "--config", str(daemon.config_path))

    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    namespaces, taps, processes = wait_until_gone(daemon)
    assert namespaces == [] and taps == [] and processes == {}, result.stdout + result.stderr
    assert count_host_addresses(daemon) == (0, 0)


def test_clean_is_idempotent(make_daemon) -> None:
    daemon = new_node(make_daemon, start=False)
    for _ in range(2):
        result = daemon.ctl_run("clean", "--config", str(daemon.config_path))
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    # id: (how to break the rendered TOML, the key path the message must name)
    "ip-outside-cidr": (lambda text, spec: text.replace(
        'name = "db"', 'name = "db"\nip = "192.0.2.9"'), "pods[1].ip"),
    "cidr-prefix": (lambda text, spec: text.replace(
        f'pod_cidr = "{spec.pod_cidr}"', f'pod_cidr = "{spec.pod_cidr.network_address}/33"'),
        "node.pod_cidr"),
    "mtu-type": (lambda text, spec: text.replace("mtu = 1500", 'mtu = "big"'), "node.mtu"),
    "duplicate-pod": (lambda text, spec: text.replace('name = "db"', 'name = "web"'),
                      "pods[1].name"),
    "unknown-key": (lambda text, spec: text.replace("[dataplane]\n", "[dataplane]\nturbo = true\n"),
                    "dataplane.turbo"),
}


def write_bad_config(daemon: Daemon, breakage) -> str:
    mutate, _ = breakage
    good = daemon.config_path.read_text()
    bad = mutate(good, daemon.spec)
    assert bad != good, "the mutation did not apply; the test would prove nothing"
    daemon.config_path.write_text(bad)
    return str(daemon.config_path)


def assert_nothing_created(daemon: Daemon) -> None:
    assert node_namespaces(daemon.spec.name) == []
    assert node_taps(daemon) == []
    assert not os.path.exists(daemon.spec.socket)
    assert list(Path(daemon.spec.state_dir).iterdir()) == []
    assert count_host_addresses(daemon) == (0, 0)


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key_path(make_daemon, case: str) -> None:
    daemon = new_node(make_daemon, start=False)
    path = write_bad_config(daemon, BAD_CONFIGS[case])
    _, key_path = BAD_CONFIGS[case]

    daemon.start(wait=False)
    assert daemon.proc is not None
    status = daemon.proc.wait(timeout=30)

    log = daemon.log()
    assert status == 2, log
    assert f"vswitchd: config error: {path}: {key_path}: " in log
    assert "vswitchd ready" not in log
    assert_nothing_created(daemon)


def run_check(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VSWITCHD, "--check", path], capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_check_accepts_a_good_config_and_creates_nothing(make_daemon) -> None:
    daemon = new_node(make_daemon, start=False)
    result = run_check(str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert_nothing_created(daemon)


def test_check_rejects_a_bad_config_with_the_key_path(make_daemon) -> None:
    daemon = new_node(make_daemon, start=False)
    path = write_bad_config(daemon, BAD_CONFIGS["ip-outside-cidr"])
    result = run_check(path)
    assert result.returncode == 2
    assert f"vswitchd: config error: {path}: pods[1].ip: " in result.stderr
    assert_nothing_created(daemon)

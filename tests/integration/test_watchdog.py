"""systemd's watchdog with the real daemon: ``WATCHDOG=1`` arrives on the notify socket while pods
exchange traffic, stops while the daemon cannot run, and comes back when it can.

The test plays systemd: it owns the datagram socket named in ``NOTIFY_SOCKET`` and sets
``WATCHDOG_USEC``, both inherited by the ``vswitchd`` the harness starts. The timeout is 2 s, so
the daemon pings every second.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from harness import PING_SCRIPT, PYTHON, UDP_SOURCE_SCRIPT, Daemon, PodSpec

pytestmark = [pytest.mark.integration, pytest.mark.measured]

TIMEOUT = 2.0  # WATCHDOG_USEC, in seconds: a ping is due every TIMEOUT / 2


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", str(int(TIMEOUT * 1e6)))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        yield sock


def pings_during(sock: socket.socket, seconds: float) -> list[float]:
    """The arrival times of the WATCHDOG=1 messages within the next ``seconds``."""
    arrivals = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096)
        except socket.timeout:
            break
        if message == b"WATCHDOG=1":
            arrivals.append(time.monotonic())
    return arrivals


def drain(sock: socket.socket) -> None:
    sock.settimeout(0)
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


def assert_pods_talk(daemon: Daemon) -> None:
    ips = {name: str(ip) for name, ip in daemon.spec.pod_ips().items()}
    result = daemon.python_in("a", PING_SCRIPT, "1", ips["b"])
    assert result[ips["b"]] is not None, f"a got no reply from b; log:\n{daemon.log()}"


def test_pings_arrive_while_pods_talk_and_stop_while_the_daemon_is_stopped(
        make_daemon, notify_socket: socket.socket) -> None:
    daemon = make_daemon((PodSpec("a"), PodSpec("b")))
    assert daemon.proc is not None
    ips = {name: str(ip) for name, ip in daemon.spec.pod_ips().items()}
    # Four seconds of datagrams from a to b (b answers each with an ICMP error: traffic both
    # ways through the switch).
    traffic = daemon.popen_in("a", PYTHON, UDP_SOURCE_SCRIPT, ips["b"], "9", "400", "0.01",
                              stdout=subprocess.DEVNULL)
    try:
        arrivals = pings_during(notify_socket, 3.5)
    finally:
        traffic.wait(30)
    assert traffic.returncode == 0
    assert len(arrivals) >= 3, f"{len(arrivals)} pings in 3.5 s; log:\n{daemon.log()}"
    assert max(b - a for a, b in zip(arrivals, arrivals[1:])) < TIMEOUT
    assert_pods_talk(daemon)

    # A daemon that cannot run sends nothing: after longer than the timeout without a ping,
    # systemd would kill and restart it.
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.1)  # a ping sent as the signal arrived is not the stopped daemon's
        drain(notify_socket)
        assert pings_during(notify_socket, TIMEOUT * 1.5) == []
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    # Running again, it pings again (after one skipped ping if the stop fell into a step).
    assert pings_during(notify_socket, TIMEOUT * 2), f"no pings after SIGCONT; log:\n{daemon.log()}"
    assert_pods_talk(daemon)
    assert "pinging systemd's watchdog every 1 s" in daemon.log()

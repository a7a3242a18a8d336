"""Restarts that do not break pods: a TCP stream between pods runs through a daemon that is
stopped (SIGTERM) or killed (SIGKILL) and started again; containers keep running with the same
pid; a restart with a changed file keeps every pod the file still describes as it is.

What makes it possible: the pods' TAPs are persistent, so a pod keeps its eth0, addresses, routes
and sockets while no daemon runs (the link just has no carrier), and the next daemon re-attaches
them instead of creating them anew. TCP sees a stretch of lost packets and retransmits.

The outage a stream sees is longer than the time no daemon runs: TCP retransmits with exponential
backoff (200 ms, then 400 ms, 800 ms, 1.6 s, ... after the first loss), so the stream resumes
at the first retransmission after the daemon is back, which can be up to twice the downtime
later. ``MAX_STALL`` allows for a daemon restart of up to ~4 s on a loaded 2-core machine
(Python start-up, the native module, netlink), doubled by the backoff, plus a margin.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

import pytest

from harness import Daemon, PodSpec, PYTHON, netns_inode, processes_with_argument, program

pytestmark = pytest.mark.integration

STREAM_SECONDS = 8  # iperf3 -t: long enough for a restart in the middle and a steady tail
INTERVAL = 0.2  # iperf3 -i: the resolution of the stall measurement
RESTART_AT = 1.5  # seconds into the stream
MAX_STALL = 10.0  # seconds without progress a restart may cost; see the module docstring
IPERF_PORT = "5201"


def longest_stall(report: dict) -> float:
    """The longest run of iperf3 intervals in which the receiver got no bytes, in seconds."""
    longest = current = 0.0
    for interval in report["intervals"]:
        total = interval["sum"]
        if total["bytes"] == 0:
            current += total["seconds"]
            longest = max(longest, current)
        else:
            current = 0.0
    return longest


def judge_stream(daemon: Daemon, returncode: int | None, out: str, err: str, downtime: float,
                 signum: int, record_property) -> dict:
    """The iperf3 client's JSON report of a stream across a restart, after checking that it
    completed and stalled less than MAX_STALL; the figures go to the test's properties."""
    report = json.loads(out)
    assert returncode == 0 and "error" not in report, f"{out}\n{err}\n{daemon.log()}"
    stall = longest_stall(report)
    record_property("restart_seconds", round(downtime, 2))
    record_property("longest_stall_seconds", round(stall, 2))
    print(f"{signal.Signals(signum).name}: daemon down {downtime:.2f} s, "
          f"stream stalled {stall:.2f} s at most")
    assert report["end"]["sum_received"]["bytes"] > 0
    assert stall < MAX_STALL, f"the stream stalled {stall:.2f} s; log:\n{daemon.log()}"
    return report


def wait_for_output(proc: subprocess.Popen, text: bytes, timeout: float = 10.0) -> None:
    """Until the (unbuffered, binary) stdout of ``proc`` has shown ``text``."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        assert ready, f"{proc.args!r} did not print {text!r} in {timeout} s: {seen!r}"
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"{proc.args!r} ended before printing {text!r}: {seen!r}"
        seen += chunk


def restart(daemon: Daemon, signum: int) -> float:
    """Stop the daemon with ``signum`` and start it again; how long no daemon served the pods."""
    started = time.monotonic()
    if signum == signal.SIGKILL:
        daemon.kill()
    else:
        assert daemon.stop(signum=signum) == 0, daemon.log()
    daemon.start()
    return time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_pod_to_pod_stream_survives_a_restart(make_daemon, signum: int, record_property) -> None:
    daemon = make_daemon((PodSpec("server"), PodSpec("client")))
    server_ip = str(daemon.spec.pod_ips()["server"])
    inodes = {pod: netns_inode(daemon.spec.netns(pod)) for pod in ("server", "client")}
    server = daemon.popen_in("server", "iperf3", "-s", "-1", "--forceflush", "-p", IPERF_PORT,
                             "-B", server_ip,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = None
    try:
        wait_for_output(server, b"Server listening")
        # The report is read from the receiver's side (what actually arrived): -R would change
        # the direction; the client's own intervals count what the server acknowledged.
        client = daemon.popen_in(
            "client", "iperf3", "-c", server_ip, "-p", IPERF_PORT, "-t", str(STREAM_SECONDS),
            "-i", str(INTERVAL), "-b", "200M", "-J",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(RESTART_AT)
        downtime = restart(daemon, signum)
        out, err = client.communicate(timeout=STREAM_SECONDS + 60)
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    judge_stream(daemon, client.returncode, out, err, downtime, signum, record_property)
    # Re-attached, not re-created: the pods kept their namespaces.
    assert {pod: netns_inode(daemon.spec.netns(pod)) for pod in inodes} == inodes
    assert daemon.log().count("re-attached") >= 2, daemon.log()


def ticker(marker: str) -> tuple[str, tuple[str, ...]]:
    """A container that prints a line every 0.2 s, marked to be found among processes."""
    return ("ticker", ("sh", "-c", f"while true; do echo tick; sleep 0.2; done # {marker}",
                       marker))


def sleeper(marker: str) -> tuple[str, tuple[str, ...]]:
    return ("sleeper", (PYTHON, program("sleeper"), marker))


def container_pids(daemon: Daemon, pod: str) -> dict[str, int]:
    listed = daemon.ctl("pods", "-A")
    row = next(p for p in listed if p["name"] == pod)
    return {c["name"]: c["pid"] for c in row["containers"] if c["state"] == "running"}


def test_containers_keep_running_with_the_same_pid(make_daemon) -> None:
    daemon = make_daemon((), start=False)
    marker = f"vsw-restart-{daemon.spec.name}"
    daemon.replace_pods((PodSpec("web", containers=(ticker(marker),)),))
    daemon.start()
    before = container_pids(daemon, "web")
    assert list(before) == ["ticker"], daemon.log()
    assert "[web/ticker] tick" in wait_for_log(daemon, "[web/ticker] tick")

    restart(daemon, signal.SIGTERM)

    assert container_pids(daemon, "web") == before
    assert list(processes_with_argument(marker)) == [before["ticker"]]
    assert f"[web/ticker] re-adopted, pid {before['ticker']}" in daemon.log()
    # The new daemon follows the container's output file from where it stands.
    wait_for_log(daemon, "[web/ticker] tick")


def wait_for_log(daemon: Daemon, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} not logged; log:\n{daemon.log()}"
        time.sleep(0.1)
    return daemon.log()


def test_a_restart_with_a_changed_file_keeps_the_pods_it_still_describes(make_daemon) -> None:
    daemon = make_daemon((), start=False)
    marker = f"vsw-restart-{daemon.spec.name}"
    pods = (PodSpec("alpha", containers=(sleeper(marker),)), PodSpec("bravo"),
            PodSpec("charlie", containers=(sleeper(marker + "-c"),)))
    daemon.replace_pods(pods)
    daemon.start()
    inodes = {pod.name: netns_inode(daemon.spec.netns(pod.name)) for pod in pods[:2]}
    alpha = container_pids(daemon, "alpha")
    charlie = container_pids(daemon, "charlie")
    assert daemon.stop(signum=signal.SIGTERM) == 0, daemon.log()

    # charlie moves to another address: a different pod to the kernel, created anew.
    moved = str(daemon.spec.pod_cidr.network_address + 99)
    daemon.rewrite(pods=(*pods[:2], PodSpec("charlie", ip=moved,
                                            containers=(sleeper(marker + "-c"),))))
    daemon.start()

    after = {pod.name: netns_inode(daemon.spec.netns(pod.name)) for pod in pods[:2]}
    assert after["alpha"] == inodes["alpha"] and after["bravo"] == inodes["bravo"]
    assert container_pids(daemon, "alpha") == alpha
    # The old charlie's container went with its namespace (whose inode number the kernel may
    # give the new one, so only the processes tell them apart); exactly one runs now.
    new_charlie = container_pids(daemon, "charlie")
    assert list(processes_with_argument(marker + "-c")) == [new_charlie["sleeper"]]
    assert new_charlie["sleeper"] != charlie["sleeper"]
    log = daemon.log()
    assert "pod charlie: not re-attached" in log and "pod charlie created" in log, log
    assert "pod alpha re-attached" in log and "pod bravo re-attached" in log, log
    result = daemon.python_in("alpha", program("ping"), "2", moved,
                              str(daemon.spec.pod_ips()["bravo"]))
    assert all(result.values()), f"{result}; log:\n{log}"


def test_clean_removes_what_a_stopped_daemon_kept(make_daemon) -> None:
    daemon = make_daemon((), start=False)
    marker = f"vsw-restart-{daemon.spec.name}"
    daemon.replace_pods((PodSpec("web", containers=(sleeper(marker),)),))
    daemon.start()
    assert daemon.stop(signum=signal.SIGTERM) == 0
    assert processes_with_argument(marker), "SIGTERM keeps the containers"
    assert daemon.leftovers(), "SIGTERM keeps the pods"

    result = daemon.clean()

    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 5.0
    while daemon.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemon.leftovers()
    assert not processes_with_argument(marker)
    assert list(daemon.workdir.joinpath("state").iterdir()) == []

"""Restarts that do not break pods: a TCP stream between pods runs through a daemon that is
stopped (SIGTERM) and started again, or killed (SIGKILL) and taken over by its hot standby;
containers keep running with the same pid; a restart with a changed file keeps every pod the file
still describes as it is. The standby's own promises: it ends with the daemon that stops, takes
over from one that dies and starts a standby of its own, and is not there with ``--no-standby``.

What makes it possible: the pods' TAPs are persistent, so a pod keeps its eth0, addresses, routes
and sockets while no daemon runs (the link just has no carrier), and the next daemon re-attaches
them instead of creating them anew. TCP sees a stretch of lost packets and retransmits.

The outage a stream sees is longer than the time no daemon runs: TCP retransmits with exponential
backoff (200 ms, then 400 ms, 800 ms, 1.6 s, ... after the first loss), so the stream resumes
at the first retransmission after the daemon is back, which can be up to twice the downtime
later. ``MAX_STALL`` allows for a daemon restart of up to ~4 s on a loaded 2-core machine
(Python start-up, the native module, netlink), doubled by the backoff, plus a margin. A standby
that takes over has imported everything already and is back within a fraction of the first
retransmission timeout, so after SIGKILL the stream may stall ``MAX_TAKEOVER_STALL`` at most.
"""
from __future__ import annotations

import datetime
import json
import os
import select
import signal
import subprocess
import time

import pytest

from harness import (READY_MARKER, VSWITCHD, Daemon, PodSpec, PYTHON, netns_inode, process_alive,
                     processes_with_argument, program, wait_for_exit)

pytestmark = pytest.mark.integration

STREAM_SECONDS = 8  # iperf3 -t: long enough for a restart in the middle and a steady tail
INTERVAL = 0.2  # iperf3 -i: the resolution of the stall measurement
RESTART_AT = 1.5  # seconds into the stream
MAX_STALL = 10.0  # seconds without progress a restart may cost; see the module docstring
MAX_TAKEOVER_STALL = 1.0  # ... and a SIGKILL the standby takes over from
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
    completed and stalled less than MAX_STALL (MAX_TAKEOVER_STALL after a SIGKILL that a standby
    took over from); the figures go to the test's properties."""
    report = json.loads(out)
    assert returncode == 0 and "error" not in report, f"{out}\n{err}\n{daemon.log()}"
    stall = longest_stall(report)
    record_property("restart_seconds", round(downtime, 2))
    record_property("longest_stall_seconds", round(stall, 2))
    print(f"{signal.Signals(signum).name}: daemon down {downtime:.2f} s, "
          f"stream stalled {stall:.2f} s at most")
    assert report["end"]["sum_received"]["bytes"] > 0
    if signum == signal.SIGKILL and daemon.standby:
        assert stall <= MAX_TAKEOVER_STALL, f"the stream stalled {stall:.2f} s; log:\n{daemon.log()}"
    else:
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


def last_ready(daemon: Daemon) -> float:
    """When the daemon last logged "ready", on the system's clock (the log's timestamps)."""
    line = [line for line in daemon.log().splitlines() if READY_MARKER in line][-1]
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def restart(daemon: Daemon, signum: int) -> float:
    """Stop the daemon with ``signum`` and start it again, or, after SIGKILL with a standby, let
    the standby take over; how long no daemon served the pods: from the signal to the "ready"
    line of the daemon that runs the node next (the log's clock, to the millisecond)."""
    started = time.time()
    if signum == signal.SIGKILL:
        daemon.kill()
        if daemon.standby:
            daemon.wait_takeover()
            return last_ready(daemon) - started
    else:
        assert daemon.stop(signum=signum) in (0, None), daemon.log()
        # A deliberate stop ends the standby too: the next start is a fresh process.
        assert not daemon.standby_processes(), daemon.standby_processes()
    daemon.start()
    return last_ready(daemon) - started


@pytest.mark.measured
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_pod_to_pod_stream_survives_a_restart(make_daemon, signum: int, record_property) -> None:
    daemon = make_daemon((PodSpec("server"), PodSpec("client")), start=False)
    daemon.standby = True
    daemon.start()
    daemon.wait_standby()
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


# ---------------------------------------------------------------------------------------------
# The hot standby


def standby_daemon(make_daemon) -> Daemon:
    """A node of two pods, a and b, whose daemon keeps a hot standby."""
    daemon = make_daemon((PodSpec("a"), PodSpec("b")), start=False)
    daemon.standby = True
    daemon.start()
    return daemon


def pods_talk(daemon: Daemon) -> None:
    ips = daemon.spec.pod_ips()
    result = daemon.python_in("a", program("ping"), "2", str(ips["b"]))
    assert all(result.values()), f"{result}; log:\n{daemon.log()}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_standby_ends_with_a_daemon_that_stops(make_daemon, signum: int) -> None:
    daemon = standby_daemon(make_daemon)
    standby = daemon.wait_standby()
    assert standby in daemon.standby_processes()

    assert daemon.stop(signum=signum) == 0, daemon.log()

    assert not process_alive(standby) and not daemon.vswitchd_processes(), daemon.log()
    assert "taking over" not in daemon.log()
    if signum == signal.SIGTERM:
        assert daemon.leftovers(), "SIGTERM keeps the pods"
        assert daemon.clean().returncode == 0
    deadline = time.monotonic() + 5.0
    while daemon.leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemon.leftovers()
    assert list(daemon.workdir.joinpath("state").iterdir()) == []


def test_a_standby_takes_over_after_sigkill_and_starts_its_own(make_daemon) -> None:
    daemon = standby_daemon(make_daemon)
    inodes = {pod: netns_inode(daemon.spec.netns(pod)) for pod in ("a", "b")}
    first = daemon.pid
    standby = daemon.wait_standby()

    daemon.kill()
    daemon.wait_takeover()

    assert daemon.pid == standby and daemon.ctl("status")["pid"] == standby
    second = daemon.wait_standby()
    assert second not in (first, standby) and process_alive(second)
    assert {pod: netns_inode(daemon.spec.netns(pod)) for pod in inodes} == inodes
    pods_talk(daemon)
    # The standby of the daemon that took over takes over in its turn.
    daemon.kill()
    daemon.wait_takeover()
    assert daemon.pid == second
    pods_talk(daemon)
    assert daemon.log().count("taking over") == 2, daemon.log()


def test_a_standby_does_not_take_over_with_a_file_that_no_longer_validates(make_daemon) -> None:
    daemon = standby_daemon(make_daemon)
    standby = daemon.wait_standby()
    valid = daemon.config_path.read_text()
    daemon.config_path.write_text(valid + "\n[node]\nname = \"twice\"\n")

    daemon.kill()

    assert wait_for_exit(standby, 30), daemon.log()
    assert "does not validate; not taking the node over" in daemon.log()
    assert not daemon.vswitchd_processes()
    # The pods stay, as after any death of the daemon; `clean` removes them.
    assert daemon.leftovers().namespaces
    daemon.config_path.write_text(valid)
    assert daemon.clean().returncode == 0


def test_a_second_daemon_for_a_running_node_is_refused(make_daemon) -> None:
    daemon = standby_daemon(make_daemon)
    standby = daemon.wait_standby()

    second = subprocess.run(
        [*VSWITCHD, "--config", str(daemon.config_path)], capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})

    assert second.returncode == 1, second
    assert "another vswitchd answers" in second.stderr or "in use" in second.stderr, second
    assert daemon.running() and daemon.ctl("status")["standby"] == {"pid": standby,
                                                                     "state": "waiting"}


def test_under_systemd_a_restart_hands_the_unit_to_the_daemon_that_took_over(
        make_daemon, tmp_path) -> None:
    """What ``Restart=`` does after the daemon died and its standby took over: the new
    ``ExecStart`` finds the node run from the unit's own control group, tells systemd the live
    daemon is the main process and ready, waits for systemd to have read it, and exits 0."""
    import socket
    import threading

    daemon = standby_daemon(make_daemon)
    daemon.wait_standby()
    daemon.kill()
    daemon.wait_takeover()
    received: list[str] = []
    notify_path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(notify_path)

        def serve() -> None:
            # systemd's side of the barrier: close the fd once earlier messages are handled.
            for _ in range(2):
                data, fds, _, _ = socket.recv_fds(listener, 4096, 4)
                received.append(data.decode())
                for fd in fds:
                    os.close(fd)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        second = subprocess.run(
            [*VSWITCHD, "--config", str(daemon.config_path)], capture_output=True,
            text=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": notify_path})
        thread.join(10)

    assert second.returncode == 0, second
    assert received[0].startswith(f"MAINPID={daemon.pid}\nREADY=1\n"), received
    assert received[1] == "BARRIER=1", received
    assert daemon.running() and daemon.ctl("status")["pid"] == daemon.pid


def test_no_standby(make_daemon) -> None:
    daemon = make_daemon((PodSpec("a"),))  # the harness starts daemons with --no-standby
    assert daemon.ctl("status")["standby"] is None
    assert not daemon.standby_processes()
    daemon.kill()
    assert not daemon.vswitchd_processes()
    assert daemon.clean().returncode == 0

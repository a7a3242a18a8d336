"""The hot standby's parts, without root: the node lock's wait and hand-over, the brief, the
command line, the supervisor's life cycle with a stand-in process, the standby's wait in a
process of its own, and the hand-over of a systemd unit to a daemon that took over."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import trio

from vswitch import cli
from vswitch.runtime import standby
from vswitch.runtime.journal import NodeLock
from vswitch.runtime.standby import StandbyBrief, StandbySupervisor

HOLD = textwrap.dedent("""
    import sys, time
    from vswitch.runtime.journal import NodeLock
    lock = NodeLock(sys.argv[1], sys.argv[2])
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # a line: release, as a stopping daemon does; SIGKILL: die holding it
    lock.release()
""")


class Holder:
    """Another process holding a node's lock, as a running daemon does."""

    def __init__(self, state_dir: str, node: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, state_dir, node],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "locked\n"

    def release(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(10) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def holder(tmp_path):
    started = Holder(str(tmp_path), "n1")
    yield started
    started.close()


def wait_in_thread(lock: NodeLock) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(lock.wait_for_holder()), daemon=True)
    thread.start()
    time.sleep(0.2)
    assert not result, "the wait returned while the lock was held"
    return thread, result


def test_a_holder_that_dies_hands_the_lock_to_its_waiter(tmp_path, holder) -> None:
    lock = NodeLock(str(tmp_path), "n1")
    assert lock.holder() == holder.proc.pid
    thread, result = wait_in_thread(lock)
    holder.kill()
    thread.join(5)
    assert result == [True]
    assert lock.holder() == os.getpid()
    # Taken over, it is released as any holder's: the file goes, and the lock is free.
    lock.release()
    assert not os.path.exists(lock.path) and lock.holder() is None
    with NodeLock(str(tmp_path), "n1"):
        pass


def test_a_holder_that_stops_tells_its_waiter_to_go(tmp_path, holder) -> None:
    lock = NodeLock(str(tmp_path), "n1")
    thread, result = wait_in_thread(lock)
    holder.release()
    thread.join(5)
    assert result == [False]
    assert not os.path.exists(lock.path)
    # Too late to wait: the node was stopped before the waiter got there.
    assert NodeLock(str(tmp_path), "n1").wait_for_holder() is False


def test_the_brief_round_trips_and_names_what_was_imported() -> None:
    brief = StandbyBrief("/run/vswitch", "lab1", ("trio", "vswitch.runtime.daemon"))
    assert StandbyBrief.decode(brief.encode()) == brief
    names = standby.imported_modules({"trio": trio, "__main__": sys, "gone": None,
                                      "__mp_main__": sys, "os": os})
    assert names == ["os", "trio"]


def test_the_standby_command_repeats_the_daemons_own(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["vswitchd", "--config", "/etc/v.toml"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "/usr/bin/vswitchd",
                                           "--config", "/etc/v.toml"])
    assert standby.standby_command(["--config", "/etc/v.toml"]) == [
        sys.executable, "-X", "dev", "/usr/bin/vswitchd", "--config", "/etc/v.toml", "--standby"]
    # A standby's own standby has the same command line, not one more flag.
    monkeypatch.setattr(sys, "argv", ["vswitchd", "--config", "/etc/v.toml", "--standby"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "/usr/bin/vswitchd", "--config",
                                           "/etc/v.toml", "--standby"])
    assert standby.standby_command(["--config", "/etc/v.toml", "--standby"]) == [
        sys.executable, "/usr/bin/vswitchd", "--config", "/etc/v.toml", "--standby"]
    # Called with arguments of its own, vswitchd_main's standby runs the module.
    assert standby.standby_command(["--config", "x.toml"]) == [
        sys.executable, "-m", "vswitch.cli", "vswitchd", "--config", "x.toml", "--standby"]


def test_the_cli_flags() -> None:
    parser = cli._vswitchd_parser()
    args = parser.parse_args(["--config", "x", "--no-standby"])
    assert args.no_standby and not args.standby
    assert parser.parse_args(["--config", "x", standby.STANDBY_FLAG]).standby
    assert "--standby" not in parser.format_help() and "--no-standby" in parser.format_help()


def test_become_main_process_claims_the_watchdog_only_when_there_is_one() -> None:
    environ = {"WATCHDOG_PID": "1", "WATCHDOG_USEC": "10000000"}
    standby.become_main_process(environ)
    assert environ["WATCHDOG_PID"] == str(os.getpid())
    environ = {}
    standby.become_main_process(environ)
    assert environ == {}


# A stand-in standby: reads its brief, says it waits, then sleeps until it is ended.
FAKE_STANDBY = textwrap.dedent("""
    import socket, sys, time
    channel = socket.socket(fileno=0)
    data = b""
    while chunk := channel.recv(65536):
        data += chunk
    assert b'"node": "n1"' in data, data
    channel.sendall(b"waiting\\n")
    time.sleep(float(sys.argv[1]))
""")


async def test_the_supervisor_keeps_one_standby_and_ends_it(tmp_path) -> None:
    import logging

    supervisor = StandbySupervisor([sys.executable, "-c", FAKE_STANDBY, "60"], str(tmp_path),
                                   "n1", logging.getLogger("test"))
    assert supervisor.status() == {"pid": None, "state": "starting"}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            while supervisor.status()["state"] != "waiting":
                await trio.sleep(0.05)
            pid = supervisor.pid
            assert pid is not None and os.path.exists(f"/proc/{pid}")
            nursery.cancel_scope.cancel()
    # Ended (and reaped) when its task ends, as when the daemon stops.
    assert not os.path.exists(f"/proc/{pid}")


async def test_a_standby_that_ends_is_started_again(tmp_path) -> None:
    import logging

    supervisor = StandbySupervisor([sys.executable, "-c", FAKE_STANDBY, "0"], str(tmp_path),
                                   "n1", logging.getLogger("test"), respawn_delay=0.1)
    pids = set()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            while len(pids) < 2:
                if supervisor.pid is not None:
                    pids.add(supervisor.pid)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


WAIT_AS_STANDBY = textwrap.dedent("""
    import logging, sys
    from vswitch.runtime.standby import wait_as_standby
    logging.basicConfig(level=logging.INFO)
    lock = wait_as_standby(logging.getLogger("standby"))
    print("took over" if lock is not None else "stood down", flush=True)
""")


def start_standby(tmp_path) -> tuple[subprocess.Popen, socket.socket]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-c", WAIT_AS_STANDBY], stdin=theirs,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    theirs.close()
    ours.sendall(StandbyBrief(str(tmp_path), "n1", ("json", "trio")).encode())
    ours.shutdown(socket.SHUT_WR)
    ours.settimeout(30)
    assert ours.recv(100) == b"waiting\n"
    return proc, ours


@pytest.mark.parametrize("end", ["kill", "release"])
def test_a_standby_takes_over_only_from_a_daemon_that_died(tmp_path, holder, end) -> None:
    proc, channel = start_standby(tmp_path)
    with channel:
        # It keeps nothing of the daemon's: the channel is closed on its side.
        assert channel.recv(100) == b""
    time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    getattr(holder, end)()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    if end == "kill":
        assert out == "took over\n" and "died; taking over" in err
    else:
        assert out == "stood down\n" and "stopped deliberately" in err


def test_sigint_ends_a_waiting_standby_quietly(tmp_path, holder) -> None:
    proc, channel = start_standby(tmp_path)
    channel.close()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err and out == ""


# ---------------------------------------------------------------------------------------------
# systemd: a start that finds the node run by a daemon of the same unit


class FakeSystemd:
    """A notify socket that records messages and, as systemd does, closes barrier fds."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.path = path
        self.messages: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 4096, 4)
            except OSError:
                return
            self.messages.append(data.decode())
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def test_a_start_hands_the_unit_to_the_daemon_that_took_over(tmp_path, holder) -> None:
    import logging

    fake = FakeSystemd(str(tmp_path / "notify"))
    try:
        environ = {"NOTIFY_SOCKET": fake.path}
        assert standby.hand_over_to_running(str(tmp_path), "n1", logging.getLogger("t"), environ)
        deadline = time.monotonic() + 5
        while len(fake.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        pid = holder.proc.pid
        assert fake.messages == [f"MAINPID={pid}\nREADY=1\nSTATUS=node n1, run by pid {pid}",
                                 "BARRIER=1"]
    finally:
        fake.close()


def test_no_hand_over_without_systemd_a_holder_or_a_shared_unit(tmp_path, monkeypatch) -> None:
    import logging

    log = logging.getLogger("t")
    fake = FakeSystemd(str(tmp_path / "notify"))
    environ = {"NOTIFY_SOCKET": fake.path}
    try:
        assert not standby.hand_over_to_running(str(tmp_path), "n1", log, environ)  # no holder
        held = Holder(str(tmp_path), "n1")
        try:
            assert not standby.hand_over_to_running(str(tmp_path), "n1", log, {})
            # A live holder in another control group is another daemon: refused as before.
            cgroups = {"self": "0::/system.slice/vswitchd.service\n",
                       str(held.proc.pid): "0::/user.slice/session-1.scope\n"}
            monkeypatch.setattr(standby, "_cgroup", lambda pid: cgroups.get(str(pid)))
            assert not standby.hand_over_to_running(str(tmp_path), "n1", log, environ)
        finally:
            held.close()
        assert fake.messages == []
    finally:
        fake.close()


class RecordingStandby:
    def __init__(self) -> None:
        self.started = False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        task_status.started()
        await trio.sleep_forever()

    def status(self) -> dict:
        return {"pid": None, "state": "starting"}


async def test_a_daemon_that_fails_to_start_starts_no_standby(tmp_path) -> None:
    from .daemon.support import Harness, make_topology

    class Broken(Exception):
        pass

    async def failing_create_pod(pod):
        raise Broken(f"cannot create {pod.key}")

    harness = Harness(make_topology(tmp_path))
    harness.kernel.create_pod = failing_create_pod  # the second step of the start-up
    recording = RecordingStandby()
    with pytest.RaisesGroup(Broken, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, standby=recording)
    assert not recording.started
    # A daemon that is ready starts it, last.
    ready = Harness(make_topology(tmp_path / "ready"))
    async with trio.open_nursery() as nursery:
        await ready.start(nursery, standby=recording)
        await trio.sleep(0.1)
        assert recording.started
        nursery.cancel_scope.cancel()


class TakenLock:
    """What ``wait_as_standby`` returns when the daemon died: the node's lock, held."""

    def __init__(self, path: str) -> None:
        self.path = path


STANDBY_CONFIG = """
[node]
name = "lab1"
pod_cidr = "10.244.1.0/24"

[control]
state_dir = "{state_dir}"
socket = "{state_dir}/lab1.sock"

[[pods]]
name = "web-1"
"""


@pytest.fixture
def taking_over(tmp_path, monkeypatch):
    """vswitchd_main as a standby whose daemon just died, up to run_daemon (recorded)."""
    import vswitch.runtime.daemon as daemon_module

    config = tmp_path / "v.toml"
    config.write_text(STANDBY_CONFIG.format(state_dir=tmp_path))
    lock = TakenLock(str(tmp_path / "lab1.lock"))
    monkeypatch.setattr(standby, "wait_as_standby", lambda log: lock)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    ran = []

    async def run_daemon(topology, **kwargs):
        ran.append(kwargs)

    monkeypatch.setattr(daemon_module, "run_daemon", run_daemon)
    return config, lock, ran


def test_a_standby_runs_the_ordinary_start_up_with_the_lock_it_took(taking_over) -> None:
    config, lock, ran = taking_over
    assert cli.vswitchd_main(["--config", str(config), "--standby"]) == 0
    [kwargs] = ran
    assert kwargs["takeover_lock"] is lock
    # ... and keeps a standby of its own, with the same command line.
    assert kwargs["standby"].command[-3:] == ["--config", str(config), "--standby"]


def test_a_standby_does_not_take_over_a_file_that_now_describes_another_node(
        taking_over, caplog) -> None:
    config, lock, ran = taking_over
    lock.path = str(config.parent / "elsewhere" / "lab1.lock")
    assert cli.vswitchd_main(["--config", str(config), "--standby"]) == 2
    assert ran == [] and "not the node it stood by for" in caplog.text


def test_a_standby_does_not_take_over_a_file_that_does_not_validate(taking_over, caplog,
                                                                    capsys) -> None:
    config, lock, ran = taking_over
    config.write_text(config.read_text().replace('pod_cidr = "10.244.1.0/24"', "mtu = 12"))
    assert cli.vswitchd_main(["--config", str(config), "--standby"]) == 2
    assert ran == [] and "does not validate; not taking the node over" in caplog.text
    assert "config error" in capsys.readouterr().err

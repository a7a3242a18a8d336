"""systemd's watchdog: the decision on a fake clock, the environment systemd hands over, the
pinging task on a real loop, and a whole in-process daemon whose packet path stalls."""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Sequence

import pytest
import trio

from vswitch.core.transmit import Transmit
from vswitch.runtime import sdnotify
from vswitch.runtime.watchdog import ProgressJudge, Verdict, ping_while_progressing, run_watchdog

from .daemon.support import Harness, RecordingSwitch, make_topology, udp_frame

# -- the decision ---------------------------------------------------------------------------------


def test_an_idle_loop_pings():
    judge = ProgressJudge(max_step=5.0)
    assert judge.verdict(100.0) == Verdict(True)
    assert judge.verdict(105.0) == Verdict(True)


def test_short_steps_ping():
    judge = ProgressJudge(max_step=5.0)
    now = 0.0
    for _ in range(1000):
        judge.step_started(now)
        now += 0.004
        judge.step_finished("port a", now)
        now += 0.001
    assert judge.verdict(now) == Verdict(True)


def test_a_long_step_withholds_one_ping_and_names_the_task():
    judge = ProgressJudge(max_step=5.0)
    judge.step_started(10.0)
    judge.step_finished("port a", 10.1)
    judge.step_started(11.0)
    judge.step_finished("TapPort.run web", 17.5)
    verdict = judge.verdict(17.6)
    assert verdict.ping is False
    assert verdict.reason == ("task TapPort.run web held the event loop for 6.5 s (more than "
                              "5 s): the packet path stalled")
    # The stall has ended: the next period is judged on its own.
    judge.step_started(18.0)
    judge.step_finished("port a", 18.1)
    assert judge.verdict(22.6) == Verdict(True)


def test_the_limit_itself_still_pings():
    judge = ProgressJudge(max_step=5.0)
    judge.step_started(0.0)
    judge.step_finished("timer", 5.0)
    assert judge.verdict(5.0).ping is True


def test_a_step_still_running_counts_with_its_time_so_far():
    judge = ProgressJudge(max_step=5.0)
    judge.step_started(0.0)
    verdict = judge.verdict(6.0)
    assert verdict.ping is False and "a step still running" in verdict.reason
    judge.step_started(6.0)  # the pinger's own step, just begun
    assert judge.verdict(6.001).ping is True


def test_a_step_that_began_before_the_watch_is_ignored():
    judge = ProgressJudge(max_step=5.0)
    judge.step_finished("started earlier", 100.0)
    assert judge.verdict(100.0) == Verdict(True)


# -- what systemd hands over ----------------------------------------------------------------------


@pytest.mark.parametrize("environ, timeout", [
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "10000000"}, 10.0),
    ({"NOTIFY_SOCKET": "@notify", "WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, 0.5),
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "10000000",
      "WATCHDOG_PID": "41"}, None),  # meant for another process (our parent)
    ({"NOTIFY_SOCKET": "/run/systemd/notify"}, None),
    ({"WATCHDOG_USEC": "10000000"}, None),  # nobody to ping
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "0"}, None),
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "ten"}, None),
    ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_timeout_from_the_environment(environ, timeout):
    assert sdnotify.watchdog_timeout(environ, 42) == timeout


async def test_without_a_watchdog_the_task_returns_at_once():
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, logging.getLogger("test"), {})


# -- the pinging task ----------------------------------------------------------------------------


class Pings:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, state: str) -> bool:
        assert state == "WATCHDOG=1"
        self.times.append(time.monotonic())
        return True


def largest_gap(times: Sequence[float]) -> float:
    return max(b - a for a, b in zip(times, times[1:]))


async def test_pings_every_half_timeout_while_the_loop_turns(caplog):
    pings = Pings()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: ping_while_progressing(
            0.4, logging.getLogger("test"), notify=pings, task_status=task_status))
        for _ in range(50):  # busy with short steps
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(pings.times) >= 3
    assert largest_gap(pings.times) < 0.4
    assert "not pinging" not in caplog.text


async def test_a_stalled_loop_misses_the_timeout_then_pings_again(caplog):
    pings = Pings()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: ping_while_progressing(
            0.4, logging.getLogger("test"), notify=pings, task_status=task_status))
        await trio.sleep(0.3)
        stalled_at = time.monotonic()
        time.sleep(0.5)  # this step holds the loop
        await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    before = [t for t in pings.times if t < stalled_at]
    after = [t for t in pings.times if t > stalled_at]
    assert before and len(after) >= 1
    # No ping from the last one before the stall until after systemd's timeout had passed.
    assert after[0] - before[-1] > 0.4
    assert "held the event loop for 0.5 s" in caplog.text
    assert "makes progress again" in caplog.text


# -- a whole daemon -------------------------------------------------------------------------------

WEDGE = b"\x00\x00\x00\x00\x00\x57"  # a destination MAC the stalling switch stalls on


class StallingSwitch(RecordingSwitch):
    """Spends a whole second on a frame for ``WEDGE``, as a core stuck in a loop would."""

    def process_batch(self, port_id: int, frames: Sequence[bytes], now: float) -> list[Transmit]:
        if any(frame.startswith(WEDGE) for frame in frames):
            time.sleep(1.0)
        return super().process_batch(port_id, frames, now)


@pytest.fixture
async def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's, named in the environment the daemon reads."""
    path = str(tmp_path / "notify")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with sock:
        yield sock


async def test_a_daemon_pings_while_forwarding_and_stops_while_its_packet_path_stalls(
        tmp_path, notify_socket, caplog):
    harness = Harness(make_topology(tmp_path), switch_factory=StallingSwitch)
    messages: list[tuple[float, bytes]] = []

    async def collect() -> None:
        while True:
            message = await notify_socket.recv(4096)
            messages.append((time.monotonic(), message))

    def pings() -> list[float]:
        return [at for at, message in messages if message == b"WATCHDOG=1"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await harness.start(nursery)
        a, b = harness.topology.pods
        for _ in range(20):  # pods talk: frames through the switch for a second
            harness.ports.ports["a"].inject(udp_frame(a, b))
            with trio.fail_after(5):
                await harness.ports.ports["b"].receive()
            await trio.sleep(0.05)
        assert len(pings()) >= 3 and largest_gap(pings()) < 0.6
        assert messages[0][1].startswith(b"READY=1")

        stalled_at = time.monotonic()
        harness.ports.ports["a"].inject(WEDGE + udp_frame(a, b)[6:])
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    before = [t for t in pings() if t < stalled_at]
    after = [t for t in pings() if t > stalled_at]
    assert after and after[0] - before[-1] > 0.6  # systemd would have restarted it
    assert "held the event loop for 1.0 s" in caplog.text


def test_the_unit_asks_for_the_watchdog_systemd_notices():
    """WatchdogSec= only works with a notify socket the main process may use."""
    unit = Path(__file__).parents[2] / "systemd" / "vswitchd.service"
    settings = [line.strip() for line in unit.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert "WatchdogSec=10s" in settings
    assert "Type=notify" in settings
    assert not any(line.startswith("NotifyAccess=") for line in settings)  # main: the default
    assert "Restart=on-failure" in settings  # a watchdog timeout is a failure

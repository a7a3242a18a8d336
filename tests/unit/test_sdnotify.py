"""sd_notify messages against a fake ``NOTIFY_SOCKET``: the barrier, and what a daemon that took
over from a dead one tells systemd (its pid, with READY=1), and the status field of its
standby. No systemd is needed: a datagram socket in a temporary directory stands in for it."""
from __future__ import annotations

import os
import socket
import threading

import trio

from vswitch.runtime import sdnotify

from .daemon.support import Harness, ask, make_topology


def bound(path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    return listener


def test_the_barrier_returns_once_systemd_closed_its_fd(tmp_path) -> None:
    with bound(tmp_path / "notify") as listener:
        seen: list[tuple[bytes, int]] = []

        def systemd() -> None:
            data, fds, _, _ = socket.recv_fds(listener, 4096, 4)
            seen.append((data, len(fds)))
            for fd in fds:
                os.close(fd)

        thread = threading.Thread(target=systemd, daemon=True)
        thread.start()
        assert sdnotify.notify_barrier(5.0, {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        thread.join(5)
        assert seen == [(b"BARRIER=1", 1)]


def test_the_barrier_gives_up(tmp_path) -> None:
    with bound(tmp_path / "notify") as listener:
        # Nobody reads: the fd stays open in the socket's queue until the timeout.
        assert not sdnotify.notify_barrier(0.2, {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert listener.recv(100) == b"BARRIER=1"
    assert not sdnotify.notify_barrier(0.2, {})
    # Nobody bound: logged, not raised.
    assert not sdnotify.notify_barrier(0.2, {"NOTIFY_SOCKET": str(tmp_path / "gone")})


class TakenLock:
    """What a standby holds when it takes over: run_daemon hands it to the kernel layer."""


async def test_a_daemon_that_took_over_announces_its_pid(tmp_path, monkeypatch) -> None:
    with bound(tmp_path / "notify") as listener:
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        harness = Harness(make_topology(tmp_path))
        lock = TakenLock()
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, takeover_lock=lock)
            ready = listener.recv(4096).decode()
            assert harness.kernel.lock is lock
            assert ready.startswith(f"MAINPID={os.getpid()}\nREADY=1\n"), ready
            assert "STATUS=node t1, 2 pods" in ready
            nursery.cancel_scope.cancel()


async def test_an_ordinary_start_does_not_name_a_main_pid(tmp_path, monkeypatch) -> None:
    with bound(tmp_path / "notify") as listener:
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        harness = Harness(make_topology(tmp_path))
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            assert listener.recv(4096).decode().startswith("READY=1\n")
            nursery.cancel_scope.cancel()


class StubStandby:
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def status(self) -> dict:
        return {"pid": 4242, "state": "waiting"}


async def test_status_shows_the_standby(tmp_path) -> None:
    harness = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, standby=StubStandby())
        status = await ask(harness.topology.control.socket, "status")
        assert status["result"]["standby"] == {"pid": 4242, "state": "waiting"}
        nursery.cancel_scope.cancel()
    other = Harness(make_topology(tmp_path / "other"))
    async with trio.open_nursery() as nursery:
        await other.start(nursery)
        status = await ask(other.topology.control.socket, "status")
        assert status["result"]["standby"] is None
        nursery.cancel_scope.cancel()

"""The daemon's life: start-up order, port numbering, readiness, signals, shutdown and cleanup."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
from ipaddress import IPv4Address, IPv4Interface

import pytest
import trio

from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.model import Topology, Uplink, mac_for_ip
from vswitch.runtime import sdnotify
from vswitch.runtime.memory_port import NullKernel
from vswitch.runtime.control import ControlSocketBusy
from vswitch.runtime.daemon import run_daemon

from .support import Harness, ask, make_topology


async def test_start_up_order_and_port_specs(tmp_path):
    harness = Harness(make_topology(tmp_path, offloads=True, containers=True))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert harness.kernel.calls == ["open", "remove_leftovers", "create_host_port",
                                        "create_pod a", "create_pod b"]
        # Containers are running and the socket answers by the time the daemon says it is ready.
        assert harness.supervisor.running == {"a", "b"}
        assert os.path.exists(harness.topology.control.socket)
        specs = harness.switch.ports
        assert [(s.id, s.name, s.kind) for s in specs.values()] == [
            (1, "host", PortKind.HOST), (2, "a", PortKind.POD), (3, "b", PortKind.POD)]
        a = harness.topology.pods[0]
        assert specs[2] == PortSpec(id=2, name="a", kind=PortKind.POD, mac=a.mac, ip=a.ip,
                                    vnet_hdr=True, mtu=1500, device="vt-a")
        assert specs[1].ip == IPv4Address("10.244.1.254")
        nursery.cancel_scope.cancel()


async def test_without_host_port_pods_are_numbered_from_one(tmp_path):
    harness = Harness(make_topology(tmp_path, host_port=False))
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        assert context.port_ids == {"a": 1, "b": 2}
        assert "create_host_port" not in harness.kernel.calls
        nursery.cancel_scope.cancel()


def with_uplink(topology: Topology) -> Topology:
    uplink = Uplink(address=IPv4Interface("192.0.2.2/24"), gateway=IPv4Address("192.0.2.1"),
                    netns="lab-net", name="vsu-t1", mac=mac_for_ip(IPv4Address("192.0.2.2")),
                    far_mac=mac_for_ip(IPv4Address("192.0.2.1")), mtu=1400)
    return dataclasses.replace(topology, uplink=uplink)


async def test_the_uplink_is_a_port_after_the_host_port(tmp_path):
    harness = Harness(with_uplink(make_topology(tmp_path, offloads=True)))
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        assert harness.kernel.calls[:5] == ["open", "remove_leftovers", "create_host_port",
                                            "create_uplink", "create_pod a"]
        assert context.port_ids == {"host": 1, "uplink": 2, "a": 3, "b": 4}
        assert harness.switch.ports[2] == PortSpec(
            id=2, name="uplink", kind=PortKind.UPLINK, mac="0a:58:c0:00:02:01",
            ip=IPv4Address("192.0.2.1"), vnet_hdr=True, mtu=1400, device="vsu-t1",
            port_security=False, segment=1)
        status = await ask(harness.topology.control.socket, "status")
        assert status["result"]["uplink"] == "192.0.2.2/24"
        nursery.cancel_scope.cancel()


async def test_cancelling_the_daemon_cleans_up(tmp_path):
    harness = Harness(make_topology(tmp_path, containers=True))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert os.path.exists(path)
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)
    assert harness.kernel.calls[-2:] == ["teardown", "close"]
    assert harness.supervisor.running == set()
    # Closed ports refuse further writes instead of buffering for nobody.
    assert harness.ports.ports["b"].write(b"late") is False


async def test_sigint_stops_the_daemon_and_removes_everything(tmp_path, log_watch):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            os.kill(os.getpid(), signal.SIGHUP)  # acknowledged, not fatal
            # There is no file to reload from: the reload fails, and the daemon goes on.
            await log_watch.wait_for("reload failed")
            assert (await ask(path, "status"))["ok"]
            os.kill(os.getpid(), signal.SIGINT)
        # The nursery ended on its own: the daemon returned after SIGINT.
    assert not os.path.exists(path)
    assert harness.kernel.calls[-2:] == ["teardown", "close"]


class KeepingKernel(NullKernel):
    """A kernel that also records being asked to keep its objects, as the real one can."""

    def keep(self) -> None:
        self.calls.append("keep")


async def test_sigterm_stops_the_daemon_and_keeps_the_pods(tmp_path, log_watch):
    harness = Harness(make_topology(tmp_path, containers=True))
    harness.kernel = KeepingKernel()
    path = harness.topology.control.socket
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            assert (await ask(path, "status"))["ok"]
            os.kill(os.getpid(), signal.SIGTERM)
        # The nursery ended on its own: the daemon returned after SIGTERM.
    assert not os.path.exists(path)
    # Kept for the next start: the kernel is told so and never torn down.
    assert harness.kernel.calls[-2:] == ["keep", "close"]
    assert "teardown" not in harness.kernel.calls
    await log_watch.wait_for("the pods and their containers stay for the next start")


async def test_second_daemon_on_the_same_socket_is_refused(tmp_path):
    first = Harness(make_topology(tmp_path))
    second = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        await first.start(nursery)
        with pytest.raises(ControlSocketBusy, match="another vswitchd answers"):
            await run_daemon(second.topology, **second.kwargs(handle_signals=False))
        # The refused daemon created nothing, and left the first one's socket alone.
        assert second.kernel.calls == []
        assert (await ask(first.topology.control.socket, "status"))["ok"]
        nursery.cancel_scope.cancel()


async def test_stale_socket_is_replaced(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    os.makedirs(os.path.dirname(path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # bound, never listening: what a killed daemon leaves
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert (await ask(path, "status"))["ok"]
        nursery.cancel_scope.cancel()


async def test_systemd_is_told_ready_then_stopping(tmp_path, monkeypatch):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    harness = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\n") and "STATUS=node t1, 2 pods" in ready
        nursery.cancel_scope.cancel()
    assert listener.recv(4096) == b"STOPPING=1"
    listener.close()


def test_sdnotify_abstract_address_and_absence():
    name = f"vswitch-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(100) == b"READY=1"
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:9"}) is False
    # Nobody listening: logged, not raised.
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is False

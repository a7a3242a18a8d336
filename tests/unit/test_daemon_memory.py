"""The whole daemon, run in-process with memory ports: start-up order, forwarding, control, shutdown.

The switch here is a small stand-in that forwards by destination MAC, so that these tests exercise
the shell (ordering, port tasks, timer, drops, signals, cleanup) and not the pipeline; the pipeline
has its own tests. One test at the end runs the real core when it is available.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
import trio
import trio.testing

from vswitch import accel
from vswitch.core import switch as switch_module
from vswitch.core.actions import Transmit
from vswitch.core.ports import PortKind, PortSpec
from vswitch.model import (Container, Control, Dataplane, HostPort, Node, Pod, Segment,
                           StaticRoute, Topology, mac_for_ip)
from vswitch.runtime import sdnotify
from vswitch.runtime.control import ControlSocketBusy
from vswitch.runtime.daemon import run_daemon
from vswitch.runtime.memory_port import MemoryPortFactory, NullKernel, NullSupervisor

POISON = b"\xde\xad"  # a frame the fake core raises on


def make_topology(run_dir: Path, *, host_port: bool = True, offloads: bool = False,
                  containers: bool = False) -> Topology:
    def pod(name: str, last: int) -> Pod:
        ip = IPv4Address(f"10.244.1.{last}")
        return Pod(name=name, ip=ip, mac=mac_for_ip(ip), netns=f"vsw-t1-{name}", tap=f"vt-{name}",
                   containers=(Container(name="main", command=("sleep", "inf")),) if containers
                   else ())

    return Topology(
        source=str(run_dir / "t1.toml"),
        node=Node(name="t1", pod_cidr=IPv4Network("10.244.1.0/24"),
                  gateway=IPv4Address("10.244.1.1"), gateway_mac="0a:58:0a:f4:01:01"),
        pods=(pod("a", 10), pod("b", 11)),
        host_port=HostPort(enabled=host_port, name="vsw-host", mac="0a:58:0a:f4:01:fe",
                           address=IPv4Interface("10.244.1.254/24")),
        dataplane=Dataplane(offloads=offloads, burst=8, accel="pure"),
        control=Control(socket=str(run_dir / "ctl" / "t1.sock"), state_dir=str(run_dir)),
    )


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def udp_frame(src: Pod, dst: Pod, payload: bytes = b"hello") -> bytes:
    """Ethernet + IPv4 + UDP, by hand, checksums left zero (allowed for UDP over IPv4)."""
    udp = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     src.ip.packed, dst.ip.packed)
    return mac_bytes(dst.mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + udp


class FakeSwitch:
    """Forwards each frame to the port that owns its destination MAC; floods broadcast."""

    accel_name = "pure"

    def __init__(self, topology: Topology) -> None:
        self.specs: dict[int, PortSpec] = {}
        self.rx: dict[int, int] = {}
        self.tx_drops: list[tuple[int, str]] = []
        self.timer_frames: list[Transmit] = []
        self.timer_calls = 0
        self.deadline = float("inf")

    def add_port(self, spec: PortSpec) -> None:
        self.specs[spec.id] = spec
        self.rx[spec.id] = 0

    def remove_port(self, port_id: int) -> None:
        del self.specs[port_id]

    def process_batch(self, port_id: int, frames: list[bytes], now: float) -> list[Transmit]:
        out = []
        for frame in frames:
            self.rx[port_id] += 1
            if frame.startswith(POISON):
                raise RuntimeError("poisoned frame")
            if frame.startswith(b"\xff" * 6):
                out += [Transmit(p, frame) for p in self.specs if p != port_id]
            elif frame.startswith(b"\x00\x00\x00\x00\x00\x63"):
                out.append(Transmit(99, frame))  # a port that does not exist
            else:
                out += [Transmit(p, frame) for p, s in self.specs.items()
                        if mac_bytes(s.mac) == frame[:6]]
        return out

    def handle_timer(self, now: float) -> list[Transmit]:
        self.timer_calls += 1
        frames, self.timer_frames = self.timer_frames, []
        self.deadline = float("inf")
        return frames

    def next_deadline(self) -> float:
        return self.deadline

    def note_tx_drop(self, port_id: int, reason: str) -> None:
        self.tx_drops.append((port_id, reason))

    def statistics(self) -> dict:
        return {"ports": {s.name: {"rx_packets": self.rx[i]} for i, s in self.specs.items()},
                "stages": {}, "dispositions": {}}

    def ports_info(self) -> list[dict]:
        return [{"id": i, "name": s.name, "kind": s.kind.value} for i, s in self.specs.items()]

    def fdb_info(self, now: float) -> list[dict]:
        return []

    def routes_info(self) -> list[dict]:
        return [{"prefix": "10.244.1.0/24", "kind": "connected", "segment": "default",
                 "via": None, "origin": "node.pod_cidr"}]

    def neighbors_info(self, now: float) -> list[dict]:
        return [{"segment": "default", "ip": "10.244.1.10", "mac": "0a:58:0a:f4:01:0a",
                 "state": "reachable", "age_s": 0.0, "queued": 0}]

    # The core's service interface, recorded rather than implemented.

    programmed: list

    def program(self, pods, services, now: float) -> dict:
        self.__dict__.setdefault("programmed", []).append((tuple(pods), tuple(services)))
        return {"generation": len(self.programmed), "changed": True}

    def services_info(self) -> list[dict]:
        return [{"name": "web", "namespace": "default"}]


class Harness:
    def __init__(self, topology: Topology, *, switch_factory=FakeSwitch, capacity: int = 64):
        self.topology = topology
        self.kernel = NullKernel()
        self.supervisor = NullSupervisor()
        self.ports = MemoryPortFactory(capacity)
        self.switch = None
        self._switch_factory = switch_factory

    def make_switch(self, topology: Topology):
        self.switch = self._switch_factory(topology)
        return self.switch

    def kwargs(self, **extra) -> dict:
        return dict(kernel_factory=self.kernel.open, port_factory=self.ports,
                    switch_factory=self.make_switch, supervisor_factory=lambda t: self.supervisor,
                    netns_path=lambda name: f"/run/netns/{name}", **extra)

    async def start(self, nursery: trio.Nursery, **extra):
        return await nursery.start(lambda task_status: run_daemon(
            self.topology, task_status=task_status, **self.kwargs(**extra)))


async def ask(path: str, cmd: str, args: dict | None = None) -> dict:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, "daemon closed the connection"
            data += chunk
    return json.loads(data)


async def test_frame_crosses_from_one_pod_to_the_other(tmp_path):
    harness = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        assert context.port_ids == {"host": 1, "a": 2, "b": 3}
        a, b = harness.topology.pods
        frame = udp_frame(a, b)
        assert harness.ports.ports["a"].inject(frame)
        with trio.fail_after(5):
            assert await harness.ports.ports["b"].receive() == frame
        await trio.testing.wait_all_tasks_blocked()
        assert harness.ports.ports["a"].received_nowait() == []
        assert harness.ports.ports["host"].received_nowait() == []
        nursery.cancel_scope.cancel()


async def test_start_up_order_and_port_specs(tmp_path):
    harness = Harness(make_topology(tmp_path, offloads=True, containers=True))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert harness.kernel.calls == ["open", "remove_leftovers", "create_host_port",
                                        "create_pod a", "create_pod b"]
        # Containers are running and the socket answers by the time the daemon says it is ready.
        assert harness.supervisor.running == {"a", "b"}
        assert os.path.exists(harness.topology.control.socket)
        specs = harness.switch.specs
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


async def test_control_socket_answers_status_pods_and_stats(tmp_path):
    harness = Harness(make_topology(tmp_path, containers=True))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, config_path="/etc/vswitch/t1.toml")
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o755

        status = await ask(path, "status")
        assert status["ok"], status
        result = status["result"]
        assert result["node"] == "t1"
        assert result["pid"] == os.getpid()
        assert result["config"] == "/etc/vswitch/t1.toml"
        assert (result["pods"], result["ports"], result["accel"]) == (2, 3, "pure")
        assert result["offloads"] is False
        assert result["uptime_s"] >= 0

        pods = await ask(path, "pods")
        assert [p["name"] for p in pods["result"]] == ["a", "b"]
        first = pods["result"][0]
        assert first["ip"] == "10.244.1.10" and first["mac"] == "0a:58:0a:f4:01:0a"
        assert first["netns_path"] == "/run/netns/vsw-t1-a"
        assert first["port"] == 2 and first["device"] == "vt-a"
        assert first["containers"][0]["state"] == "running"

        a, b = harness.topology.pods
        harness.ports.ports["a"].inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        stats = await ask(path, "stats")
        assert stats["result"]["ports"]["a"]["rx_packets"] == 1

        netns = await ask(path, "netns", {"pod": "b"})
        assert netns["result"]["netns_path"] == "/run/netns/vsw-t1-b"
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


async def test_sigterm_stops_the_daemon_cleanly(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            os.kill(os.getpid(), signal.SIGHUP)  # acknowledged, not fatal
            await trio.sleep(0.05)
            assert (await ask(path, "status"))["ok"]
            os.kill(os.getpid(), signal.SIGTERM)
        # The nursery ended on its own: the daemon returned after SIGTERM.
    assert not os.path.exists(path)
    assert harness.kernel.calls[-2:] == ["teardown", "close"]


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


async def test_core_exception_costs_one_batch_not_the_daemon(tmp_path, caplog):
    harness = Harness(make_topology(tmp_path))
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        port_a = harness.ports.ports["a"]
        port_a.inject(POISON + b"x" * 20)
        await trio.testing.wait_all_tasks_blocked()
        port_a.inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        status = await ask(harness.topology.control.socket, "status")
        assert status["result"]["runtime_errors"]["core"] == 1
        nursery.cancel_scope.cancel()
    assert "poisoned frame" in caplog.text


async def test_full_destination_and_unknown_port_are_counted_drops(tmp_path):
    harness = Harness(make_topology(tmp_path), capacity=2)
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        for _ in range(3):
            harness.ports.ports["a"].inject(udp_frame(a, b))
            await trio.testing.wait_all_tasks_blocked()
        to_nowhere = b"\x00\x00\x00\x00\x00\x63" + udp_frame(a, b)[6:]
        harness.ports.ports["a"].inject(to_nowhere)
        await trio.testing.wait_all_tasks_blocked()
        assert harness.switch.tx_drops == [(3, "tx-busy"), (99, "port-gone")]
        assert len(harness.ports.ports["b"].received_nowait()) == 2
        nursery.cancel_scope.cancel()


async def test_timer_delivers_what_the_core_schedules(tmp_path):
    harness = Harness(make_topology(tmp_path))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        switch = harness.switch
        switch.timer_frames = [Transmit(2, b"from-timer")]
        switch.deadline = 0.0  # due now; the timer picks it up within its maximum sleep
        with trio.fail_after(5):
            assert await harness.ports.ports["a"].receive() == b"from-timer"
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


async def test_real_core_forwards_between_pods(tmp_path):
    def real_switch(topology):
        return switch_module.Switch(topology, accel=accel.load("pure"))

    harness = Harness(make_topology(tmp_path), switch_factory=real_switch)
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        frame = udp_frame(a, b)
        harness.ports.ports["a"].inject(frame)
        with trio.fail_after(5):
            received = await harness.ports.ports["b"].receive()
        assert received[:6] == mac_bytes(b.mac)
        assert received[30:34] == b.ip.packed
        status = await ask(harness.topology.control.socket, "stats")
        assert status["ok"], status
        nursery.cancel_scope.cancel()


class SocketPairPorts:
    """Runs the production TapPort on one end of a SOCK_SEQPACKET pair, which keeps frame
    boundaries and reports a full buffer with EAGAIN, as a TAP does; the test holds the other end."""

    def __init__(self) -> None:
        self.peers: dict[str, socket.socket] = {}
        self.fds: list[int] = []

    def __call__(self, spec, handle, dataplane):
        from vswitch.runtime.ports import TapPort

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setblocking(False)
        self.peers[spec.name] = theirs
        fd = ours.detach()
        self.fds.append(fd)
        return TapPort(spec, fd, dataplane.burst)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()


async def test_tap_ports_forward_count_busy_writes_and_close_their_fds(tmp_path):
    harness = Harness(make_topology(tmp_path, host_port=False))
    harness.ports = SocketPairPorts()
    a, b = harness.topology.pods
    frame = udp_frame(a, b, b"x" * 200)
    try:
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            pod_a, pod_b = harness.ports.peers["a"], harness.ports.peers["b"]
            pod_a.send(frame)
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(pod_b)
            assert pod_b.recv(65536) == frame
            # Pod b stops reading: once its buffer is full, writes to it are counted drops and
            # the daemon keeps going.
            for _ in range(200):
                pod_a.send(frame)
                await trio.testing.wait_all_tasks_blocked()
                if harness.switch.tx_drops:
                    break
            assert harness.switch.tx_drops and set(harness.switch.tx_drops) == {(2, "tx-busy")}
            nursery.cancel_scope.cancel()
        for fd in harness.ports.fds:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        harness.ports.close()


async def test_tap_port_at_end_of_file_backs_off_instead_of_spinning(tmp_path, caplog):
    harness = Harness(make_topology(tmp_path, host_port=False))
    harness.ports = SocketPairPorts()
    try:
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            harness.ports.peers["a"].close()  # pod a's end is gone: its fd reads EOF forever
            await trio.sleep(0.3)
            status = await ask(harness.topology.control.socket, "status")
            # One report per backoff interval, not one per wake-up.
            assert 1 <= status["result"]["runtime_errors"]["read"] <= 3
            nursery.cancel_scope.cancel()
    finally:
        harness.ports.close()
    assert "yields no frames" in caplog.text


def make_routed_topology(run_dir: Path, *, host_port: bool = True) -> Topology:
    """Pod a on the default segment, pod b on blue (MTU 1400), pod c on blue with its own MTU."""
    base = make_topology(run_dir, host_port=host_port)

    def pod(name: str, ip: str, mtu: int | None = None) -> Pod:
        address = IPv4Address(ip)
        return Pod(name=name, ip=address, mac=mac_for_ip(address), netns=f"vsw-t1-{name}",
                   tap=f"vt-{name}", segment="blue", mtu=mtu)

    segments = (
        Segment("default", base.node.pod_cidr, base.node.gateway, base.node.gateway_mac, 1500),
        Segment("blue", IPv4Network("10.245.1.0/24"), IPv4Address("10.245.1.1"),
                "0a:58:0a:f5:01:01", 1400),
    )
    routes = (
        StaticRoute(IPv4Network("192.0.2.0/24"), IPv4Address("10.245.1.20"), "blue"),
        StaticRoute(IPv4Network("0.0.0.0/0"), IPv4Address("10.244.1.30"), "default"),
    )
    return Topology(source=base.source, node=base.node,
                    pods=(base.pods[0], pod("b", "10.245.1.10"), pod("c", "10.245.1.11", 1280)),
                    host_port=base.host_port, dataplane=base.dataplane, control=base.control,
                    segments=segments, routes=routes)


class RoutingKernel(NullKernel):
    """Records host routes the way Kernel.add_host_route would install them."""

    def __init__(self) -> None:
        super().__init__()
        self.host_routes: list[tuple[IPv4Network, IPv4Address | None]] = []

    async def add_host_route(self, dst: IPv4Network, via: IPv4Address | None) -> None:
        self.calls.append(f"add_host_route {dst}")
        self.host_routes.append((dst, via))


async def test_ports_carry_their_segment_and_mtu_and_the_host_routes_other_segments(tmp_path):
    harness = Harness(make_routed_topology(tmp_path))
    harness.kernel = RoutingKernel()
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        specs = harness.switch.specs
        assert [(s.name, s.segment, s.mtu) for s in specs.values()] == [
            ("host", 0, 1500), ("a", 0, 1500), ("b", 1, 1400), ("c", 1, 1280)]
        # The other segment and the static route go into the host port via the default gateway,
        # after the host port exists; the static default route is left to the host.
        assert harness.kernel.host_routes == [
            (IPv4Network("10.245.1.0/24"), IPv4Address("10.244.1.1")),
            (IPv4Network("192.0.2.0/24"), IPv4Address("10.244.1.1")),
        ]
        calls = harness.kernel.calls
        assert calls.index("create_host_port") < calls.index("add_host_route 10.245.1.0/24")

        path = harness.topology.control.socket
        pods = (await ask(path, "pods"))["result"]
        assert [(p["name"], p["segment"], p["mtu"]) for p in pods] == [
            ("a", "default", 1500), ("b", "blue", 1400), ("c", "blue", 1280)]
        routes = await ask(path, "routes")
        assert routes["ok"] and routes["result"][0]["kind"] == "connected"
        neighbors = await ask(path, "neighbors")
        assert neighbors["ok"] and neighbors["result"][0]["state"] == "reachable"
        nursery.cancel_scope.cancel()
    assert harness.kernel.calls[-2:] == ["teardown", "close"]


async def test_without_host_port_no_host_routes_are_added(tmp_path):
    harness = Harness(make_routed_topology(tmp_path, host_port=False))
    harness.kernel = RoutingKernel()
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert harness.kernel.host_routes == []
        nursery.cancel_scope.cancel()


async def test_real_core_routes_between_segments(tmp_path):
    """With the real core, a frame from pod a to pod b (on another segment) is routed: it leaves
    towards b with the blue gateway's MAC as source and the TTL lowered by one."""

    topology = make_routed_topology(tmp_path, host_port=False)
    harness = Harness(topology, switch_factory=lambda t: switch_module.Switch(
        t, accel=accel.load("pure")))
    harness.kernel = RoutingKernel()
    a, b = topology.pods[0], topology.pods[1]
    gateway_a = mac_bytes(topology.node.gateway_mac)
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        # a sends to its gateway, as its kernel would, with the header checksum a router checks.
        frame = bytearray(gateway_a + udp_frame(a, b)[6:])
        frame[24:26] = accel.load("pure").checksum(bytes(frame[14:34])).to_bytes(2, "big")
        frame = bytes(frame)
        harness.ports.ports["a"].inject(frame)
        with trio.fail_after(5):
            received = await _first_ipv4(harness.ports.ports["b"])
        assert received[6:12] == mac_bytes("0a:58:0a:f5:01:01")
        assert received[22] == 63
        routes = await ask(topology.control.socket, "routes")
        prefixes = {row["prefix"]: row for row in routes["result"]}
        assert prefixes["10.245.1.0/24"]["kind"] == "connected"
        assert prefixes["192.0.2.0/24"]["kind"] == "static"
        nursery.cancel_scope.cancel()


async def _first_ipv4(port) -> bytes:
    """The first IPv4 frame a port is sent; the router may ARP for the destination first, and
    the test answers that request for pod b, as b's kernel would."""
    while True:
        frame = await port.receive()
        if frame[12:14] == b"\x08\x00":
            return frame
        if frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01":
            spec_mac, spec_ip = mac_bytes(port.spec.mac), port.spec.ip.packed
            if frame[38:42] == spec_ip:
                reply = (frame[6:12] + spec_mac + b"\x08\x06" + frame[14:20] + b"\x00\x02"
                         + spec_mac + spec_ip + frame[22:28] + frame[28:32])
                port.inject(reply)


# -- runtime changes -----------------------------------------------------------------------------


def programmed(harness) -> list:
    return harness.switch.__dict__.get("programmed", [])


async def test_pod_add_creates_the_pod_and_programs_the_core(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "pod_add", {"pod": {
            "name": "c", "labels": {"app": "web"},
            "containers": [{"name": "main", "command": ["sleep", "inf"]}]}})
        assert answer["ok"], answer
        row = answer["result"]["pod"]
        # .10 and .11 are taken by a and b.
        assert (row["name"], row["ip"], row["port"]) == ("c", "10.244.1.12", 4)
        assert harness.kernel.calls[-1] == "create_pod c"
        spec = harness.switch.specs[4]
        assert (spec.name, spec.kind, spec.ip) == ("c", PortKind.POD, IPv4Address("10.244.1.12"))
        assert "c" in harness.supervisor.running
        pods, services = programmed(harness)[-1]
        assert [p.name for p in pods] == ["a", "b", "c"] and services == ()
        listed = await ask(path, "pods")
        assert [p["name"] for p in listed["result"]] == ["a", "b", "c"]
        # The new port forwards like the others.
        a = harness.topology.pods[0]
        c = Pod(name="c", ip=IPv4Address("10.244.1.12"), mac=mac_for_ip(IPv4Address("10.244.1.12")),
                netns="", tap="")
        harness.ports.ports["a"].inject(udp_frame(a, c))
        with trio.fail_after(5):
            assert (await harness.ports.ports["c"].receive())[:6] == mac_bytes(c.mac)
        nursery.cancel_scope.cancel()


async def test_a_bad_pod_changes_nothing_and_names_the_key(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        calls = list(harness.kernel.calls)
        for pod, message in [
            ({"name": "c", "ip": "10.244.1.10"}, "pod add: pod.ip: 10.244.1.10 is the address of pod a"),
            ({"name": "a"}, "pod add: pod.name: pod 'a' already exists"),
            ({"name": "c", "labels": {"-": "x"}}, "pod add: pod.labels.-: label key '-' is invalid"),
        ]:
            answer = await ask(path, "pod_add", {"pod": pod})
            assert answer["ok"] is False and answer["error"].startswith(message), answer
        assert harness.kernel.calls == calls
        assert programmed(harness) == []
        assert len(harness.switch.specs) == 3
        nursery.cancel_scope.cancel()


async def test_pod_del_stops_it_and_removes_everything(tmp_path):
    harness = Harness(make_topology(tmp_path, containers=True))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        answer = await ask(path, "pod_del", {"name": "a"})
        assert answer["ok"], answer
        assert harness.kernel.calls[-1] == "delete_pod a"
        assert harness.supervisor.running == {"b"} and harness.supervisor.forgotten == ["a"]
        assert 2 not in harness.switch.specs and context.port_ids == {"host": 1, "b": 3}
        assert [p.name for p in programmed(harness)[-1][0]] == ["b"]
        # The removed port's reader is gone: a frame offered to it is not processed.
        assert harness.ports.ports["a"].write(b"x") is False
        missing = await ask(path, "pod_del", {"name": "a"})
        assert missing["error"] == "no pod named 'a'; pods: b"
        # A pod added afterwards gets a fresh port id, never a reused one.
        added = await ask(path, "pod_add", {"pod": {"name": "a"}})
        assert added["result"]["pod"]["port"] == 4
        nursery.cancel_scope.cancel()


async def test_pod_ready_and_unready_flip_the_flag_and_reprogram(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "pod_ready", {"name": "b", "ready": False})
        assert answer["result"]["ready"] is False
        assert [p.ready for p in programmed(harness)[-1][0]] == [True, False]
        pods = (await ask(path, "pods"))["result"]
        assert [p["ready"] for p in pods] == [True, False]
        await ask(path, "pod_ready", {"name": "b", "ready": True})
        assert [p.ready for p in programmed(harness)[-1][0]] == [True, True]
        bad = await ask(path, "pod_ready", {"name": "b", "ready": "no"})
        assert "'ready' must be true or false" in bad["error"]
        nursery.cancel_scope.cancel()


WEB = """
[[services]]
name = "web"
selector = { app = "web" }
ports = [ { port = 80, target_port = 8080 } ]
"""


async def test_service_add_set_del(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        added = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert added["ok"], added
        assert added["result"]["added"][0]["cluster_ip"] == "10.96.0.10"
        (web,) = programmed(harness)[-1][1]
        assert web.key == "default/web" and dict(web.selector) == {"app": "web"}

        again = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert again["error"].startswith("web.toml: services[0].name: service default/web already exists")

        changed = await ask(path, "service_set", {"name": "web", "settings": {
            "session_affinity": "ClientIP", "affinity_timeout": "30"}})
        assert changed["ok"], changed
        (web,) = programmed(harness)[-1][1]
        assert (web.session_affinity, web.affinity_timeout) == ("ClientIP", 30)
        assert web.cluster_ip == IPv4Address("10.96.0.10")

        count = len(programmed(harness))
        bad = await ask(path, "service_set", {"name": "default/web", "settings": {
            "session_affinity": "None", "affinity_timeout": "0"}})
        assert bad["error"].startswith("service set: service.affinity_timeout: must be between 1")
        assert len(programmed(harness)) == count  # nothing changed, not even the valid half

        removed = await ask(path, "service_del", {"name": "default/web"})
        assert removed["result"]["removed"] == "default/web"
        assert programmed(harness)[-1][1] == ()
        gone = await ask(path, "service_del", {"name": "web"})
        assert gone["error"] == "no service 'web'; services: none"
        nursery.cancel_scope.cancel()


async def test_apply_adds_replaces_keeps_and_is_all_or_nothing(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        fragment = ('[[pods]]\nname = "a"\nip = "10.244.1.10"\nlabels = { app = "web" }\n'
                    '[[pods]]\nname = "b"\nip = "10.244.1.11"\n'
                    '[[pods]]\nname = "c"\n' + WEB)
        first = (await ask(path, "apply", {"toml": fragment, "source": "f.toml"}))["result"]
        # a and b were built by hand with other TAP names than the loader derives, so they are
        # replaced by the loader's version; c is new.
        assert first["pods"] == {"added": ["c"], "replaced": ["a", "b"], "unchanged": []}
        assert first["services"]["added"] == ["default/web"]
        calls = list(harness.kernel.calls)
        count = len(programmed(harness))
        worse = WEB.replace("port = 80", "port = 99999") + '[[pods]]\nname = "e"\n'
        refused = await ask(path, "apply", {"toml": worse, "source": "worse.toml"})
        assert refused["error"].startswith("worse.toml: services[0].ports[0].port: must be between")
        assert harness.kernel.calls == calls and len(programmed(harness)) == count

        result = (await ask(path, "apply", {"toml": fragment, "source": "f.toml"}))["result"]
        assert result["pods"] == {"added": [], "replaced": [], "unchanged": ["a", "b", "c"]}
        assert result["services"]["unchanged"] == ["default/web"]
        relabel = fragment.replace('labels = { app = "web" }', 'labels = { app = "db" }')
        result = (await ask(path, "apply", {"toml": relabel, "source": "f.toml"}))["result"]
        assert result["pods"]["replaced"] == ["a"]
        assert harness.kernel.calls[-2:] == ["delete_pod a", "create_pod a"]
        pods = {p.name: p for p in programmed(harness)[-1][0]}
        assert dict(pods["a"].labels) == {"app": "db"} and pods["a"].ip == IPv4Address("10.244.1.10")
        nursery.cancel_scope.cancel()


async def test_read_only_service_commands_reach_the_core(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        assert (await ask(path, "services"))["result"] == [{"name": "web", "namespace": "default"}]
        nursery.cancel_scope.cancel()


def with_uplink(topology: Topology) -> Topology:
    from vswitch.model import Uplink

    uplink = Uplink(address=IPv4Interface("192.0.2.2/24"), gateway=IPv4Address("192.0.2.1"),
                    netns="lab-net", name="vsu-t1", mac=mac_for_ip(IPv4Address("192.0.2.2")),
                    far_mac=mac_for_ip(IPv4Address("192.0.2.1")), mtu=1400)
    import dataclasses

    return dataclasses.replace(topology, uplink=uplink)


async def test_the_uplink_is_a_port_after_the_host_port(tmp_path):
    harness = Harness(with_uplink(make_topology(tmp_path, offloads=True)))
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        assert harness.kernel.calls[:5] == ["open", "remove_leftovers", "create_host_port",
                                            "create_uplink", "create_pod a"]
        assert context.port_ids == {"host": 1, "uplink": 2, "a": 3, "b": 4}
        assert harness.switch.specs[2] == PortSpec(
            id=2, name="uplink", kind=PortKind.UPLINK, mac="0a:58:c0:00:02:01",
            ip=IPv4Address("192.0.2.1"), vnet_hdr=True, mtu=1400, device="vsu-t1",
            port_security=False, segment=1)
        status = await ask(harness.topology.control.socket, "status")
        assert status["result"]["uplink"] == "192.0.2.2/24"
        nursery.cancel_scope.cancel()


async def test_real_core_programs_services_at_runtime(tmp_path):
    harness = Harness(make_topology(tmp_path),
                      switch_factory=lambda t: switch_module.Switch(t, accel=accel.load("pure")))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        await ask(path, "pod_add", {"pod": {"name": "w", "labels": {"app": "web"}}})
        added = await ask(path, "service_add", {"toml": WEB, "source": "web.toml"})
        assert added["ok"], added
        services = (await ask(path, "services"))["result"]
        assert [(s["name"], s["cluster_ip"], s["endpoints"]) for s in services] == [
            ("web", "10.96.0.10", 1)]
        endpoints = (await ask(path, "endpoints"))["result"]
        assert [e["pod"] for e in endpoints] == ["w"]
        await ask(path, "pod_ready", {"name": "w", "ready": False})
        assert (await ask(path, "endpoints"))["result"] == []
        assert (await ask(path, "conntrack", {"filters": {"proto": "tcp"}}))["result"] == []
        assert (await ask(path, "conntrack_flush", {}))["result"] == {"flushed": 0}
        bad = await ask(path, "conntrack", {"filters": {"colour": "red"}})
        assert "unknown conntrack filter colour" in bad["error"]
        assert (await ask(path, "affinity"))["result"] == []
        nursery.cancel_scope.cancel()


# -- reload (SIGHUP, vswitchctl reload) ----------------------------------------------------------


def node_file(run_dir: Path, body: str, *, mtu: int = 1500, burst: int = 8) -> Path:
    """Write the node's configuration file: a fixed node section, then ``body`` (pods and
    services); returns its path. Rewriting it is how the tests change the desired state."""
    path = run_dir / "t1.toml"
    path.write_text(f"""
[node]
name = "t1"
pod_cidr = "10.244.1.0/24"
mtu = {mtu}

[dataplane]
offloads = false
burst = {burst}
accel = "pure"

[control]
socket = "{run_dir / 'ctl' / 't1.sock'}"
state_dir = "{run_dir}"
""" + body)
    return path


def pod_toml(name: str, ip: str, *, labels: str = "", ready: bool = True,
             containers: bool = False) -> str:
    text = f'\n[[pods]]\nname = "{name}"\nip = "{ip}"\n'
    if labels:
        text += f"labels = {{ {labels} }}\n"
    if not ready:
        text += "ready = false\n"
    if containers:
        text += 'containers = [ { name = "main", command = ["sleep", "inf"] } ]\n'
    return text


def service_toml(name: str, selector: str, *, affinity: str = "None") -> str:
    return (f'\n[[services]]\nname = "{name}"\nselector = {{ {selector} }}\n'
            f'session_affinity = "{affinity}"\nports = [ {{ port = 80, target_port = 8080 }} ]\n')


V1 = (pod_toml("a", "10.244.1.10", labels='app = "web"')
      + pod_toml("b", "10.244.1.11", containers=True)
      + pod_toml("c", "10.244.1.12")
      + service_toml("web", 'app = "web"') + service_toml("db", 'app = "db"'))


def file_harness(tmp_path: Path, body: str = V1, **kwargs) -> tuple[Harness, Path]:
    from vswitch.config import load_topology

    path = node_file(tmp_path, body, **kwargs)
    return Harness(load_topology(path)), path


def pod_names(pods) -> list[str]:
    return [pod.name for pod in pods]


async def wait_for(condition, timeout: float = 5.0) -> None:
    """Poll: a reload parses the file in a worker thread, which wait_all_tasks_blocked cannot see."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_reload_applies_the_files_difference_and_programs_once(tmp_path, caplog):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        # Changes made at runtime, which the file does not have: the reload undoes them.
        assert (await ask(socket_path, "pod_add", {"pod": {"name": "x"}}))["ok"]
        assert (await ask(socket_path, "pod_ready", {"name": "c", "ready": False}))["ok"]
        assert (await ask(socket_path, "service_add", {
            "toml": service_toml("extra", 'app = "x"')}))["ok"]
        ports_before = dict(context.port_ids)
        calls = len(harness.kernel.calls)
        count = len(programmed(harness))

        # a: labels only (in place); b: gone; c: back to ready (in place); d is new, and so
        # is e, which takes the address b gives up. web changes its affinity, db goes, api is new.
        node_file(tmp_path, pod_toml("a", "10.244.1.10", labels='app = "db"')
                  + pod_toml("c", "10.244.1.12")
                  + pod_toml("d", "10.244.1.20", containers=True)
                  + pod_toml("e", "10.244.1.11")
                  + service_toml("web", 'app = "web"', affinity="ClientIP")
                  + service_toml("api", 'app = "db"'))
        answer = await ask(socket_path, "reload")
        assert answer["ok"], answer
        result = answer["result"]
        assert result["summary"] == (
            "reload: 2 pods added, 2 removed, 2 updated in place, 1 service added, 2 removed, "
            "1 changed (removed as added at runtime, not in the file: x, default/extra)")
        assert result["pods"] == {"added": ["d", "e"], "removed": ["b", "x"], "replaced": [],
                                  "updated": ["a", "c"], "unchanged": []}
        assert result["services"] == {"added": ["default/api"],
                                      "removed": ["default/db", "default/extra"],
                                      "replaced": ["default/web"], "unchanged": []}
        # Removals first (e reuses b's address), then the new pods; a and c keep their
        # namespaces, ports and containers.
        assert harness.kernel.calls[calls:] == ["delete_pod b", "delete_pod x", "create_pod d",
                                                "create_pod e"]
        assert context.port_ids["a"] == ports_before["a"]
        assert context.port_ids["c"] == ports_before["c"]
        assert "b" not in context.port_ids and "x" not in context.port_ids
        assert harness.supervisor.running == {"d"}
        # The core was programmed once, with the file's pods and services in the file's order.
        assert len(programmed(harness)) == count + 1
        pods, services = programmed(harness)[-1]
        assert pod_names(pods) == ["a", "c", "d", "e"]
        assert dict(pods[0].labels) == {"app": "db"} and pods[1].ready is True
        assert [s.key for s in services] == ["default/web", "default/api"]
        assert services[0].session_affinity == "ClientIP"
        listed = (await ask(socket_path, "pods"))["result"]
        assert [p["name"] for p in listed] == ["a", "c", "d", "e"]

        # The same file again is no change at all, and nothing is touched.
        calls = len(harness.kernel.calls)
        again = (await ask(socket_path, "reload"))["result"]
        assert again["summary"] == "reload: no changes"
        assert again["pods"]["unchanged"] == ["a", "c", "d", "e"]
        assert harness.kernel.calls[calls:] == []

        # A pod whose address changes is created again (its namespace holds the address).
        node_file(tmp_path, pod_toml("a", "10.244.1.30", labels='app = "db"')
                  + pod_toml("c", "10.244.1.12") + pod_toml("d", "10.244.1.20", containers=True)
                  + pod_toml("e", "10.244.1.11")
                  + service_toml("web", 'app = "web"', affinity="ClientIP")
                  + service_toml("api", 'app = "db"'))
        replaced = (await ask(socket_path, "reload"))["result"]
        assert replaced["summary"] == "reload: 1 pod replaced"
        assert harness.kernel.calls[-2:] == ["delete_pod a", "create_pod a"]
        assert context.port_ids["a"] != ports_before["a"]
        assert pod_names(programmed(harness)[-1][0]) == ["a", "c", "d", "e"]
        nursery.cancel_scope.cancel()
    assert "removing pod x, which was added at runtime" in caplog.text


async def test_sighup_reloads_the_file(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vswitchd")
    harness, path = file_harness(tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, config_path=str(path))
            node_file(tmp_path, V1 + pod_toml("d", "10.244.1.20"))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: "reload: 1 pod added" in caplog.text)
            assert harness.kernel.calls[-1] == "create_pod d"
            assert pod_names(programmed(harness)[-1][0]) == ["a", "b", "c", "d"]
            nursery.cancel_scope.cancel()


def unaddressed(*names: str) -> str:
    """Pods and services without explicit addresses: the loader allocates them in file order."""
    pods = "".join(f'\n[[pods]]\nname = "{name}"\n' for name in names)
    services = "".join(service_toml(f"svc-{name}", f'app = "{name}"') for name in names)
    return pods + services


async def test_a_reload_does_not_renumber_pods_and_services_that_stay(tmp_path):
    harness, path = file_harness(tmp_path, unaddressed("a", "b", "c"))
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        before = {pod.name: pod for pod in context.current().pods}
        services_before = {s.key: s for s in context.current().services}
        assert str(before["b"].ip) == "10.244.1.11" and str(before["c"].ip) == "10.244.1.12"
        ports_before = dict(context.port_ids)
        calls = len(harness.kernel.calls)

        # Read on its own, the new file would give b .10 and c .11; they run, so they stay.
        node_file(tmp_path, unaddressed("b", "c"))
        answer = await ask(socket_path, "reload")
        assert answer["ok"], answer
        result = answer["result"]
        assert result["pods"] == {"added": [], "removed": ["a"], "replaced": [], "updated": [],
                                  "unchanged": ["b", "c"]}
        assert result["services"]["replaced"] == []
        assert result["services"]["unchanged"] == ["default/svc-b", "default/svc-c"]
        assert harness.kernel.calls[calls:] == ["delete_pod a"]
        assert (context.port_ids["b"], context.port_ids["c"]) == (ports_before["b"],
                                                                  ports_before["c"])
        after = context.current()
        assert {pod.name: pod for pod in after.pods} == {"b": before["b"], "c": before["c"]}
        assert [s.cluster_ip for s in after.services] == [
            services_before["default/svc-b"].cluster_ip,
            services_before["default/svc-c"].cluster_ip]

        # A new pod gets the address a gave up, not one of those that run.
        node_file(tmp_path, unaddressed("n", "b", "c"))
        result = (await ask(socket_path, "reload"))["result"]
        assert result["pods"]["added"] == ["n"] and result["pods"]["unchanged"] == ["b", "c"]
        assert str(context.current().pod("n").ip) == "10.244.1.10"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["sighup", "control"])
async def test_a_bad_file_changes_nothing_and_names_the_key(tmp_path, caplog, how):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery, config_path=str(path))
        calls, count = list(harness.kernel.calls), len(programmed(harness))
        # A valid new pod next to a broken one: all or nothing, so not even d is created.
        node_file(tmp_path, V1.replace('ip = "10.244.1.12"', 'ip = "10.9.9.9"')
                  + pod_toml("d", "10.244.1.20"))
        if how == "sighup":
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: "reload failed" in caplog.text)
        else:
            answer = await ask(socket_path, "reload")
            assert answer["ok"] is False
            assert answer["error"].startswith(f"reload failed: {path}: pods[2].ip: 10.9.9.9 is "
                                               "outside node.pod_cidr")
        assert f"reload failed: {path}: pods[2].ip: 10.9.9.9 is outside" in caplog.text
        assert "nothing was changed" in caplog.text
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        assert pod_names(context.current().pods) == ["a", "b", "c"]
        # The daemon keeps running and answers.
        assert (await ask(socket_path, "status"))["result"]["pods"] == 3

        path.write_text("[node\n")
        answer = await ask(socket_path, "reload")
        assert answer["error"].startswith(f"reload failed: {path}: invalid TOML")
        path.unlink()
        answer = await ask(socket_path, "reload")
        assert answer["error"].startswith(f"reload failed: {path}: cannot read the file")
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("change, named", [
    # The default segment is made of [node], so it changes with it.
    (dict(mtu=1400), "node.mtu: 1500 -> 1400, segments"),
    (dict(burst=16), "dataplane.burst: 8 -> 16"),
])
async def test_a_change_that_needs_a_restart_is_refused_as_a_whole(tmp_path, caplog, change,
                                                                   named):
    harness, path = file_harness(tmp_path)
    socket_path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, config_path=str(path))
        calls, count = list(harness.kernel.calls), len(programmed(harness))
        node_file(tmp_path, V1 + pod_toml("d", "10.244.1.20"), **change)
        answer = await ask(socket_path, "reload")
        assert answer["ok"] is False
        assert answer["error"] == (
            f"reload refused: {path} changes {named}, which cannot change while the node runs "
            "and need a restart (systemctl restart vswitchd); nothing was changed")
        assert answer["error"] in caplog.text
        assert harness.kernel.calls == calls and len(programmed(harness)) == count
        nursery.cancel_scope.cancel()


def test_restart_differences_name_sections_and_keys(tmp_path):
    from vswitch.config import parse_topology
    from vswitch.runtime.daemon import restart_differences

    base = node_file(tmp_path, V1).read_text()
    running = parse_topology(base)
    assert restart_differences(running, parse_topology(base + pod_toml("d", "10.244.1.20"))) == []
    routed = base + ('\n[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
                     '\n[[routes]]\ndst = "192.0.2.0/24"\nvia = "10.245.1.20"\n'
                     '\n[uplink]\naddress = "198.18.0.2/24"\ngateway = "198.18.0.1"\n')
    # Without a [cluster], its CIDR is the one covering every segment, so it grows with them.
    assert restart_differences(running, parse_topology(routed)) == [
        "segments", "routes", "uplink: added", "cluster.cidr: 10.244.1.0/24 -> 10.244.0.0/15"]
    host = base.replace("[dataplane]", '[host_port]\nenabled = false\n\n[dataplane]')
    assert restart_differences(running, parse_topology(host)) == [
        "host_port.enabled: True -> False"]


class GatedKernel(NullKernel):
    """Creating pod "slow" waits until the test opens the gate; records how many kernel calls
    ran at once, which must never be more than one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.active = 0
        self.most_active = 0

    async def create_pod(self, pod: Pod) -> int:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            handle = await super().create_pod(pod)
            if pod.name == "slow":
                await self.gate.wait()
            return handle
        finally:
            self.active -= 1


async def test_hangups_during_a_reload_make_one_more_reload_afterwards(tmp_path):
    harness, path = file_harness(tmp_path)
    harness.kernel = kernel = GatedKernel()
    socket_path = harness.topology.control.socket
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, config_path=str(path))
            count = len(programmed(harness))
            node_file(tmp_path, V1 + pod_toml("slow", "10.244.1.20"))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: "create_pod slow" in kernel.calls)

            # The file changes again while the first reload is stuck; three more hangups, each
            # seen by the daemon before the next, ask for the new version.
            node_file(tmp_path, V1 + pod_toml("slow", "10.244.1.20")
                      + pod_toml("late", "10.244.1.21"))
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGHUP)
                await trio.sleep(0.05)
            # A runtime change meanwhile waits for the lock instead of interleaving.
            pending = trio.Event()

            async def add_pod() -> None:
                await ask(socket_path, "pod_add", {"pod": {"name": "y", "ip": "10.244.1.40"}})
                pending.set()

            nursery.start_soon(add_pod)
            await trio.sleep(0.1)
            assert not pending.is_set()
            assert "create_pod late" not in kernel.calls and len(programmed(harness)) == count

            kernel.gate.set()
            await wait_for(lambda: "create_pod late" in kernel.calls and pending.is_set())
            await trio.sleep(0.3)  # room for a third reload, which must not come
            creates = [c for c in kernel.calls if c.startswith("create_pod")]
            assert creates[-3:].count("create_pod late") == 1 and "create_pod y" in creates
            assert creates.count("create_pod slow") == 1
            # Two reloads and the pod_add, each programmed once.
            assert len(programmed(harness)) == count + 3
            assert kernel.most_active == 1
            nursery.cancel_scope.cancel()


async def test_metrics_endpoint_serves_the_running_switch(tmp_path):
    import socket as socketlib

    with socketlib.socket() as probe:  # a free port on loopback for the endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = make_topology(tmp_path)
    topology = dataclasses.replace(base, control=dataclasses.replace(
        base.control, metrics=f"127.0.0.1:{port}"))
    harness = Harness(topology, switch_factory=lambda t: switch_module.Switch(
        t, accel=accel.load("pure")))
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        a, b = harness.topology.pods
        harness.ports.ports["a"].inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        assert b'vswitch_port_rx_packets_total{node="t1",port="a"} 1.0' in answer
        nursery.cancel_scope.cancel()


async def test_a_tap_port_takes_the_answer_of_the_port_it_just_wrote_to(tmp_path):
    """The kernel behind a TAP often answers inside our write; the writer reads that answer at
    once instead of waiting for the event loop to wake the other port's task."""
    from vswitch.runtime.ports import RuntimeErrors, TapPort

    topology = make_topology(tmp_path, host_port=False)
    a, b = topology.pods
    switch = FakeSwitch(topology)
    ports, peers = {}, {}
    for port_id, pod in ((1, a), (2, b)):
        spec = PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, False)
        switch.add_port(spec)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.setblocking(False)
        ports[port_id] = TapPort(spec, ours.detach(), 64)
        peers[pod.name] = theirs
    try:
        answer = udp_frame(b, a, b"pong")
        peers["b"].send(answer)  # queued on b's "TAP" as the write to b returns
        ports[1]._drain_answers(switch, ports, [Transmit(2, b"ping")], RuntimeErrors())
        assert peers["a"].recv(65536) == answer  # forwarded without b's task ever running
        ports[1]._drain_answers(switch, ports, [Transmit(1, b"to itself")], RuntimeErrors())
        assert switch.rx == {1: 0, 2: 1}  # a port never drains itself
    finally:
        for port in ports.values():
            port.close()
        for peer in peers.values():
            peer.close()

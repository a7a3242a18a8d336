"""Segments and static routes in the shell: each port's segment and MTU, the host's routes into the
host port, and routing between segments with the real core."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import trio

from vswitch import accel
from vswitch.model import Pod, Segment, StaticRoute, Topology, mac_for_ip
from vswitch.runtime.memory_port import NullKernel

from .support import Harness, RecordingSwitch, ask, mac_bytes, make_topology, udp_frame


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
    harness = Harness(make_routed_topology(tmp_path), switch_factory=RecordingSwitch)
    harness.kernel = RoutingKernel()
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        specs = harness.switch.ports
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
    harness = Harness(topology)
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

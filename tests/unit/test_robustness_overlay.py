"""Whatever arrives on a node with an overlay, the switch never raises: VXLAN from another node
and pods' packets to other nodes, with bytes flipped anywhere (virtio-net headers included, in
both the 10-byte and the 24-byte framing) or cut short, are forwarded, counted or dropped, and
the dispositions add up to what the ports received."""
from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import HealthCheck, given, settings, strategies as st

from vswitch import accel as accel_impls
from vswitch.config import parse_topology
from vswitch.core.port_spec import VNET_HDR_LEN, VNET_TUNNEL_HDR_LEN, PortKind, PortSpec
from vswitch.core.switch import Switch
from vswitch.model import mac_for_ip
from vswitch.wire import vxlan
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from .test_pipeline_overlay import FAR, POD, UPLINK, mac, topology_text

GSO_VNET = bytes([1, 1, 66, 0, 0x76, 5, 34, 0, 16, 0])  # TCPV4, gso_size 1398, csum at 34


def lab1(accel_name: str, vnet_len: int) -> Switch:
    topology = parse_topology(topology_text("lab1"), "lab1.toml")
    switch = Switch(topology, accel_impls.load(accel_name))
    pod = topology.pods[0]
    switch.add_port(PortSpec(POD, pod.name, PortKind.POD, pod.mac, pod.ip, True,
                             vnet_hdr_len=vnet_len))
    switch.add_port(PortSpec(UPLINK, "uplink", PortKind.UPLINK, mac_for_ip(IPv4Address(FAR)),
                             IPv4Address(FAR), True, port_security=False,
                             segment=topology.uplink_segment_index(), vnet_hdr_len=vnet_len))
    return switch


def pod_frame(text: str) -> bytes:
    return build_frame(parse_packet(text), mac("10.244.1.10"), mac_bytes("0a:58:0a:f4:01:01"))


def tunnelled(text: str) -> bytes:
    inner = build_frame(parse_packet(text), mac("192.0.2.3"), mac("192.0.2.2"))
    return vxlan.encapsulate(inner, outer_src_mac=mac("192.0.2.3"), outer_dst_mac=mac("192.0.2.2"),
                             src_ip=IPv4Address("192.0.2.3").packed,
                             dst_ip=IPv4Address("192.0.2.2").packed, src_port=50000,
                             dst_port=4789, vni=1, ident=9)


TEMPLATES = [
    (POD, pod_frame("udp 10.244.1.10:1 > 10.244.2.10:2 len 30"), False),
    (POD, pod_frame("tcp 10.244.1.10:1 > 10.244.2.10:2 flags A len 1000 df"), True),
    (POD, pod_frame("icmp 10.244.1.10 > 10.244.2.10 len 1500"), False),
    (POD, build_frame(parse_packet("arp who-has 10.244.1.1 tell 10.244.1.10"),
                      mac("10.244.1.10"), BROADCAST_MAC), False),
    (UPLINK, tunnelled("udp 10.244.2.10:1 > 10.244.1.10:2 len 30"), False),
    (UPLINK, tunnelled("tcp 10.244.2.10:1 > 10.244.1.10:2 flags A len 1000 df"), True),
    (UPLINK, build_frame(parse_packet("arp reply 192.0.2.3 is-at 0a:58:c0:00:02:03 to 192.0.2.2"),
                         mac("192.0.2.3"), mac("192.0.2.2")), False),
]

mutation = st.tuples(st.integers(0, 120), st.integers(0, 255))
case = st.tuples(st.sampled_from(TEMPLATES), st.lists(mutation, max_size=4), st.integers(0, 60),
                 st.booleans())


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(case, min_size=1, max_size=30),
       vnet_len=st.sampled_from([VNET_HDR_LEN, VNET_TUNNEL_HDR_LEN]))
def test_no_input_makes_a_node_with_an_overlay_raise(accel_name, cases, vnet_len):
    switch = lab1(accel_name, vnet_len)
    now = 0.0
    for (port, frame, gso), flips, cut, mutate in cases:
        vnet = GSO_VNET if gso else bytes(VNET_HDR_LEN)
        if port == UPLINK and gso:
            vnet = bytes([1, 0x21, 116, 0, 0x76, 5, 84, 0, 16, 0])
        data = bytearray(vnet + bytes(vnet_len - VNET_HDR_LEN) + frame)
        if vnet_len == VNET_TUNNEL_HDR_LEN and port == UPLINK and gso:
            data[20:24] = bytes([34, 0, 64, 0])  # outer_th_offset, inner_nh_offset
        if mutate:
            for at, value in flips:
                data[at % len(data)] = value
        now += 0.25
        switch.process_batch(port, [bytes(data[: max(len(data) - cut, 0)])], now)
        switch.handle_timer(now)
    stats = switch.statistics()
    received = sum(p["rx_packets"] for p in stats["ports"].values())
    assert sum(stats["dispositions"].values()) == received

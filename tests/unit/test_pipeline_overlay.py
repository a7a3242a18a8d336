"""Two nodes joined by the VXLAN overlay, through the real pipeline with crafted frames.

Each node is a ``Switch`` with a pod port and an uplink; ``Underlay`` plays the L2 network between
their uplinks, carrying what one node's uplink emits to the other's (ARP included), so the tests
see a pod's packet leave node 1 encapsulated and arrive at node 2's pod, TTL lowered at each
router, and every refusal counted by its reason."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch import accel as accel_impls
from vswitch.accel import pure
from vswitch.config import parse_topology
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import route_rows
from vswitch.core.switch import Switch
from vswitch.model import mac_for_ip
from vswitch.tables.fib import RouteKind
from vswitch.tables.overlay import NodeSource, RemoteNode
from vswitch.wire import builders, headers as h, vxlan
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

VNET = h.ZERO_VNET_HDR
POD, UPLINK = 2, 9
FAR = "192.0.2.1"
NODES = {  # name: (underlay address, pod CIDR, pod address)
    "lab1": ("192.0.2.2", "10.244.1.0/24", "10.244.1.10"),
    "lab2": ("192.0.2.3", "10.244.2.0/24", "10.244.2.10"),
}


def mac(address: str) -> bytes:
    return mac_bytes(mac_for_ip(IPv4Address(address)))


def topology_text(name: str, extra: str = "", services: str = "") -> str:
    address, cidr, pod_ip = NODES[name]
    (other,) = [n for n in NODES if n != name]
    peer_address, peer_cidr, _ = NODES[other]
    return (f'[node]\nname = "{name}"\npod_cidr = "{cidr}"\n'
            f'[cluster]\ncidr = "10.244.0.0/16"\n'
            f'[uplink]\naddress = "{address}/24"\ngateway = "{FAR}"\n[overlay]\n{extra}'
            f'[[peers]]\nname = "{other}"\naddress = "{peer_address}"\npod_cidr = "{peer_cidr}"\n'
            f'[[pods]]\nname = "p"\nip = "{pod_ip}"\n{services}')


def node(name: str, accel_name: str, extra: str = "", services: str = "") -> Switch:
    topology = parse_topology(topology_text(name, extra, services), f"{name}.toml")
    switch = Switch(topology, accel_impls.load(accel_name))
    pod = topology.pods[0]
    switch.add_port(PortSpec(POD, pod.name, PortKind.POD, pod.mac, pod.ip, True))
    switch.add_port(PortSpec(UPLINK, "uplink", PortKind.UPLINK, mac_for_ip(IPv4Address(FAR)),
                             IPv4Address(FAR), True, port_security=False,
                             segment=topology.uplink_segment_index()))
    gateway = str(topology.node.gateway)
    send(switch, POD, f"arp who-has {gateway} tell {pod.ip}", mac(str(pod.ip)), BROADCAST_MAC)
    return switch


def send(switch: Switch, port: int, text: str, src_mac: bytes, dst_mac: bytes, now: float = 0.0):
    return switch.process_batch(port, [VNET + build_frame(parse_packet(text), src_mac, dst_mac)],
                                now)


class Underlay:
    """The L2 network between the nodes' uplinks: whatever one uplink emits reaches the others."""

    def __init__(self, *switches: Switch):
        self.switches = switches
        self.carried: list[bytes] = []
        self.to_far: list = []  # what the nodes sent to the uplink's far side (the gateway)

    def run(self, origin: Switch, transmits, now: float = 0.0) -> dict[int, list]:
        """Carry ``origin``'s uplink frames until nothing moves; return what reached pod ports,
        by switch index."""
        delivered: dict[int, list] = {i: [] for i in range(len(self.switches))}
        queue = [(origin, t) for t in transmits]
        while queue:
            source, tx = queue.pop(0)
            if tx.port != UPLINK:
                delivered[self.switches.index(source)].append(tx)
                continue
            self.carried.append(tx.data)
            if tx.data[10:16] == mac(FAR):
                self.to_far.append(tx)
                continue
            for other in self.switches:
                if other is not source:
                    queue.extend((other, t) for t in other.process_batch(UPLINK, [tx.data], now))
        return delivered


@pytest.fixture
def nodes(accel_name):
    return node("lab1", accel_name), node("lab2", accel_name)


def ping(switch: Switch, dst: str, **options) -> list:
    pod_ip = NODES[switch.topology.node.name][2]
    words = " ".join(f"{k} {v}" if v is not True else k for k, v in options.items())
    return send(switch, POD, f"icmp {pod_ip} > {dst} {words}", mac(pod_ip),
                mac_bytes(switch.topology.node.gateway_mac))


def outer_packets(underlay: Underlay) -> list[bytes]:
    """The IPv4 packets among the frames the underlay carried (ARP left out)."""
    return [data[10 + 14:] for data in underlay.carried
            if h.ETHERNET.parse(data[10:24]).ethertype == h.EtherType.IPV4]


# -- the path across ------------------------------------------------------------------------


def test_a_pod_reaches_a_pod_on_another_node_through_vxlan_with_ttl_62(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    delivered = underlay.run(lab1, ping(lab1, "10.244.2.10", ttl=64))
    (tx,) = delivered[1]
    frame = tx.data[10:]
    ip = h.IPV4.parse(frame[14:34])
    assert (tx.port, ip.src, ip.dst, ip.ttl) == (POD, IPv4Address("10.244.1.10").packed,
                                                 IPv4Address("10.244.2.10").packed, 62)
    assert frame[:6] == mac("10.244.2.10")
    assert frame[6:12] == mac_bytes(lab2.topology.node.gateway_mac)
    assert pure.checksum(frame[14:34]) == 0
    (outer,) = outer_packets(underlay)
    opened = vxlan.decapsulate(outer, vni=1, port=4789)
    assert isinstance(opened, vxlan.Decapsulated)
    assert (opened.src, opened.dst) == (IPv4Address("192.0.2.2").packed,
                                        IPv4Address("192.0.2.3").packed)
    inner = opened.inner
    assert inner[:6] == mac("192.0.2.3") and inner[6:12] == mac("192.0.2.2")  # VTEP MACs
    assert h.IPV4.parse(inner[14:34]).ttl == 63
    assert vxlan.SOURCE_PORT_LOW <= opened.src_port <= vxlan.SOURCE_PORT_HIGH
    stages1, stages2 = lab1.statistics()["stages"], lab2.statistics()["stages"]
    assert stages1["vxlan-encap"]["encapsulated"] == 1
    assert stages2["vxlan-decap"]["decapsulated"] == 1


def test_the_reply_comes_back_the_same_way(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    underlay.run(lab1, ping(lab1, "10.244.2.10"))
    reply = send(lab2, POD, "icmp 10.244.2.10 > 10.244.1.10 echo-reply", mac("10.244.2.10"),
                 mac_bytes(lab2.topology.node.gateway_mac))
    (tx,) = underlay.run(lab2, reply)[0]
    assert tx.port == POD and h.IPV4.parse(tx.data[24:44]).src == IPv4Address("10.244.2.10").packed


def test_later_packets_of_a_flow_are_encapsulated_too_never_cached_as_plain_routing(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    for seq in range(1, 4):
        delivered = underlay.run(lab1, ping(lab1, "10.244.2.10", seq=seq), now=seq * 0.01)
        assert [t.port for t in delivered[1]] == [POD]
    assert len(outer_packets(underlay)) == 3
    assert all(p[9] == h.IpProto.UDP for p in outer_packets(underlay))


def test_outer_ids_differ_and_one_flow_keeps_its_source_port(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    for sport in (40000, 40000, 40001, 40002, 40003):
        underlay.run(lab1, send(lab1, POD, f"udp 10.244.1.10:{sport} > 10.244.2.10:53",
                                mac("10.244.1.10"), mac_bytes(lab1.topology.node.gateway_mac)))
    packets = outer_packets(underlay)
    idents = [h.IPV4.parse(p[:20]).identification for p in packets]
    ports = [struct.unpack_from("!H", p, 20)[0] for p in packets]
    assert len(set(idents)) == 5
    assert ports[0] == ports[1] and len(set(ports[1:])) > 1
    assert all(not h.IPV4.parse(p[:20]).df for p in packets)


def test_a_df_packet_too_big_for_the_overlay_gets_fragmentation_needed_with_its_mtu(nodes):
    lab1, _ = nodes
    (tx,) = send(lab1, POD, "udp 10.244.1.10:5000 > 10.244.2.10:53 len 1430 df",
                 mac("10.244.1.10"), mac_bytes(lab1.topology.node.gateway_mac))
    frame = tx.data[10:]
    icmp = frame[34:]
    assert (tx.port, icmp[0], icmp[1]) == (POD, 3, 4)
    assert struct.unpack_from("!H", icmp, 6)[0] == 1450
    # 1450 bytes fit: 1422 of payload + UDP 8 + IPv4 20.
    ok = send(lab1, POD, "udp 10.244.1.10:5000 > 10.244.2.10:53 len 1422 df",
              mac("10.244.1.10"), mac_bytes(lab1.topology.node.gateway_mac))
    assert [t.port for t in ok] == [UPLINK]  # the ARP request for lab2's address


def test_a_large_packet_without_df_is_fragmented_then_each_fragment_encapsulated(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    delivered = underlay.run(lab1, send(lab1, POD, "udp 10.244.1.10:5000 > 10.244.2.10:53 len 2000",
                                        mac("10.244.1.10"),
                                        mac_bytes(lab1.topology.node.gateway_mac)))
    assert len(outer_packets(underlay)) == 2
    assert all(len(p) <= 1500 for p in outer_packets(underlay))
    assert [t.port for t in delivered[1]] == [POD, POD]


def test_a_partial_checksum_stays_partial_with_its_start_moved_by_the_outer_headers(nodes):
    lab1, lab2 = nodes
    frame = build_frame(parse_packet("tcp 10.244.1.10:40000 > 10.244.2.10:80 flags S"),
                        mac("10.244.1.10"), mac_bytes(lab1.topology.node.gateway_mac))
    vnet = h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=0, hdr_len=0,
                                       gso_size=0, csum_start=34, csum_offset=16))
    underlay = Underlay(lab1, lab2)
    delivered = underlay.run(lab1, lab1.process_batch(POD, [vnet + frame], 0.0))
    carried = [d for d in underlay.carried if h.ETHERNET.parse(d[10:24]).ethertype == 0x0800]
    assert h.VIRTIO_NET_HDR.parse(carried[0][:10]).csum_start == 34 + 50
    (tx,) = delivered[1]
    inner_vnet = h.VIRTIO_NET_HDR.parse(tx.data[:10])
    assert (inner_vnet.flags, inner_vnet.csum_start) == (h.VNET_F_NEEDS_CSUM, 34)


# -- what the receiving node refuses ------------------------------------------------------


def deliver_outer(switch: Switch, inner: bytes, *, src: str = "192.0.2.2", vni: int = 1,
                  port: int = 4789, tos_inner: bytes | None = None) -> list:
    packet = vxlan.encapsulate(inner, outer_src_mac=mac(src), outer_dst_mac=mac("192.0.2.3"),
                               src_ip=IPv4Address(src).packed,
                               dst_ip=IPv4Address("192.0.2.3").packed, src_port=50000,
                               dst_port=port, vni=vni, ident=1)
    return switch.process_batch(UPLINK, [VNET + packet], 0.0)


def inner_frame(text: str = "icmp 10.244.1.10 > 10.244.2.10", dst_mac: bytes | None = None,
                src_mac: bytes | None = None) -> bytes:
    return build_frame(parse_packet(text), src_mac or mac("192.0.2.2"),
                       dst_mac or mac("192.0.2.3"))


@pytest.mark.parametrize("kwargs, counter", [
    (dict(vni=7), "wrong-vni"),
    (dict(src="192.0.2.99"), "unknown-node"),
    (dict(inner=dict(dst_mac=mac("192.0.2.77"))), "not-for-vtep"),
    (dict(inner=dict(src_mac=mac("192.0.2.3"))), "loop"),
])
def test_invalid_or_unexpected_vxlan_is_dropped_and_counted_by_reason(nodes, kwargs, counter):
    _, lab2 = nodes
    kwargs = dict(kwargs)
    inner = inner_frame(**kwargs.pop("inner", {}))
    assert deliver_outer(lab2, inner, **kwargs) == []
    assert lab2.statistics()["stages"]["vxlan-decap"][counter] == 1
    assert lab2.statistics()["ports"]["uplink"]["rx_drops"] == {counter: 1}


def test_udp_to_another_port_is_not_vxlan_and_gets_port_unreachable(nodes):
    _, lab2 = nodes
    out = deliver_outer(lab2, inner_frame(), port=4790)
    assert lab2.statistics()["stages"]["vxlan-decap"]["decapsulated"] == 0
    assert [t.port for t in out] == [UPLINK]  # ICMP port unreachable back to the sender


def test_a_truncated_vxlan_header_is_counted_as_short(nodes):
    _, lab2 = nodes
    udp = struct.pack("!HHHH", 50000, 4789, 12, 0) + b"\x08\x00\x00\x00"
    packet = builders.ipv4(src=IPv4Address("192.0.2.2").packed,
                           dst=IPv4Address("192.0.2.3").packed, protocol=h.IpProto.UDP, payload=udp)
    frame = builders.ethernet(mac("192.0.2.3"), mac("192.0.2.2"), h.EtherType.IPV4, packet)
    assert lab2.process_batch(UPLINK, [VNET + frame], 0.0) == []
    assert lab2.statistics()["stages"]["vxlan-decap"]["short"] == 1


def test_vxlan_from_a_pod_port_is_not_opened(nodes):
    _, lab2 = nodes
    out = send(lab2, POD, "udp 10.244.2.10:50000 > 192.0.2.3:4789 len 60", mac("10.244.2.10"),
               mac_bytes(lab2.topology.node.gateway_mac))
    assert lab2.statistics()["stages"]["vxlan-decap"]["decapsulated"] == 0
    assert [t.port for t in out] == [POD]  # port unreachable from the node address


def test_outer_ce_marks_an_ect_inner_packet_and_drops_a_not_ect_one(nodes):
    _, lab2 = nodes
    for inner_tos, expected in ((0x02, 0x03), (0x00, None)):
        inner = bytearray(inner_frame())
        inner[15] = inner_tos
        inner[24:26] = b"\x00\x00"
        inner[24:26] = pure.checksum(bytes(inner[14:34])).to_bytes(2, "big")
        packet = bytearray(vxlan.encapsulate(
            bytes(inner), outer_src_mac=mac("192.0.2.2"), outer_dst_mac=mac("192.0.2.3"),
            src_ip=IPv4Address("192.0.2.2").packed, dst_ip=IPv4Address("192.0.2.3").packed,
            src_port=50000, dst_port=4789, vni=1, ident=1))
        packet[15] = 0x03  # outer CE
        packet[24:26] = b"\x00\x00"
        packet[24:26] = pure.checksum(bytes(packet[14:34])).to_bytes(2, "big")
        out = lab2.process_batch(UPLINK, [VNET + bytes(packet)], 0.0)
        if expected is None:
            assert out == []
            assert lab2.statistics()["stages"]["vxlan-decap"]["ecn-not-ect"] == 1
        else:
            (tx,) = [t for t in out if t.port == POD]
            ip = tx.data[24:44]
            assert ip[1] & 0x03 == expected and pure.checksum(ip) == 0


# -- the table of nodes, routes and traces ---------------------------------------------------


def test_routes_show_remote_pod_cidrs_via_the_overlay(nodes):
    lab1, _ = nodes
    (row,) = [r for r in route_rows(lab1) if r["kind"] == "overlay"]
    assert row == {"prefix": "10.244.2.0/24", "kind": "overlay", "segment": "uplink",
                   "via": "192.0.2.3", "origin": "node lab2 (static)"}


def test_membership_changes_become_routes_and_refusals(nodes):
    lab1, _ = nodes
    overlay = lab1.overlay
    lab2 = RemoteNode("lab2", IPv4Address("192.0.2.3"), IPv4Network("10.244.2.0/24"),
                      mac_for_ip(IPv4Address("192.0.2.3")))
    lab3 = RemoteNode("lab3", IPv4Address("192.0.2.4"), IPv4Network("10.244.3.0/24"),
                      mac_for_ip(IPv4Address("192.0.2.4")), NodeSource.STORE)
    generation = lab1.fib.generation
    change = overlay.set_nodes([lab2, lab3])
    assert (change.added, change.changed, change.removed) == (("lab3",), (), ())
    assert lab1.fib.generation > generation
    assert lab1.fib.lookup(int(IPv4Address("10.244.3.7"))).kind is RouteKind.OVERLAY
    moved = RemoteNode("lab3", IPv4Address("192.0.2.5"), IPv4Network("10.244.3.0/24"),
                       mac_for_ip(IPv4Address("192.0.2.5")), NodeSource.STORE)
    assert overlay.set_nodes([lab2, moved]).changed == ("lab3",)
    assert lab1.fib.lookup(int(IPv4Address("10.244.3.7"))).via == IPv4Address("192.0.2.5")
    mine = RemoteNode("evil", IPv4Address("192.0.2.9"), IPv4Network("10.244.1.0/25"), "0a:00:00:00:00:01")
    me = RemoteNode("twin", IPv4Address("192.0.2.2"), IPv4Network("10.244.9.0/24"), "0a:00:00:00:00:02")
    change = overlay.set_nodes([lab2, mine, me])
    assert change.removed == ("lab3",)
    assert dict(change.refused) == {
        "evil": "its pod CIDR 10.244.1.0/25 overlaps this node's 10.244.1.0/24",
        "twin": "its address 192.0.2.2 is this node's own underlay address"}
    assert lab1.fib.lookup(int(IPv4Address("10.244.3.7"))).kind is RouteKind.STATIC  # default
    assert overlay.set_nodes([lab2, mine, me]).refused == ()  # told once


def test_a_withdrawn_node_is_no_longer_reached_and_its_vxlan_is_refused(nodes):
    lab1, lab2 = nodes
    lab2.overlay.set_nodes([])
    assert deliver_outer(lab2, inner_frame()) == []
    assert lab2.statistics()["stages"]["vxlan-decap"]["unknown-node"] == 1


def test_trace_shows_encapsulation_and_decapsulation(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    underlay.run(lab1, ping(lab1, "10.244.2.10"))  # resolves lab2's underlay address
    lab1.tracer.arm("p", 1)
    lab2.tracer.arm("uplink", 1)
    underlay.run(lab1, ping(lab1, "10.244.2.10", seq=2))
    (sent,) = lab1.tracer.take("p")
    (received,) = lab2.tracer.take("uplink")
    encap = [n["note"] for n in sent["stages"] if n["stage"] == "vxlan-encap"][0]
    assert encap.startswith("to node lab2: outer 192.0.2.2:") and "> 192.0.2.3:4789 VNI 1" in encap
    decap = [n["note"] for n in received["stages"] if n["stage"] == "vxlan-decap"][0]
    assert decap.startswith("from node lab1: outer 192.0.2.2:") and "VNI 1" in decap


def test_a_node_off_the_uplink_network_is_reached_through_the_uplink_gateway(accel_name):
    """The outer packet goes to the route covering the node's address: off-link, the uplink's
    gateway, resolved by ARP like any next hop."""
    lab1 = node("lab1", accel_name)
    far = RemoteNode("lab9", IPv4Address("198.51.100.9"), IPv4Network("10.244.9.0/24"),
                     mac_for_ip(IPv4Address("198.51.100.9")))
    lab1.overlay.set_nodes(list(lab1.overlay.nodes()) + [far])
    out = send(lab1, POD, "icmp 10.244.1.10 > 10.244.9.10", mac("10.244.1.10"),
               mac_bytes(lab1.topology.node.gateway_mac))
    (arp,) = out
    assert arp.port == UPLINK
    request = h.ARP.parse(arp.data[10 + 14: 10 + 14 + h.ARP_LEN])
    assert request.tpa == IPv4Address(FAR).packed  # who-has the gateway, not the node
    reply = build_frame(parse_packet(f"arp reply {FAR} is-at 0a:58:c0:00:02:01 to 192.0.2.2"),
                        mac(FAR), mac("192.0.2.2"))
    (sent,) = lab1.process_batch(UPLINK, [VNET + reply], 0.1)
    assert sent.data[10:16] == mac(FAR)
    outer = sent.data[10 + 14:]
    assert h.IPV4.parse(outer[:20]).dst == IPv4Address("198.51.100.9").packed

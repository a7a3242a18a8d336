"""The router with crafted frames: forwarding between segments, neighbour resolution, TTL,
the exact bytes of each ICMP error, MTU handling with and without DF and GSO, rate limits."""
from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch import accel as accel_impls
from vswitch.accel import pure
from vswitch.config import parse_topology
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import neighbor_rows
from vswitch.core.switch import Switch
from vswitch.model import Segment, StaticRoute, mac_for_ip
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from .conftest import TOPOLOGY

VNET = h.ZERO_VNET_HDR
A, B, D, HOST = 2, 3, 4, 1
A_IP, B_IP, D_IP = "10.244.1.10", "10.244.1.11", "10.245.1.10"
GW0, GW1 = "10.244.1.1", "10.245.1.1"


def mac(ip: str) -> bytes:
    return mac_bytes(mac_for_ip(IPv4Address(ip)))


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


@pytest.fixture
def routed(accel_name):
    base = parse_topology(TOPOLOGY, "unit.toml")
    segments = (base.all_segments()[0],
                Segment("blue", IPv4Network("10.245.1.0/24"), IPv4Address(GW1),
                        mac_for_ip(IPv4Address(GW1)), 1400))
    routes = (StaticRoute(IPv4Network("192.168.50.0/24"), IPv4Address(B_IP), "default"),)
    topology = dataclasses.replace(base, segments=segments, routes=routes)
    switch = Switch(topology, accel_impls.load(accel_name))
    for pid, name, addr, segment in ((A, "a", A_IP, 0), (B, "b", B_IP, 0), (D, "d", D_IP, 1)):
        switch.add_port(PortSpec(pid, name, PortKind.POD, mac_for_ip(IPv4Address(addr)),
                                 IPv4Address(addr), True, mtu=1500 if segment == 0 else 1400,
                                 segment=segment))
    switch.add_port(PortSpec(HOST, "host", PortKind.HOST, mac_for_ip(IPv4Address("10.244.1.254")),
                             IPv4Address("10.244.1.254"), True))
    return switch


def send(switch, port, text, src, dst, now=0.0, vnet=VNET):
    return switch.process_batch(port, [vnet + build_frame(parse_packet(text), src, dst)], now)


def resolve_d(switch, now=0.0):
    """d answers the router's ARP (after a ping to it from a was held)."""
    reply = build_frame(parse_packet(f"arp reply {D_IP} is-at {mac_for_ip(IPv4Address(D_IP))} to {GW1}"),
                        mac(D_IP), mac(GW1))
    return switch.process_batch(D, [VNET + reply], now)


def d_asks_for_its_gateway(switch, now=0.0):
    """d ARPs for its gateway; the router learns d from the request, as Linux does."""
    request = build_frame(parse_packet(f"arp who-has {GW1} tell {D_IP}"), mac(D_IP), BROADCAST_MAC)
    return switch.process_batch(D, [VNET + request], now)


def stats(switch):
    return switch.statistics()


def ip_of(data: bytes):
    return h.IPV4.parse(data[10 + 14:])


# -- forwarding between segments -------------------------------------------------------------

def test_unsolicited_arp_reply_is_not_learned(routed):
    resolve_d(routed)
    assert neighbor_rows(routed, 0.0) == []


def test_first_packet_waits_for_arp_then_goes_out_with_ttl_decremented(routed):
    txs = send(routed, A, f"icmp {A_IP} > {D_IP} id 9 seq 1", mac(A_IP), mac(GW0))
    # Held, and an ARP request from the blue gateway goes out on the blue segment only.
    expected_arp = (VNET + BROADCAST_MAC + mac(GW1) + b"\x08\x06"
                    + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac(GW1) + ip(GW1)
                    + bytes(6) + ip(D_IP))
    assert [(t.port, t.data) for t in txs] == [(D, expected_arp)]
    assert stats(routed)["dispositions"]["queued"] == 1
    released = resolve_d(routed, 0.1)
    assert [t.port for t in released] == [D]
    frame = released[0].data[10:]
    assert frame[:6] == mac(D_IP) and frame[6:12] == mac(GW1)  # the router is the previous hop
    packet = h.IPV4.parse(frame[14:])
    assert packet.ttl == 63 and packet.src == ip(A_IP) and packet.dst == ip(D_IP)
    assert pure.checksum(frame[14:34]) == 0
    assert neighbor_rows(routed, 0.1)[0] | {"age_s": 0} == {
        "segment": "blue", "ip": D_IP, "mac": mac_for_ip(IPv4Address(D_IP)), "state": "reachable",
        "age_s": 0, "queued": 0}


def test_resolved_flow_is_cached_and_the_fast_path_rewrites_like_the_pipeline(accel_name):
    outputs = []
    for capacity in (65536, 0):
        switch = _routed_switch(accel_name, capacity)
        send(switch, A, f"udp {A_IP}:1000 > {D_IP}:2000 len 20", mac(A_IP), mac(GW0))
        resolve_d(switch, 0.1)
        burst = [VNET + build_frame(parse_packet(f"udp {A_IP}:1000 > {D_IP}:2000 len {n} ttl {t}"),
                                    mac(A_IP), mac(GW0))
                 for n, t in ((20, 64), (30, 64), (40, 7), (1372, 64), (1373, 64), (10, 1))]
        outputs.append([(t.port, t.data) for t in switch.process_batch(A, burst, 1.0)])
        if capacity:
            assert stats(switch)["dispositions"]["cache-hit"] == 3  # 1373 B and TTL 1 go slow
    assert outputs[0] == outputs[1]


def _routed_switch(accel_name, capacity=65536):
    base = parse_topology(TOPOLOGY, "unit.toml")
    segments = (base.all_segments()[0],
                Segment("blue", IPv4Network("10.245.1.0/24"), IPv4Address(GW1),
                        mac_for_ip(IPv4Address(GW1)), 1400))
    topology = dataclasses.replace(base, segments=segments)
    switch = Switch(topology, accel_impls.load(accel_name), flow_cache_capacity=capacity)
    for pid, name, addr, segment in ((A, "a", A_IP, 0), (D, "d", D_IP, 1)):
        switch.add_port(PortSpec(pid, name, PortKind.POD, mac_for_ip(IPv4Address(addr)),
                                 IPv4Address(addr), True, segment=segment))
    return switch


def test_static_route_resolves_its_gateway(routed):
    txs = send(routed, A, f"icmp {A_IP} > 192.168.50.7", mac(A_IP), mac(GW0))
    arp = [t for t in txs if t.data[10 + 12:10 + 14] == b"\x08\x06"]
    assert {t.port for t in arp} == {A, B, HOST}  # flooded on the default segment
    assert arp[0].data[-4:] == ip(B_IP)  # asks for the next hop, not the destination


def test_broadcast_and_arp_stay_inside_their_segment(routed):
    txs = send(routed, A, f"arp who-has {B_IP} tell {A_IP}", mac(A_IP), BROADCAST_MAC)
    assert sorted(t.port for t in txs) == sorted([B, HOST])


# -- ICMP errors -----------------------------------------------------------------------------

def _expect_icmp_error(tx, *, to_port, to_ip, icmp_type, code, rest, original_frame):
    assert tx.port == to_port
    frame = tx.data[10:]
    assert frame[:6] == mac(to_ip)
    outer = h.IPV4.parse(frame[14:])
    assert outer.dst == ip(to_ip) and outer.protocol == 1 and outer.ttl == 64
    assert pure.checksum(frame[14:14 + outer.ihl * 4]) == 0
    message = frame[14 + outer.ihl * 4:14 + outer.total_length]
    assert pure.checksum(message) == 0
    assert message[0] == icmp_type and message[1] == code and message[4:8] == rest
    original_ip = original_frame[14:]
    quoted = message[8:]
    assert quoted == original_ip[:20 + 8]  # RFC 792: the header and 64 bits of data
    return outer


def test_ttl_1_gets_time_exceeded_from_the_ingress_gateway(routed):
    original = build_frame(parse_packet(f"udp {A_IP}:33434 > {D_IP}:33434 ttl 1 len 12"),
                           mac(A_IP), mac(GW0))
    txs = routed.process_batch(A, [VNET + original], 0.0)
    outer = _expect_icmp_error(txs[0], to_port=A, to_ip=A_IP, icmp_type=11, code=0,
                               rest=bytes(4), original_frame=original)
    assert outer.src == ip(GW0)
    s = stats(routed)
    assert s["ports"]["a"]["rx_drops"] == {"ttl-expired": 1}
    assert s["stages"]["ip4-icmp-error"]["time-exceeded"] == 1


def test_no_route_gets_network_unreachable(routed):
    original = build_frame(parse_packet(f"icmp {A_IP} > 198.51.100.7"), mac(A_IP), mac(GW0))
    (tx,) = routed.process_batch(A, [VNET + original], 0.0)
    _expect_icmp_error(tx, to_port=A, to_ip=A_IP, icmp_type=3, code=0, rest=bytes(4),
                       original_frame=original)
    assert stats(routed)["ports"]["a"]["rx_drops"] == {"no-route": 1}


def test_df_packet_too_big_gets_fragmentation_needed_with_the_next_hop_mtu(routed):
    d_asks_for_its_gateway(routed)
    original = build_frame(parse_packet(f"udp {A_IP}:1 > {D_IP}:2 len 1450 df"), mac(A_IP), mac(GW0))
    (tx,) = routed.process_batch(A, [VNET + original], 0.0)
    _expect_icmp_error(tx, to_port=A, to_ip=A_IP, icmp_type=3, code=4,
                       rest=struct.pack("!HH", 0, 1400), original_frame=original)


def test_packet_too_big_without_df_is_fragmented(routed):
    d_asks_for_its_gateway(routed)
    payload = bytes(range(256)) * 12  # 3072 bytes
    udp = builders.udp(src=ip(A_IP), dst=ip(D_IP), src_port=5, dst_port=6, payload=payload)
    packet = builders.ipv4(src=ip(A_IP), dst=ip(D_IP), protocol=17, payload=udp,
                           identification=0x1234)
    txs = routed.process_batch(A, [VNET + builders.ethernet(mac(GW0), mac(A_IP), 0x0800, packet)], 0.0)
    pieces = []
    for tx in txs:
        assert tx.port == D
        frame = tx.data[10:]
        header = h.IPV4.parse(frame[14:])
        assert header.total_length <= 1400 and header.ttl == 63
        assert header.identification == 0x1234
        assert pure.checksum(frame[14:34]) == 0
        pieces.append((header.fragment_offset * 8, header.mf, frame[34:14 + header.total_length]))
    assert [mf for _, mf, _ in pieces] == [True, True, False]
    assert all(offset % 8 == 0 for offset, _, _ in pieces)
    assert b"".join(body for _, _, body in sorted(pieces)) == udp
    assert stats(routed)["stages"]["ip4-rewrite"]["fragments"] == 3


def _gso_frame(gso_size: int, df: bool = True) -> bytes:
    vnet = h.VIRTIO_NET_HDR.build(dict(flags=h.VNET_F_NEEDS_CSUM, gso_type=h.VNET_GSO_TCPV4,
                                       hdr_len=54, gso_size=gso_size, csum_start=34,
                                       csum_offset=16))
    tcp = builders.tcp(src=ip(A_IP), dst=ip(D_IP), src_port=1, dst_port=2, flags=0x18,
                       payload=bytes(20000))
    packet = builders.ipv4(src=ip(A_IP), dst=ip(D_IP), protocol=6, payload=tcp, df=df)
    return vnet + builders.ethernet(mac(GW0), mac(A_IP), 0x0800, packet)


def test_gso_frames_are_judged_by_their_segment_size(routed):
    d_asks_for_its_gateway(routed)
    fits = _gso_frame(1400 - 40)
    (tx,) = routed.process_batch(A, [fits], 0.0)
    assert tx.port == D and len(tx.data) == len(fits)
    assert tx.data[:10] == fits[:10]  # virtio-net header passes through untouched
    assert ip_of(tx.data).ttl == 63
    (error,) = routed.process_batch(A, [_gso_frame(1400 - 39)], 0.0)
    assert error.port == A and error.data[10 + 34] == 3 and error.data[10 + 35] == 4
    assert routed.process_batch(A, [_gso_frame(1500, df=False)], 0.0) == []
    assert stats(routed)["stages"]["ip4-rewrite"]["gso-too-big"] == 1


def test_no_icmp_error_about_an_icmp_error(routed):
    inner = builders.icmp(type=3, code=1, rest=bytes(4), payload=bytes(28))
    packet = builders.ipv4(src=ip(A_IP), dst=ip("198.51.100.7"), protocol=1, payload=inner)
    txs = routed.process_batch(A, [VNET + builders.ethernet(mac(GW0), mac(A_IP), 0x0800, packet)], 0.0)
    assert txs == []
    assert stats(routed)["stages"]["ip4-icmp-error"]["suppressed"] == 1


def test_icmp_errors_are_rate_limited_per_destination(routed):
    frame = VNET + build_frame(parse_packet(f"udp {A_IP}:1 > 198.51.100.7:2"), mac(A_IP), mac(GW0))
    assert len(routed.process_batch(A, [frame] * 10, 0.0)) == 6  # a burst of six
    assert len(routed.process_batch(A, [frame] * 3, 1.0)) == 1  # then one per second
    assert stats(routed)["stages"]["ip4-icmp-error"]["rate-limited"] == 6


def test_udp_to_a_gateway_gets_port_unreachable(routed):
    original = build_frame(parse_packet(f"udp {A_IP}:5000 > {GW1}:53"), mac(A_IP), mac(GW0))
    (tx,) = routed.process_batch(A, [VNET + original], 0.0)
    outer = _expect_icmp_error(tx, to_port=A, to_ip=A_IP, icmp_type=3, code=3, rest=bytes(4),
                               original_frame=original)
    assert outer.src == ip(GW0)


def test_pinging_the_other_segments_gateway_works(routed):
    (tx,) = send(routed, A, f"icmp {A_IP} > {GW1}", mac(A_IP), mac(GW0))
    reply = h.IPV4.parse(tx.data[24:])
    assert reply.src == ip(GW1) and reply.dst == ip(A_IP)


def test_corrupted_ip_header_is_not_routed(routed):
    frame = bytearray(VNET + build_frame(parse_packet(f"icmp {A_IP} > {D_IP}"), mac(A_IP), mac(GW0)))
    frame[10 + 14 + 10] ^= 0x01
    assert routed.process_batch(A, [bytes(frame)], 0.0) == []
    assert stats(routed)["ports"]["a"]["rx_drops"] == {"bad-checksum": 1}


# -- neighbours ------------------------------------------------------------------------------

def test_neighbour_queue_overflow_drops_the_oldest_and_counts(routed):
    frames = [VNET + build_frame(parse_packet(f"udp {A_IP}:1 > {D_IP}:{n}"), mac(A_IP), mac(GW0))
              for n in range(1, 21)]
    routed.process_batch(A, frames, 0.0)
    released = resolve_d(routed, 0.2)
    ports = [h.UDP.parse(t.data[10 + 34:]).dst_port for t in released]
    assert ports == list(range(5, 21))  # queue of 16: the four oldest were dropped
    assert stats(routed)["stages"]["ip4-neighbor"]["queue-overflow"] == 4


def test_unanswered_arp_is_retried_then_senders_get_host_unreachable(routed):
    original = build_frame(parse_packet(f"icmp {A_IP} > {D_IP}"), mac(A_IP), mac(GW0))
    routed.process_batch(A, [VNET + original], 0.0)
    retries = []
    for t in (1.0, 2.0):
        retries.append(routed.handle_timer(t))
    assert [[tx.port for tx in batch] for batch in retries] == [[D], [D]]  # requests 2 and 3
    (error,) = routed.handle_timer(3.0)
    _expect_icmp_error(error, to_port=A, to_ip=A_IP, icmp_type=3, code=1, rest=bytes(4),
                       original_frame=original)
    assert neighbor_rows(routed, 3.0) == []
    assert stats(routed)["stages"]["ip4-neighbor"]["resolution-failed"] == 1


def test_stale_neighbour_keeps_forwarding_and_is_reprobed(routed):
    d_asks_for_its_gateway(routed, 0.0)
    txs = send(routed, A, f"icmp {A_IP} > {D_IP}", mac(A_IP), mac(GW0), now=40.0)
    kinds = sorted((t.port, t.data[10 + 12:10 + 14]) for t in txs)
    assert kinds == [(D, b"\x08\x00"), (D, b"\x08\x06")]  # the packet, and a unicast probe
    assert stats(routed)["stages"]["ip4-neighbor"]["reprobes"] == 1


# -- trace -----------------------------------------------------------------------------------

def test_trace_names_the_route_and_why_it_won(routed):
    routed.fib.add(dataclasses.replace(routed.fib.routes()[-1], prefix=IPv4Network("10.0.0.0/8"),
                                       origin="test"))
    result = routed.tracer.dry_run("a", f"icmp {A_IP} > {D_IP}", 0.0)
    text = result["text"]
    assert "matches 10.245.1.0/24 connected (segment blue" in text
    assert "longest of the matching prefixes 10.245.1.0/24, 10.0.0.0/8" in text
    assert result["actions"] == ["hold until the next hop answers ARP"]
    assert neighbor_rows(routed, 0.0) == []  # a dry run resolves nothing

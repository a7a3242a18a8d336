"""NAT rewrites keep every checksum right: full, absent (UDP zero), partial (virtio), and inside
ICMP errors. Each result is checked against a checksum computed from scratch."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from vswitch import accel as accel_impls
from vswitch.accel import pure
from vswitch.pipeline.nat_rewrite import translate, translate_icmp_error
from vswitch.wire import builders, headers as h

addresses = st.binary(min_size=4, max_size=4)
ports = st.integers(0, 65535)


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_impls.load(request.param)


def _valid_ip_header(packet: bytes) -> bool:
    return pure.checksum(bytes(packet[:20])) == 0


def _valid_l4(packet: bytes) -> bool:
    ip = h.IPV4.parse(bytes(packet[:20]))
    segment = bytes(packet[20:ip.total_length])
    if ip.protocol == h.IpProto.ICMP:
        return pure.checksum(segment) == 0
    if ip.protocol == h.IpProto.UDP and segment[6:8] == b"\x00\x00":
        return True
    return pure.l4_checksum(ip.src, ip.dst, ip.protocol, segment) in (0, 0xFFFF) and \
        pure.sum16(segment, pure.pseudo_header_sum(ip.src, ip.dst, ip.protocol, len(segment))) == 0xFFFF


def _packet(proto, src, dst, sport, dport, payload):
    if proto == "tcp":
        l4 = builders.tcp(src=src, dst=dst, src_port=sport, dst_port=dport, flags=0x12, payload=payload)
        number = 6
    elif proto == "udp":
        l4 = builders.udp(src=src, dst=dst, src_port=sport, dst_port=dport, payload=payload)
        number = 17
    else:
        l4 = builders.icmp(type=8, code=0, rest=struct.pack("!HH", sport, 1), payload=payload)
        number = 1
    return builders.ipv4(src=src, dst=dst, protocol=number, payload=l4)


@settings(max_examples=300, deadline=None)
@given(proto=st.sampled_from(["tcp", "udp", "icmp"]), src=addresses, dst=addresses, sport=ports,
       dport=ports, payload=st.binary(max_size=64), new_src=st.none() | addresses,
       new_dst=st.none() | addresses, new_sport=st.none() | ports, new_dport=st.none() | ports,
       impl=st.sampled_from(["native", "pure"]))
def test_translate_keeps_checksums_valid(proto, src, dst, sport, dport, payload, new_src, new_dst,
                                         new_sport, new_dport, impl):
    accel = accel_impls.load(impl)
    packet = _packet(proto, src, dst, sport, dport, payload)
    out = translate(packet, src=new_src, dst=new_dst, sport=new_sport,
                    dport=new_dport if proto != "icmp" else None, accel=accel)
    ip = h.IPV4.parse(bytes(out[:20]))
    assert ip.src == (new_src or src) and ip.dst == (new_dst or dst)
    assert _valid_ip_header(out) and _valid_l4(out)
    if proto in ("tcp", "udp"):
        assert struct.unpack_from("!HH", out, 20) == (
            sport if new_sport is None else new_sport, dport if new_dport is None else new_dport)
    else:
        assert struct.unpack_from("!H", out, 24)[0] == (sport if new_sport is None else new_sport)
    assert out[20 + (20 if proto == "tcp" else 8):] == payload


def test_udp_without_checksum_stays_without(accel):
    packet = bytearray(_packet("udp", b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 1, 2, b"hi"))
    packet[26:28] = b"\x00\x00"
    out = translate(packet, dst=b"\x0a\x00\x00\x09", dport=99, accel=accel)
    assert out[26:28] == b"\x00\x00" and _valid_ip_header(out)


@settings(max_examples=200, deadline=None)
@given(proto=st.sampled_from(["tcp", "udp"]), src=addresses, dst=addresses, sport=ports,
       dport=ports, payload=st.binary(max_size=64), new_src=st.none() | addresses,
       new_dst=st.none() | addresses, new_sport=st.none() | ports, new_dport=st.none() | ports)
def test_partial_checksums_complete_to_the_right_value(proto, src, dst, sport, dport, payload,
                                                       new_src, new_dst, new_sport, new_dport):
    """A pod with checksum offload hands over the pseudo-header sum; after NAT the receiver adds
    the segment to that field and must get the checksum of the translated packet."""
    packet = bytearray(_packet(proto, src, dst, sport, dport, payload))
    at = 20 + (16 if proto == "tcp" else 6)
    number = 6 if proto == "tcp" else 17
    struct.pack_into("!H", packet, at, pure.pseudo_header_sum(src, dst, number, len(packet) - 20))
    out = translate(packet, src=new_src, dst=new_dst, sport=new_sport, dport=new_dport,
                    partial=True, accel=pure)
    # What the receiving kernel does with CHECKSUM_PARTIAL: sum from csum_start, field included.
    completed = bytearray(out)
    struct.pack_into("!H", completed, at, ~pure.sum16(bytes(out[20:])) & 0xFFFF)
    assert _valid_l4(completed)


def test_icmp_error_about_a_translated_flow_is_translated_inside(accel):
    client, vip, backend = b"\x0a\xf4\x01\x0a", b"\x0a\x60\x00\x0a", b"\x0a\xf4\x01\x0b"
    # What the backend saw and answers about: client:40000 > backend:8080.
    seen = _packet("udp", client, backend, 40000, 8080, b"query")
    error = builders.icmp(type=3, code=3, rest=bytes(4), payload=seen[:28])
    outer = builders.ipv4(src=backend, dst=client, protocol=1, payload=error)
    out = translate_icmp_error(outer, outer_src=vip, inner_dst=vip, inner_dport=80, accel=accel)
    assert _valid_ip_header(out) and pure.checksum(bytes(out[20:])) == 0
    quoted = bytes(out[28:])
    inner = h.IPV4.parse(quoted[:20])
    assert inner.src == client and inner.dst == vip and pure.checksum(quoted[:20]) == 0
    assert struct.unpack_from("!HH", quoted, 20) == (40000, 80)
    # The quoted UDP checksum now matches the packet the client really sent.
    sent = _packet("udp", client, vip, 40000, 80, b"query")
    assert quoted[26:28] == sent[26:28]

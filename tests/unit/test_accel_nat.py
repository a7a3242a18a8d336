"""The NAT rewrite, native and pure: identical bytes on random and truncated packets, and
checksums that agree with a recomputation from scratch."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vswitch.accel import native, pure

PROPERTY = settings(max_examples=400, deadline=None)

ip4 = st.binary(min_size=4, max_size=4)
port = st.one_of(st.none(), st.integers(0, 0xFFFF))


@st.composite
def packets(draw):
    """IPv4 packets with a TCP, UDP or ICMP body, valid checksums or not, sometimes a fragment,
    sometimes cut short, sometimes with IP options or a zero UDP checksum."""
    proto = draw(st.sampled_from([6, 17, 1, 47]))
    options = draw(st.sampled_from([0, 0, 4, 8]))
    body = draw(st.binary(min_size=0, max_size=64))
    if proto == 17 and draw(st.booleans()) and len(body) >= 8:
        body = body[:6] + b"\0\0" + body[8:]
    fragment = draw(st.sampled_from([0, 0, 0x2000, 0x0004, 0x2004]))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | (5 + options // 4), 0, 20 + options + len(body),
                         draw(st.integers(0, 0xFFFF)), fragment, 64, proto,
                         draw(st.integers(0, 0xFFFF)), draw(ip4), draw(ip4))
    packet = header + bytes(options) + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(packet))))
    return bytearray(packet if cut is None else packet[:cut])


@PROPERTY
@given(packets(), st.one_of(st.none(), ip4), port, st.one_of(st.none(), ip4), port, st.booleans())
def test_nat_rewrite_twins_agree(packet, src, sport, dst, dport, partial):
    results = []
    for impl in (native, pure):
        buf = bytearray(packet)
        try:
            impl.nat_rewrite(buf, src=src, sport=sport, dst=dst, dport=dport, partial=partial)
        except ValueError:
            results.append(("error", bytes(buf)))
        else:
            results.append(("ok", bytes(buf)))
    assert results[0] == results[1]
    if results[0][0] == "error":
        assert results[0][1] == bytes(packet)  # a refused packet is left as it was


def _valid_udp(src: bytes, dst: bytes, payload: bytes) -> bytearray:
    udp = struct.pack("!HHHH", 5000, 53, 8 + len(payload), 0) + payload
    csum = pure.udp_checksum(src, dst, udp)
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
    header = header[:10] + struct.pack("!H", pure.checksum(header)) + header[12:]
    return bytearray(header + udp)


@pytest.mark.parametrize("impl", [native, pure], ids=["native", "pure"])
@PROPERTY
@given(payload=st.binary(max_size=40), src=ip4, dst=ip4, sport=st.integers(0, 0xFFFF),
       dport=st.integers(0, 0xFFFF))
def test_rewritten_checksums_equal_a_recomputation(impl, payload, src, dst, sport, dport):
    packet = _valid_udp(bytes([10, 0, 0, 1]), bytes([10, 96, 0, 10]), payload)
    impl.nat_rewrite(packet, src=src, sport=sport, dst=dst, dport=dport)
    assert packet[12:16] == src and packet[16:20] == dst
    assert struct.unpack_from("!HH", packet, 20) == (sport, dport)
    assert pure.checksum(bytes(packet[:20])) == 0
    segment = bytes(packet[20:])
    (field,) = struct.unpack_from("!H", segment, 6)
    assert field != 0  # never "no checksum" after a rewrite of a checksummed datagram
    assert pure.sum16(segment, pure.pseudo_header_sum(src, dst, 17, len(segment))) == 0xFFFF


@pytest.mark.parametrize("impl", [native, pure], ids=["native", "pure"])
@pytest.mark.parametrize("bad, message", [(bytearray(19), "20 bytes"),
                                          (bytearray(b"\x44" + bytes(39)), "IHL 4")])
def test_short_or_bad_headers_are_refused(impl, bad, message):
    with pytest.raises(ValueError, match=message):
        impl.nat_rewrite(bad, src=bytes(4))

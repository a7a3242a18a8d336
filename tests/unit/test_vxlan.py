"""VXLAN on the wire: the exact bytes of an encapsulation, every reason a decapsulation refuses,
the flow-hashed source port and the overlay MTU; properties that decapsulation undoes
encapsulation and never raises, against the native and the pure checksum alike."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch import accel as accel_api
from vswitch.accel import pure
from vswitch.wire import builders, headers as h, vxlan
from vswitch.wire.vxlan import DropReason

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

VTEP_MAC, PEER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
VTEP_IP, PEER_IP = bytes([192, 168, 100, 1]), bytes([192, 168, 100, 2])
POD_MAC, REMOTE_POD_MAC = bytes.fromhex("0a580af40105"), bytes.fromhex("0a580af40205")
POD_IP, REMOTE_POD_IP = bytes([10, 244, 1, 5]), bytes([10, 244, 2, 5])
VNI, PORT = 42, h.VXLAN_IANA_PORT
ETH = h.ETH_HEADER_LEN


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_api.load(request.param)


def udp_frame(sport=1000, dport=2000, payload=b"hello", tos=0, frag=0,
              src=POD_IP, dst=REMOTE_POD_IP) -> bytes:
    """An inner frame: a UDP datagram from a pod to a pod on another node."""
    segment = builders.udp(src=src, dst=dst, src_port=sport, dst_port=dport, payload=payload)
    ip = bytearray(builders.ipv4(src=src, dst=dst, protocol=h.IpProto.UDP, payload=segment,
                                 tos=tos))
    if frag:
        ip[h.IPV4_FLAGS_FRAGMENT_OFFSET: h.IPV4_FLAGS_FRAGMENT_OFFSET + 2] = frag.to_bytes(2, "big")
        ip[10:12] = b"\0\0"
        ip[10:12] = pure.checksum(bytes(ip[:20])).to_bytes(2, "big")
    return builders.ethernet(REMOTE_POD_MAC, POD_MAC, h.EtherType.IPV4, bytes(ip))


def arp_frame() -> bytes:
    body = builders.arp(oper=h.ArpOp.REQUEST, sha=POD_MAC, spa=POD_IP, tha=bytes(6),
                        tpa=REMOTE_POD_IP)
    return builders.ethernet(b"\xff" * 6, POD_MAC, h.EtherType.ARP, body)


def encap(inner, accel=pure, **changes):
    fields = dict(outer_src_mac=VTEP_MAC, outer_dst_mac=PEER_MAC, src_ip=VTEP_IP, dst_ip=PEER_IP,
                  src_port=50000, dst_port=PORT, vni=VNI, ident=0x1234, accel=accel)
    fields.update(changes)
    return vxlan.encapsulate(inner, **fields)


def decap(frame, accel=pure, vni=VNI, port=PORT):
    return vxlan.decapsulate(frame, vni=vni, port=port, offset=ETH, accel=accel)


def reference_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def patched(frame: bytes, at: int, new: bytes, fix_ip_checksum=True) -> bytes:
    """``frame`` with ``new`` written at ``at`` and, by default, the outer IPv4 header checksum
    made right again, so that only the intended field is wrong."""
    out = bytearray(frame)
    out[at: at + len(new)] = new
    if fix_ip_checksum:
        ihl = (out[ETH] & 0x0F) * 4
        out[ETH + 10: ETH + 12] = b"\0\0"
        out[ETH + 10: ETH + 12] = reference_checksum(bytes(out[ETH: ETH + ihl])).to_bytes(2, "big")
    return bytes(out)


IP_AT, UDP_AT = ETH, ETH + 20
VXLAN_AT = UDP_AT + h.UDP_HEADER_LEN


# -- the bytes on the wire -----------------------------------------------------------------------

def test_the_encapsulation_is_byte_for_byte_what_linux_sends(accel):
    """Outer headers as a Linux vxlan device (id 42, dstport 4789, noudpcsum, df unset, ttl unset
    = 64, tos 0) puts them around a 47-byte inner frame; laid out by hand."""
    inner = udp_frame()
    assert len(inner) == 47
    expected = bytes.fromhex(
        "020000000002" "020000000001" "0800"  # outer Ethernet: to the peer VTEP, IPv4
        "45" "00" "0053"  # IPv4, IHL 5; TOS 0; total length 20 + 8 + 8 + 47 = 83
        "1234" "0000"  # identification; no DF, no fragment
        "40" "11" "0000"  # TTL 64; UDP; checksum (filled in below)
        "c0a86401" "c0a86402"  # 192.168.100.1 > 192.168.100.2
        "c350" "12b5" "003f" "0000"  # UDP 50000 > 4789, length 8 + 8 + 47 = 63, no checksum
        "08" "000000" "00002a" "00"  # VXLAN: I flag, reserved, VNI 42, reserved
    ) + inner
    header = expected[IP_AT: IP_AT + 20]
    expected = patched(expected, IP_AT + 10, reference_checksum(header).to_bytes(2, "big"),
                       fix_ip_checksum=False)
    # By hand: 4500 + 0053 + 1234 + 4011 + c0a8 + 6401 + c0a8 + 6402 = 2e0eb, folded e0ed, ~ 1f12.
    assert expected[IP_AT + 10: IP_AT + 12] == bytes.fromhex("1f12")
    assert encap(inner, accel) == expected


# Captured on the underlay side of a Linux 6.18 vxlan device made as flannel makes one (``ip link
# add vx42 type vxlan id 42 dstport 4789 local 192.168.100.1 nolearning``, static FDB and neighbour
# entries), with transmit checksum offload off on the underlay veth so that the UDP checksum is
# final: ``ping -Q 0x03 10.244.2.5`` from 10.244.1.0 (inner TOS CE, DF set).
LINUX_FRAME = bytes.fromhex(
    "1e607191dfcd" "caad6bc54584" "0800"
    "4502" "0086" "8899" "0000" "40" "11" "a877" "c0a86401" "c0a86402"  # ECT(0) for CE, no DF
    "dc58" "12b5" "0072" "74a4"  # source port from Linux's flow hash; udpcsum is its default
    "08000000" "00002a00"
    "020000000a02" "020000000a01" "0800"
    "4503005449c940004001d7f00af401000af40205"
    "0800e78c6f36000176130f6b0000000057ea050000000000"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
)


def test_a_frame_linux_sent_decapsulates_and_encapsulates_back_to_the_same_bytes(accel):
    result = decap(LINUX_FRAME, accel)
    assert (result.src, result.dst, result.src_port, result.vni) == (VTEP_IP, PEER_IP, 56408, 42)
    assert result.inner == LINUX_FRAME[vxlan.OUTER_HEADERS_LEN:]
    fields = dict(outer_src_mac=LINUX_FRAME[6:12], outer_dst_mac=LINUX_FRAME[:6], src_ip=VTEP_IP,
                  dst_ip=PEER_IP, src_port=56408, dst_port=PORT, vni=42, ident=0x8899,
                  accel=accel)
    assert vxlan.encapsulate(result.inner, udp_checksum=True, **fields) == LINUX_FRAME
    # RFC 7348's choice, the default here: the same bytes but no UDP checksum.
    assert vxlan.encapsulate(result.inner, **fields) == patched(LINUX_FRAME, UDP_AT + 6, b"\0\0")


def test_the_header_declaration_matches_rfc_7348():
    raw = bytes.fromhex("08000000abcdef00")
    parsed = h.VXLAN.parse(raw)
    assert (parsed.flags, parsed.reserved1, parsed.vni, parsed.reserved2) == (8, 0, 0xABCDEF, 0)
    assert h.VXLAN.sizeof() == h.VXLAN_HEADER_LEN == 8
    assert h.VXLAN.build(dict(flags=8, reserved1=0, vni=0xABCDEF, reserved2=0)) == raw


def test_the_outer_header_copies_the_inner_ecn_field_as_linux_does():
    """RFC 6040 normal mode: ECT(0) and ECT(1) copied, CE sent as ECT(0), DSCP not copied."""
    for inner_tos, outer_tos in ((0x00, 0), (0x01, 1), (0x02, 2), (0x03, 2), (0xB8, 0),
                                 (0xBB, 2)):
        frame = encap(udp_frame(tos=inner_tos))
        assert h.IPV4.parse(frame[IP_AT: IP_AT + 20]).tos == outer_tos, hex(inner_tos)
    assert h.IPV4.parse(encap(arp_frame())[IP_AT: IP_AT + 20]).tos == 0


def test_encapsulation_refuses_a_vni_beyond_24_bits_and_a_frame_beyond_one_packet():
    with pytest.raises(ValueError, match="24-bit"):
        encap(udp_frame(), vni=1 << 24)
    assert decap(encap(udp_frame(), vni=0xFFFFFF), vni=0xFFFFFF).vni == 0xFFFFFF
    largest = bytes(vxlan.MAX_INNER_FRAME_LEN)
    assert h.IPV4.parse(encap(largest)[IP_AT: IP_AT + 20]).total_length == 0xFFFF
    assert decap(encap(largest)).inner == largest
    with pytest.raises(ValueError, match="does not fit one IPv4 packet"):
        encap(largest + b"\0")


# -- decapsulation -------------------------------------------------------------------------------

def test_decapsulation_returns_the_inner_frame_and_the_outer_source(accel):
    inner = udp_frame()
    result = decap(encap(inner, accel, src_port=40001), accel)
    assert result == vxlan.Decapsulated(inner=inner, src=VTEP_IP, dst=PEER_IP, src_port=40001,
                                        vni=VNI)


def test_decapsulation_takes_an_ip_packet_as_well_as_a_frame():
    inner = arp_frame()
    assert vxlan.decapsulate(encap(inner)[ETH:], vni=VNI, port=PORT).inner == inner


def test_ethernet_padding_and_bytes_beyond_the_udp_length_are_not_part_of_the_inner_frame():
    inner = udp_frame()
    assert decap(encap(inner) + b"\0" * 7).inner == inner
    # A UDP length that ends before the IPv4 payload: the rest is not VXLAN payload (Linux trims).
    padded = encap(inner + b"\xee" * 3)
    udp_length = h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN + len(inner)
    assert decap(patched(padded, UDP_AT + 4, udp_length.to_bytes(2, "big"))).inner == inner


def test_a_correct_udp_checksum_is_accepted_and_a_wrong_one_refused(accel):
    """Linux verifies a non-zero UDP checksum (a sender with ``udpcsum`` sets one)."""
    frame = encap(udp_frame())
    segment = frame[UDP_AT:]
    good = accel.udp_checksum(VTEP_IP, PEER_IP, segment).to_bytes(2, "big")
    assert decap(patched(frame, UDP_AT + 6, good), accel).inner == udp_frame()
    bad = ((int.from_bytes(good, "big") + 1) & 0xFFFF or 1).to_bytes(2, "big")
    assert decap(patched(frame, UDP_AT + 6, bad), accel) is DropReason.BAD_UDP_CHECKSUM


def test_a_partial_udp_checksum_passes_when_the_caller_says_so(accel):
    """A frame whose virtio-net header says NEEDS_CSUM carries only the pseudo-header sum."""
    frame = patched(encap(udp_frame()), UDP_AT + 6, b"\x12\x34")
    assert decap(frame, accel) is DropReason.BAD_UDP_CHECKSUM
    result = vxlan.decapsulate(frame, vni=VNI, port=PORT, offset=ETH, verify_udp_checksum=False,
                               accel=accel)
    assert result.inner == udp_frame()


def _cases():
    frame = encap(udp_frame())
    ihl6 = patched(frame, IP_AT, b"\x46")  # 24-byte header claimed, the 4 extra bytes are UDP's
    return {
        "empty": (b"", DropReason.SHORT),
        "no whole IPv4 header": (frame[: IP_AT + 19], DropReason.SHORT),
        "IPv6 version": (patched(frame, IP_AT, b"\x65"), DropReason.BAD_IP_HEADER),
        "IHL below 5": (patched(frame, IP_AT, b"\x44"), DropReason.BAD_IP_HEADER),
        "header longer than the packet": (patched(frame[: IP_AT + 24], IP_AT, b"\x47"),
                                          DropReason.SHORT),
        "bad header checksum": (patched(frame, IP_AT + 8, b"\x3f", fix_ip_checksum=False),
                                DropReason.BAD_IP_CHECKSUM),
        "truncated": (frame[:-1], DropReason.SHORT),
        "total length below the header": (patched(frame, IP_AT + 2, b"\x00\x13"),
                                          DropReason.BAD_IP_HEADER),
        "more fragments": (patched(frame, IP_AT + 6, b"\x20\x00"), DropReason.FRAGMENT),
        "later fragment": (patched(frame, IP_AT + 6, b"\x00\x10"), DropReason.FRAGMENT),
        "TCP": (patched(frame, IP_AT + 9, b"\x06"), DropReason.NOT_UDP),
        "no whole UDP header": (patched(frame[: UDP_AT + 7], IP_AT + 2, b"\x00\x1b"),
                                DropReason.SHORT),
        "wrong port": (patched(frame, UDP_AT + 2, (8472).to_bytes(2, "big")),
                       DropReason.WRONG_PORT),
        "UDP length below its header": (patched(frame, UDP_AT + 4, b"\x00\x07"),
                                        DropReason.BAD_UDP_LENGTH),
        "UDP length beyond the packet": (patched(frame, UDP_AT + 4, b"\x00\x4e"),
                                         DropReason.BAD_UDP_LENGTH),
        "IHL 6 puts the ports elsewhere": (ihl6, DropReason.WRONG_PORT),
        "inner frame shorter than an Ethernet header": (encap(b"\x01" * 13), DropReason.SHORT),
        "no whole VXLAN header": (
            patched(patched(frame[: VXLAN_AT + 7], IP_AT + 2, (20 + 15).to_bytes(2, "big")),
                    UDP_AT + 4, (15).to_bytes(2, "big")), DropReason.SHORT),
        "flags without the I bit": (patched(frame, VXLAN_AT, b"\x00"), DropReason.NO_VNI_FLAG),
        "no I bit, other VNI": (patched(frame, VXLAN_AT, b"\x00\x00\x00\x00\x00\x00\x07"),
                                DropReason.NO_VNI_FLAG),
        "other VNI": (patched(frame, VXLAN_AT + 4, b"\x00\x00\x07"), DropReason.WRONG_VNI),
        "other VNI and reserved bits": (patched(frame, VXLAN_AT + 4, b"\x00\x00\x07\x01"),
                                        DropReason.WRONG_VNI),
        "an unknown flag (GBP's G bit)": (patched(frame, VXLAN_AT, b"\x88"),
                                          DropReason.RESERVED_BITS),
        "an unknown low flag": (patched(frame, VXLAN_AT, b"\x09"), DropReason.RESERVED_BITS),
        "first reserved field": (patched(frame, VXLAN_AT + 3, b"\x01"), DropReason.RESERVED_BITS),
        "first reserved field, high bit": (patched(frame, VXLAN_AT + 1, b"\x80"),
                                           DropReason.RESERVED_BITS),
        "last reserved byte": (patched(frame, VXLAN_AT + 7, b"\x01"), DropReason.RESERVED_BITS),
    }


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_malformed_packet_is_refused_with_its_reason(name, accel):
    packet, reason = CASES[name]
    assert decap(packet, accel) is reason


def test_every_reason_has_a_case_and_a_readable_description():
    assert {reason for _, reason in CASES.values()} | {DropReason.BAD_UDP_CHECKSUM} == set(
        DropReason)
    assert all(len(reason.value) > 20 for reason in DropReason)


# -- properties ----------------------------------------------------------------------------------

ip4 = st.binary(min_size=4, max_size=4)
mac = st.binary(min_size=6, max_size=6)
port = st.integers(0, 0xFFFF)
frames = st.binary(min_size=ETH, max_size=300)


@PROPERTY
@given(inner=frames, src=ip4, dst=ip4, sport=port, dport=port, vni=st.integers(0, 0xFFFFFF),
       ident=port, ttl=st.integers(1, 255), smac=mac, dmac=mac, checksum=st.booleans())
def test_decapsulation_undoes_encapsulation(accel, inner, src, dst, sport, dport, vni, ident, ttl,
                                            smac, dmac, checksum):
    frame = vxlan.encapsulate(inner, outer_src_mac=smac, outer_dst_mac=dmac, src_ip=src,
                              dst_ip=dst, src_port=sport, dst_port=dport, vni=vni, ident=ident,
                              ttl=ttl, udp_checksum=checksum, accel=accel)
    assert (frame[UDP_AT + 6: UDP_AT + 8] != b"\0\0") == checksum
    assert len(frame) == len(inner) + vxlan.OUTER_HEADERS_LEN
    assert frame[:ETH] == dmac + smac + b"\x08\x00"
    result = vxlan.decapsulate(frame, vni=vni, port=dport, offset=ETH, accel=accel)
    assert result == vxlan.Decapsulated(inner=inner, src=src, dst=dst, src_port=sport, vni=vni)


@PROPERTY
@given(data=st.binary(max_size=200), vni=st.integers(0, 0xFFFFFF), offset=st.integers(0, 20))
def test_decapsulation_never_raises_on_random_bytes(accel, data, vni, offset):
    assert isinstance(vxlan.decapsulate(data, vni=vni, port=PORT, offset=offset, accel=accel),
                      (vxlan.Decapsulated, DropReason))


@PROPERTY
@given(inner=frames, cut=st.integers(0, 400), flips=st.lists(
    st.tuples(st.integers(0, 120), st.integers(1, 255)), max_size=4))
def test_decapsulation_never_raises_on_damaged_packets(accel, inner, cut, flips):
    """Truncated and corrupted real encapsulations reach the deeper checks that random bytes
    seldom do."""
    frame = bytearray(encap(inner, accel)[:cut])
    for at, mask in flips:
        if at < len(frame):
            frame[at] ^= mask
    result = decap(bytes(frame), accel)
    assert isinstance(result, (vxlan.Decapsulated, DropReason))
    if cut < len(inner) + vxlan.OUTER_HEADERS_LEN and not flips:
        assert result is DropReason.SHORT


# -- the source port -----------------------------------------------------------------------------

def test_the_source_port_is_the_same_in_every_process_and_run(accel):
    """Pinned values: no per-process salt can move them (``hash()`` would), and the C hash
    gives the same ones."""
    flow = vxlan.inner_flow_key(udp_frame())
    assert vxlan.source_port(flow) == vxlan.source_port(flow)
    assert [vxlan.source_port(flow, accel=accel), vxlan.source_port(flow, seed=1, accel=accel),
            vxlan.source_port(b"", accel=accel)] == [53019, 35155, 32768]


@given(flow=st.binary(max_size=40), low=st.integers(1, 0xFFFF), span=st.integers(0, 0xFFFF),
       seed=st.integers(0, 2**64 - 1))
def test_the_source_port_stays_in_its_range(flow, low, span, seed):
    high = min(low + span, 0xFFFF)
    assert low <= vxlan.source_port(flow, seed=seed, low=low, high=high) <= high
    assert (vxlan.SOURCE_PORT_LOW <= vxlan.source_port(flow, seed=seed)
            <= vxlan.SOURCE_PORT_HIGH)


def test_the_source_port_range_must_be_a_range():
    for low, high in ((0, 10), (10, 9), (1, 0x10000)):
        with pytest.raises(ValueError):
            vxlan.source_port(b"x", low=low, high=high)


def test_different_flows_spread_over_the_range():
    """1000 flows that differ only in the client port: a uniform hash over 28232 ports gives
    about 18 collisions; each quarter of the range gets about a quarter of them."""
    ports = [vxlan.source_port(vxlan.inner_flow_key(udp_frame(sport=20000 + i)))
             for i in range(1000)]
    assert len(set(ports)) >= 950
    quarter = (vxlan.SOURCE_PORT_HIGH - vxlan.SOURCE_PORT_LOW + 1) / 4
    counts = [0] * 4
    for p in ports:
        counts[int((p - vxlan.SOURCE_PORT_LOW) // quarter)] += 1
    assert min(counts) >= 200, counts
    # The seed decides too: another node spreads the same flows differently.
    flow = vxlan.inner_flow_key(udp_frame())
    assert len({vxlan.source_port(flow, seed=k) for k in range(50)}) >= 45


def test_the_flow_key_is_the_five_tuple_except_for_fragments_and_non_ip():
    base = vxlan.inner_flow_key(udp_frame())
    assert base == bytes([17]) + POD_IP + REMOTE_POD_IP + (1000).to_bytes(2, "big") + (
        2000).to_bytes(2, "big")
    assert vxlan.inner_flow_key(udp_frame(payload=b"other bytes", tos=0x10)) == base
    assert vxlan.inner_flow_key(udp_frame(sport=1001)) != base
    assert vxlan.inner_flow_key(udp_frame(dport=2001)) != base
    assert vxlan.inner_flow_key(udp_frame(dst=bytes([10, 244, 2, 6]))) != base
    # Every fragment of a datagram hashes alike, the first one included: no ports.
    for frag in (h.IPV4_FLAG_MF, 0x0010, h.IPV4_FLAG_DF):
        key = vxlan.inner_flow_key(udp_frame(frag=frag))
        assert key == (base if frag == h.IPV4_FLAG_DF else base[:9]), hex(frag)
    segment = builders.tcp(src=POD_IP, dst=REMOTE_POD_IP, src_port=33000, dst_port=80,
                           flags=h.TcpFlag.SYN)
    tcp = builders.ethernet(REMOTE_POD_MAC, POD_MAC, h.EtherType.IPV4, builders.ipv4(
        src=POD_IP, dst=REMOTE_POD_IP, protocol=h.IpProto.TCP, payload=segment))
    assert vxlan.inner_flow_key(tcp)[9:] == (33000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert vxlan.inner_flow_key(arp_frame()) == arp_frame()[:ETH]
    assert vxlan.inner_flow_key(udp_frame()[:ETH + 20]) == base[:9]  # no room for the ports


# -- MTU -----------------------------------------------------------------------------------------

def test_the_overlay_mtu_leaves_room_for_the_outer_headers():
    assert vxlan.MTU_OVERHEAD == vxlan.OUTER_HEADERS_LEN == 50
    assert vxlan.overlay_mtu(1500) == 1450
    assert vxlan.overlay_mtu(9000) == 8950
    assert vxlan.overlay_mtu(118) == 68
    with pytest.raises(ValueError, match="below the IPv4 minimum"):
        vxlan.overlay_mtu(117)
    # A packet of exactly the overlay MTU makes an outer packet of exactly the underlay MTU.
    inner = udp_frame(payload=bytes(1450 - 28))
    assert len(inner) == ETH + 1450
    assert h.IPV4.parse(encap(inner)[IP_AT: IP_AT + 20]).total_length == 1500

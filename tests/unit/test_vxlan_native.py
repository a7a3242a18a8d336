"""The datapath's VXLAN in C (native/vxlan.c) does byte for byte what the Python fast path does.

``vs_vxlan_wrap`` is held to ``FastPath._encapsulated`` after ``tunnel.outer_vnet`` (what a cache
hit makes of a routed packet for another node), ``vs_vxlan_open`` to ``FastPath._opened`` (what a
cache hit makes of VXLAN for our VTEP), and ``vs_vxlan_source_port`` to ``vxlan.source_port``.
Each C call gets buffers of exactly the length it is told, so a sanitizer build
(``python3 native/sanitize.py tests/unit/test_vxlan_native.py``) catches any read past them.
"""
from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vswitch.accel import pure
from vswitch.core.fast_path import FastPath
from vswitch.core.flow_cache import CacheEntry
from vswitch.pipeline import tunnel
from vswitch.tables.overlay import LocalVtep, RemoteNode
from vswitch.wire import headers as h, tunnel_offload, vxlan

native = pytest.importorskip("vswitch._native")
ffi, lib = native.ffi, native.lib

PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ETH = h.ETH_HEADER_LEN
OUR_IP, PEER_IP = IPv4Address("192.0.2.2").packed, IPv4Address("192.0.2.3").packed
OUR_VTEP_MAC, PEER_VTEP_MAC = bytes.fromhex("0a58c0000201"), bytes.fromhex("0a58c0000301")
GATEWAY_MAC, UPLINK_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
REWRITE = GATEWAY_MAC + UPLINK_MAC  # the outer Ethernet destination and source
VNI, PORT = 1, h.VXLAN_IANA_PORT
SEED = 0x0123456789ABCDEF
POD_IP, REMOTE_POD_IP = IPv4Address("10.244.1.10").packed, IPv4Address("10.244.2.10").packed
MAX_IP_LEN = 0xFFFF


class Identification:
    """The overlay table's part that encapsulation uses: the next outer identification."""

    def __init__(self):
        self.ident = 0

    def next_ident(self) -> int:
        return self.ident


VTEP = LocalVtep(OUR_IP, OUR_VTEP_MAC, VNI, PORT, 1450, source_port_seed=SEED)
IDENTS = Identification()
ENCAPSULATION = tunnel.Encapsulation(
    RemoteNode("lab2", IPv4Address(PEER_IP), None, "0a:58:c0:00:03:01"),
    PEER_VTEP_MAC + OUR_VTEP_MAC, VTEP, PEER_IP, IDENTS)
ENTRY = CacheEntry(0, 9, None, None, REWRITE, encap=ENCAPSULATION)
FAST_PATH = FastPath(pure, None, None, vtep=VTEP)
PEER_FAST_PATH = FastPath(pure, None, None, vtep=LocalVtep(PEER_IP, PEER_VTEP_MAC, VNI, PORT, 1450))


def action(vni: int = VNI, port: int = PORT, vtep_mac: bytes = OUR_VTEP_MAC, seed: int = SEED):
    """The datapath action of an encapsulating decision towards lab2, which also names our VTEP
    for decapsulation."""
    a = ffi.new("vs_dp_action *")
    a.kind = lib.VS_DP_FORWARD
    a.encap = 1
    ffi.memmove(a.rewrite, REWRITE, 12)
    ffi.memmove(a.encap_inner_macs, ENCAPSULATION.inner_macs, 12)
    ffi.memmove(a.encap_src_ip, OUR_IP, 4)
    ffi.memmove(a.encap_dst_ip, PEER_IP, 4)
    a.encap_port = port
    a.encap_vni = vni
    a.encap_hash_seed = seed
    ffi.memmove(a.decap_vtep_mac, vtep_mac, 6)
    return a


def exact(data: bytes):
    """A C buffer of exactly ``len(data)`` bytes: a sanitizer sees any read past it."""
    buf = ffi.new("uint8_t[]", max(len(data), 1))
    ffi.memmove(buf, data, len(data))
    return buf


def c_wrap(a, vnet: bytes, ip: bytes, ident: int, cap: int | None = None) -> bytes | None:
    cap = len(vnet) + 64 + len(ip) if cap is None else cap
    out = ffi.new("uint8_t[]", max(cap, 1))
    n = lib.vs_vxlan_wrap(a, exact(vnet), len(vnet), exact(ip), len(ip), ident, out, cap)
    assert n == -1 or 0 <= n <= cap
    return None if n < 0 else bytes(ffi.buffer(out, n))


def py_wrap(vnet: bytes, ip: bytes, ident: int) -> bytes | None:
    """What a cache hit sends for the routed packet ``ip`` read with ``vnet``: FastPath.apply's
    header conversion, then FastPath._encapsulated."""
    outer = tunnel.outer_vnet(vnet, ETH + len(ip))
    if outer is None:
        return None
    IDENTS.ident = ident
    ihl = (ip[0] & 0x0F) * 4
    try:
        return FAST_PATH._encapsulated(ENTRY, outer, ip[:ihl], memoryview(ip)[ihl:])
    except ValueError:  # an inner frame beyond one IPv4 packet: the MTU check never lets it by
        return None


def c_open(a, frame: bytes, l2: int, cap: int | None = None) -> bytes | None:
    cap = len(frame) if cap is None else cap
    out = ffi.new("uint8_t[]", max(cap, 1))
    n = lib.vs_vxlan_open(a, exact(frame), len(frame), l2, out, cap)
    assert n == -1 or 0 <= n <= cap
    return None if n < 0 else bytes(ffi.buffer(out, n))


def py_open(frame: bytes, l2: int) -> bytes | None:
    return FAST_PATH._opened(FAST_PATH.tunnel_end, frame, l2)


# -- routed inner packets ------------------------------------------------------------------------

def ipv4_packet(proto: int, tos: int, ttl: int, options: bytes, fragment: int,
                payload_len: int, total: int | None = None) -> bytes:
    """An IPv4 packet of protocol ``proto`` (a minimal L4 header at the front of the payload)."""
    ihl = 5 + len(options) // 4
    if proto == h.IpProto.TCP:
        l4 = struct.pack("!HHIIBBHHH", 40000, 80, 1, 2, 5 << 4, 0x10, 1000, 0, 0)
    elif proto == h.IpProto.UDP:
        l4 = struct.pack("!HHHH", 40000, 5353, 8 + payload_len, 0)
    else:
        l4 = struct.pack("!BBHHH", 8, 0, 0, 7, 1)
    body = (l4 + bytes(range(256)) * (payload_len // 256 + 1))[: max(payload_len, 0)]
    length = ihl * 4 + len(body) if total is None else total
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, length & 0xFFFF, 1, fragment,
                                   ttl, proto, 0, POD_IP, REMOTE_POD_IP) + options)
    header[10:12] = pure.checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + body


u16 = st.integers(0, 0xFFFF)
inner_packets = st.builds(
    ipv4_packet,
    proto=st.sampled_from([h.IpProto.TCP, h.IpProto.UDP, h.IpProto.ICMP, 47]),
    tos=st.integers(0, 255),
    ttl=st.integers(1, 63),
    options=st.sampled_from([b"", b"\x01\x01\x01\x00", bytes(40)]),
    fragment=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x3FFF]),
    payload_len=st.one_of(st.integers(0, 200), st.integers(1300, 1500),
                          st.integers(MAX_IP_LEN - 80, MAX_IP_LEN - 20)),
)


def legacy_vnet(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


flag_values = st.one_of(st.sampled_from([0, 1, 2, 3, 0x08, 0x09, 0x0A, 0x0B]),
                        st.integers(0, 255))
csum_starts = st.one_of(st.sampled_from([0, 33, 34, 54, 63, 64, 83, 84, 104, 118]),
                        st.integers(0, 0xFFFF))
csum_offsets = st.one_of(st.sampled_from([6, 16]), u16)


def random_legacy_vnet(draw, gso_types) -> bytes:
    return legacy_vnet(draw(flag_values), draw(st.one_of(st.sampled_from(gso_types),
                                                         st.integers(0, 255))),
                       draw(st.one_of(st.sampled_from([0, 54, 66, 104]), u16)), draw(u16),
                       draw(csum_starts), draw(csum_offsets))


@st.composite
def vnets_to_wrap(draw) -> bytes:
    """A pod's header: none, 10 bytes or 24; plain, NEEDS_CSUM, DATA_VALID or TCP GSO with the
    values a kernel writes, or with random fields."""
    size = draw(st.sampled_from([0, 10, 24]))
    if not size:
        return b""
    csum_offset = draw(st.sampled_from([6, 16]))
    legacy = draw(st.sampled_from([
        legacy_vnet(0, 0, 0, 0, 0, 0),
        legacy_vnet(h.VNET_F_DATA_VALID, 0, 0, 0, 0, 0),
        legacy_vnet(h.VNET_F_NEEDS_CSUM, 0, 0, 0, 34, csum_offset),
        legacy_vnet(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_TCPV4, 66, 1448, 34, 16),
        legacy_vnet(h.VNET_F_NEEDS_CSUM, h.VNET_GSO_TCPV4 | h.VNET_GSO_ECN, 54, 1400, 34, 16),
        None]))
    if legacy is None:
        legacy = random_legacy_vnet(draw, [0, 1, 4, 0x81, 0x84, 3, 5, 0x21])
    return legacy + draw(st.one_of(st.just(bytes(size - 10)),
                                   st.binary(min_size=size - 10, max_size=size - 10)))


@PROPERTY
@given(ip=inner_packets, vnet=vnets_to_wrap(), ident=u16)
@example(ip=ipv4_packet(6, 3, 63, b"", 0x4000, 1000),
         vnet=legacy_vnet(1, h.VNET_GSO_TCPV4, 54, 1400, 34, 16) + bytes(14), ident=7)
@example(ip=ipv4_packet(17, 1, 63, b"", 0, 100), vnet=legacy_vnet(1, 0, 0, 0, 34, 6), ident=1)
@example(ip=ipv4_packet(17, 0, 63, b"", 0, MAX_IP_LEN - 28), vnet=b"", ident=1)
@example(ip=ipv4_packet(17, 0, 63, b"", 0, vxlan.MAX_INNER_FRAME_LEN - ETH - 28), vnet=b"",
         ident=1)
@example(ip=ipv4_packet(17, 0, 63, b"", 0, vxlan.MAX_INNER_FRAME_LEN - ETH - 27),
         vnet=legacy_vnet(1, 0, 0, 0, 65480, 6), ident=1)
def test_wrap_is_the_fast_paths_encapsulation(ip, vnet, ident):
    expected = py_wrap(vnet, ip, ident)
    got = c_wrap(action(), vnet, ip, ident)
    assert got == expected
    if expected is not None:
        assert c_wrap(action(), vnet, ip, ident, cap=len(expected) - 1) is None


def test_wrap_writes_the_headers_the_declarations_describe():
    """One plain case read back with the construct declarations (the oracle)."""
    ip = ipv4_packet(h.IpProto.UDP, 0x03, 63, b"", 0, 30)
    frame = c_wrap(action(), b"", ip, 0x1234)
    eth = h.ETHERNET.parse(frame)
    outer = h.IPV4.parse(frame[ETH:])
    udp = h.UDP.parse(frame[ETH + 20:])
    vx = h.VXLAN.parse(frame[ETH + 28:])
    assert (eth.dst, eth.src, eth.ethertype) == (GATEWAY_MAC, UPLINK_MAC, h.EtherType.IPV4)
    assert (outer.tos, outer.identification, outer.ttl, outer.src, outer.dst) == (
        0x02, 0x1234, 64, OUR_IP, PEER_IP)
    assert pure.checksum(frame[ETH: ETH + 20]) == 0
    assert (udp.dst_port, udp.checksum, udp.length) == (PORT, 0, 8 + 8 + ETH + len(ip))
    assert vx.vni == VNI
    assert frame[ETH + 36:] == PEER_VTEP_MAC + OUR_VTEP_MAC + b"\x08\x00" + ip


@PROPERTY
@given(data=st.binary(max_size=80), vnet=vnets_to_wrap())
def test_wrap_of_anything_declines_or_matches(data, vnet):
    """Bytes the datapath never hands over (it passes validated IPv4 only): no crash, and
    where C wraps it wraps as Python does."""
    got = c_wrap(action(), vnet, data, 1)
    if got is not None:
        assert got == py_wrap(vnet, data, 1)


def test_wrap_declines_a_vni_beyond_24_bits_and_other_header_sizes():
    ip = ipv4_packet(h.IpProto.UDP, 0, 63, b"", 0, 30)
    assert c_wrap(action(vni=1 << 24), b"", ip, 1) is None
    assert c_wrap(action(), bytes(12), ip, 1) is None


# -- VXLAN for our VTEP --------------------------------------------------------------------------

def inner_frame(proto: int, size: int, dst_mac: bytes = OUR_VTEP_MAC,
                src_mac: bytes = PEER_VTEP_MAC, tos: int = 0) -> bytes:
    return dst_mac + src_mac + b"\x08\x00" + ipv4_packet(proto, tos, 63, b"", 0, size)


def encapsulated(inner: bytes, *, vnet: bytes = b"", udp_checksum: bool = False,
                 vni: int = VNI, port: int = PORT) -> bytes:
    """lab2's VXLAN frame to us carrying ``inner``, behind ``vnet``."""
    return vnet + vxlan.encapsulate(
        inner, outer_src_mac=GATEWAY_MAC, outer_dst_mac=UPLINK_MAC, src_ip=PEER_IP,
        dst_ip=OUR_IP, src_port=50000, dst_port=port, vni=vni, ident=9,
        udp_checksum=udp_checksum)


def refreshed_ip_checksum(frame: bytearray, l3: int, ihl: int = 20) -> bytearray:
    frame[l3 + 10: l3 + 12] = b"\x00\x00"
    frame[l3 + 10: l3 + 12] = pure.checksum(bytes(frame[l3: l3 + ihl])).to_bytes(2, "big")
    return frame


@st.composite
def vnets_to_open(draw) -> bytes:
    """The uplink's header: none, 10 bytes or 24; plain, partial checksums (of the outer UDP or
    of the inner frame), DATA_VALID, the tunnel checksum flag, UDP-tunnel GSO with right or wrong
    offsets, or random fields."""
    size = draw(st.sampled_from([0, 10, 24]))
    if not size:
        return b""
    legacy = draw(st.sampled_from([
        legacy_vnet(0, 0, 0, 0, 0, 0),
        legacy_vnet(h.VNET_F_DATA_VALID, 0, 0, 0, 0, 0),
        legacy_vnet(h.VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6),  # the outer UDP checksum
        legacy_vnet(h.VNET_F_NEEDS_CSUM, 0, 0, 0, 84, draw(st.sampled_from([6, 16]))),
        legacy_vnet(h.VNET_F_DATA_VALID | tunnel_offload.VNET_F_UDP_TUNNEL_CSUM, 0, 0, 0, 0, 0),
        legacy_vnet(h.VNET_F_NEEDS_CSUM | tunnel_offload.VNET_F_UDP_TUNNEL_CSUM, 0, 104, 0, 84,
                    16),
        legacy_vnet(h.VNET_F_NEEDS_CSUM, 0x21, 104, 1400, 84, 16),
        legacy_vnet(h.VNET_F_NEEDS_CSUM | tunnel_offload.VNET_F_UDP_TUNNEL_CSUM, 0xA1, 116, 1448,
                    84, 16),
        None]))
    if legacy is None:
        legacy = random_legacy_vnet(draw, [0, 0x21, 0x24, 0xA1, 0x41, 0x61, 0x01, 0x20])
    if size == 10:
        return legacy
    tail = struct.pack("<HIHH", 0, 0, 0, 0) + struct.pack(
        "<HH", draw(st.one_of(st.just(34), u16)), draw(st.one_of(st.just(64), u16)))
    return legacy + draw(st.one_of(st.just(tail), st.binary(min_size=14, max_size=14)))


@PROPERTY
@given(proto=st.sampled_from([h.IpProto.TCP, h.IpProto.UDP, h.IpProto.ICMP]),
       size=st.one_of(st.integers(0, 100), st.integers(1400, 1500)), tos=st.integers(0, 255),
       vnet=vnets_to_open(), udp_checksum=st.booleans(), padding=st.binary(max_size=8))
def test_open_is_the_fast_paths_decapsulation(proto, size, tos, vnet, udp_checksum, padding):
    frame = encapsulated(inner_frame(proto, size, tos=tos), vnet=vnet,
                         udp_checksum=udp_checksum) + padding
    l2 = len(vnet)
    expected = py_open(frame, l2)
    assert c_open(action(), frame, l2) == expected
    if expected is not None:
        assert c_open(action(), frame, l2, cap=len(expected) - 1) is None


@PROPERTY
@given(vnet=vnets_to_open(), mutation=st.sampled_from(
    ["port", "vni", "flags", "reserved", "inner-dst", "inner-src", "ce", "ect", "df", "mf",
     "offset", "options", "not-udp", "udp-length", "total-length", "ip-checksum"]),
    udp_checksum=st.booleans())
def test_open_decides_as_the_fast_path_on_each_header_change(vnet, mutation, udp_checksum):
    l2 = len(vnet)
    l3, udp, vx = l2 + ETH, l2 + ETH + 20, l2 + ETH + 28
    frame = bytearray(encapsulated(inner_frame(h.IpProto.UDP, 30), vnet=vnet,
                                   udp_checksum=udp_checksum))
    if mutation == "port":
        frame[udp + 2: udp + 4] = (PORT + 1).to_bytes(2, "big")
    elif mutation == "vni":
        frame[vx + 6] ^= 0x02
    elif mutation == "flags":
        frame[vx] = 0x0C
    elif mutation == "reserved":
        frame[vx + 7] = 1
    elif mutation == "inner-dst":
        frame[vx + 8] ^= 0x80
    elif mutation == "inner-src":
        frame[vx + 14: vx + 20] = OUR_VTEP_MAC
    elif mutation in ("ce", "ect", "df", "mf", "offset", "not-udp", "total-length"):
        at, value = {"ce": (1, 0x03), "ect": (1, 0x02), "df": (6, 0x40), "mf": (6, 0x20),
                     "offset": (7, 0x01), "not-udp": (9, 6), "total-length": (3, 0)}[mutation]
        frame[l3 + at] = value if mutation != "total-length" else frame[l3 + at] - 1
        refreshed_ip_checksum(frame, l3)
    elif mutation == "options":
        frame[l3] = 0x46
        frame[l3 + 20: l3 + 20] = b"\x01\x01\x01\x00"
        total = int.from_bytes(frame[l3 + 2: l3 + 4], "big") + 4
        frame[l3 + 2: l3 + 4] = total.to_bytes(2, "big")
        refreshed_ip_checksum(frame, l3, 24)
    elif mutation == "udp-length":
        frame[udp + 5] ^= 0x01
    elif mutation == "ip-checksum":
        frame[l3 + 11] ^= 0x01
    frame = bytes(frame)
    assert c_open(action(), frame, l2) == py_open(frame, l2)


@pytest.mark.parametrize("l2", [0, 10, 24])
@pytest.mark.parametrize("udp_checksum", [False, True])
def test_open_follows_the_fast_path_through_every_byte_flip_and_cut(l2, udp_checksum):
    """Each byte position flipped (one bit and all bits) and each truncation, with the trusted
    checksum flags and without."""
    for flags in (0, h.VNET_F_DATA_VALID, h.VNET_F_NEEDS_CSUM) if l2 else (0,):
        vnet = (legacy_vnet(flags, 0, 0, 0, 84 if flags == 1 else 0, 6) + bytes(14))[:l2]
        frame = encapsulated(inner_frame(h.IpProto.TCP, 20), vnet=vnet,
                             udp_checksum=udp_checksum)
        assert c_open(action(), frame, l2) == py_open(frame, l2)
        for at in range(len(frame)):
            for mask in (0x01, 0xFF):
                flipped = bytearray(frame)
                flipped[at] ^= mask
                flipped = bytes(flipped)
                assert c_open(action(), flipped, l2) == py_open(flipped, l2), (at, mask)
        for cut in range(len(frame)):
            assert c_open(action(), frame[:cut], l2) == py_open(frame[:cut], l2), cut


def test_open_checks_our_vtep_port_and_vni_from_the_action():
    frame = encapsulated(inner_frame(h.IpProto.UDP, 10))
    assert c_open(action(), frame, 0) == frame[50:] == py_open(frame, 0)
    assert c_open(action(vni=2), frame, 0) is None
    assert c_open(action(port=PORT + 1), frame, 0) is None
    assert c_open(action(vtep_mac=PEER_VTEP_MAC), frame, 0) is None
    assert c_open(action(), frame, 12) is None


def test_open_of_a_tunnel_gso_frame_gives_the_inner_super_frame():
    """A UDP-tunnel GSO frame as the kernel hands it over opens into the TSO frame it carries,
    with the header tunnel_offload.decap_vnet gives, widened to the port's 24 bytes."""
    inner_vnet = legacy_vnet(1, h.VNET_GSO_TCPV4, 54, 1400, 34, 16)
    inner = inner_frame(h.IpProto.TCP, 3000)
    frame = tunnel_offload.encapsulate_offloaded(
        inner_vnet, inner, outer_src_mac=GATEWAY_MAC, outer_dst_mac=UPLINK_MAC, src_ip=PEER_IP,
        dst_ip=OUR_IP, src_port=50000, dst_port=PORT, vni=VNI, ident=9)
    opened = c_open(action(), frame, 24)
    assert opened == py_open(frame, 24)
    assert opened == tunnel_offload.widen_vnet(tunnel_offload.decap_vnet(frame[:24])) + inner


@PROPERTY
@given(frame=st.binary(max_size=120), l2=st.sampled_from([0, 10, 24]))
def test_open_of_random_bytes_declines_as_python_does(frame, l2):
    assert c_open(action(), frame, l2) == py_open(frame, l2)


@PROPERTY
@given(ip=inner_packets, vnet=vnets_to_wrap(), ident=u16)
def test_what_c_wraps_for_a_node_that_node_opens(ip, vnet, ident):
    """Round trip through C alone, as two nodes' datapaths: wrapped towards the peer, the frame
    opens with the peer's VTEP (whose MAC is the inner destination) into the inner frame."""
    wrapped = c_wrap(action(), vnet, ip, ident)
    if wrapped is None:
        return
    l2 = len(vnet)
    opened = c_open(action(vtep_mac=PEER_VTEP_MAC), wrapped, l2)
    assert opened == PEER_FAST_PATH._opened(PEER_FAST_PATH.tunnel_end, wrapped, l2)
    if opened is not None:
        assert opened[l2:] == ENCAPSULATION.inner_macs + b"\x08\x00" + ip


# -- the source port -----------------------------------------------------------------------------

@PROPERTY
@given(key=st.binary(max_size=40), seed=st.integers(0, 2**64 - 1))
def test_the_source_port_of_c_is_pythons(key, seed):
    assert lib.vs_vxlan_source_port(exact(key), len(key), seed) == vxlan.source_port(
        key, seed=seed)


def test_the_source_port_of_c_spreads_flows_over_the_range():
    """1000 flows differing in the client port: nearly all on distinct ports, each quarter of
    the range with about a quarter of them; another seed moves a flow elsewhere."""
    low, high = vxlan.SOURCE_PORT_LOW, vxlan.SOURCE_PORT_HIGH
    keys = [bytes([17]) + POD_IP + REMOTE_POD_IP + struct.pack("!HH", 20000 + i, 53)
            for i in range(1000)]
    ports = [lib.vs_vxlan_source_port(exact(k), len(k), SEED) for k in keys]
    assert all(low <= p <= high for p in ports)
    assert len(set(ports)) >= 950
    quarter = (high - low + 1) / 4
    counts = [0] * 4
    for p in ports:
        counts[int((p - low) // quarter)] += 1
    assert min(counts) >= 200, counts
    assert len({lib.vs_vxlan_source_port(exact(keys[0]), len(keys[0]), s)
                for s in range(50)}) >= 45

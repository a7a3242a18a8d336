"""VXLAN on the wire (RFC 7348), as pure functions: encapsulation, decapsulation with the reason
for every refusal, the outer UDP source port, and the MTU an overlay leaves to pods.

Theory of operation
-------------------
* **What we send is what Linux sends** with a ``vxlan`` device created the way flannel creates it
  (``ip link add ... type vxlan id VNI dstport 4789 nolearning``), so a node built from kernel parts
  and a vswitch node exchange frames both ways:

  - outer Ethernet / IPv4 (no options) / UDP / VXLAN (flags 0x08, VNI in bytes 4-6) / inner frame;
  - the outer UDP checksum is 0 unless asked for: RFC 7348 section 5 says it SHOULD be 0 for
    IPv4, and it spares summing every inner byte. Current Linux differs by default: a device
    created without the ``[no]udpcsum`` attribute (``ip link``, or flannel through its netlink
    library) has ``udpcsum`` on, so ``udp_checksum=True`` sends the very bytes Linux sends. A
    receiver accepts both (Linux checks a checksum only when it is not 0, as ``decapsulate`` does);
  - DF is clear: Linux's ``df unset`` default. The overlay is sized so that the outer packet fits
    the underlay (see ``overlay_mtu``); DF on the outer header would only turn an underlay MTU
    mistake into a loss the pods never hear of, where a clear DF lets the underlay fragment. Because DF is clear, ``ident`` must differ between packets to one destination
    (RFC 6864): the caller passes a counter;
  - the outer TOS is 0 except for the ECN field, copied from an inner IPv4 header with CE sent as
    ECT(0), as Linux's ``ip_tunnel_ecn_encap`` does (RFC 6040 normal mode);
  - TTL 64 by default, the hop limit Linux uses when the device's ``ttl`` is unset (``auto``).
* **The source port spreads flows over ECMP paths** (RFC 7348 section 5): it is a hash of the
  inner flow mapped into a port range, by default Linux's ``ip_local_port_range``
  (32768-60999, both included). Linux hashes with its flow dissector and a boot-time secret; here
  it is the exact table's 64-bit hash (``accel.hash_key``, which C has too, so the datapath picks
  the same port) of ``inner_flow_key`` seeded by the caller, never ``hash()`` (salted per
  process): a flow keeps its port across restarts with the same seed, and the sans-I/O core
  stays reproducible. The seed need not be secret (a port only picks a path); each node may pick
  its own.
* **Decapsulation refuses what Linux refuses**, each refusal a ``DropReason`` for the counters:
  a short or malformed outer IPv4 header, a bad header checksum, fragments (the switch does not
  reassemble; Linux would), anything not UDP to the VXLAN port, a UDP length that disagrees with
  the packet, a wrong UDP checksum when one is present, a header without the I bit, another VNI,
  and reserved bits set (Linux drops these although the RFC says to ignore them). Every length
  is checked before the bytes are read: malformed input yields a reason, never an exception.
  What is not decided here: whether the outer source is a known node, whether the inner frame
  comes from our own VTEP MAC (Linux drops such loops), and the RFC 6040 ECN decapsulation
  (outer CE marked onto the inner header), which Linux does and this function does not.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from types import ModuleType

from vswitch.accel import pure as _pure
from vswitch.wire import builders, headers as h, views

# Bytes the encapsulation adds in front of an inner frame: outer Ethernet, IPv4, UDP and VXLAN.
OUTER_HEADERS_LEN = h.ETH_HEADER_LEN + h.IPV4_MIN_HEADER_LEN + h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN
# What an overlay takes from the underlay's MTU (which counts from the outer IPv4 header on): outer
# IPv4, UDP, VXLAN and the inner Ethernet header, which the inner MTU does not count. Also 50.
MTU_OVERHEAD = h.IPV4_MIN_HEADER_LEN + h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN + h.ETH_HEADER_LEN
MIN_IPV4_MTU = 68  # RFC 791: every IPv4 link carries 68-byte datagrams unfragmented
# The largest inner frame one outer IPv4 packet holds (its total length is 16 bits). A GSO
# super-frame beyond it has to be cut into segments before encapsulation, or handed to the kernel
# as a UDP-tunnel GSO frame whose lengths the kernel fills in per segment.
MAX_INNER_FRAME_LEN = 0xFFFF - h.IPV4_MIN_HEADER_LEN - h.UDP_HEADER_LEN - h.VXLAN_HEADER_LEN

# Linux's default net.ipv4.ip_local_port_range, which its VXLAN devices draw source ports from.
SOURCE_PORT_LOW = 32768
SOURCE_PORT_HIGH = 60999

_ECN_MASK = 0x03
_ECN_CE = 0x03
_ECN_ECT0 = 0x02
_L4_WITH_PORTS = (h.IpProto.TCP, h.IpProto.UDP)
_ETHERTYPE_IPV4 = struct.pack("!H", h.EtherType.IPV4)
_U16 = struct.Struct("!H")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")  # version/IHL, TOS, length, id, flags/offset, TTL, proto, csum
_UDP_VXLAN = struct.Struct("!HHHHII")  # UDP ports, length, checksum; VXLAN flags+reserved, VNI+reserved


def overlay_mtu(underlay_mtu: int) -> int:
    """The MTU of pods' segments when their traffic to other nodes crosses VXLAN over an underlay
    (uplink) of ``underlay_mtu``: 1500 leaves 1450, as on a flannel node."""
    inner = underlay_mtu - MTU_OVERHEAD
    if inner < MIN_IPV4_MTU:
        raise ValueError(f"an underlay MTU of {underlay_mtu} leaves {inner} bytes inside VXLAN, "
                         f"below the IPv4 minimum of {MIN_IPV4_MTU}")
    return inner


def _carries_ipv4(inner_frame: bytes) -> bool:
    """Whether the frame carries a whole IPv4 header (version 4, IHL at least 5)."""
    return (len(inner_frame) >= h.ETH_HEADER_LEN + h.IPV4_MIN_HEADER_LEN
            and inner_frame[12:14] == _ETHERTYPE_IPV4 and inner_frame[14] >> 4 == 4
            and inner_frame[14] & 0x0F >= 5)


def _outer_tos(inner_frame: bytes) -> int:
    if not _carries_ipv4(inner_frame):
        return 0
    ecn = inner_frame[15] & _ECN_MASK
    return _ECN_ECT0 if ecn == _ECN_CE else ecn


def encapsulate(inner_frame: bytes, *, outer_src_mac: bytes, outer_dst_mac: bytes,
                src_ip: bytes, dst_ip: bytes, src_port: int, dst_port: int, vni: int, ident: int,
                ttl: int = 64, udp_checksum: bool = False, accel: ModuleType = _pure) -> bytes:
    """The outer frame carrying ``inner_frame`` (an Ethernet frame) from our VTEP (``src_ip``,
    ``src_port``) to a remote one (``dst_ip``, ``dst_port``) in network ``vni``: the packet of
    ``encapsulate_packet`` in an Ethernet header."""
    packet = encapsulate_packet(inner_frame, src_ip=src_ip, dst_ip=dst_ip, src_port=src_port,
                                dst_port=dst_port, vni=vni, ident=ident, ttl=ttl,
                                udp_checksum=udp_checksum, accel=accel)
    return builders.ethernet(outer_dst_mac, outer_src_mac, h.EtherType.IPV4, packet)


def encapsulate_packet(inner_frame: bytes, *, src_ip: bytes, dst_ip: bytes, src_port: int,
                       dst_port: int, vni: int, ident: int, ttl: int = 64,
                       udp_checksum: bool = False, accel: ModuleType = _pure) -> bytes:
    """The outer IPv4 packet carrying ``inner_frame``; a router puts it into Ethernet towards
    its next hop.

    ``ident`` is the outer IPv4 identification (a per-destination counter: DF is clear). The outer
    IPv4 header checksum is computed with ``accel``, and so is the UDP checksum with
    ``udp_checksum``; without it the UDP checksum is 0 (none)."""
    headers = encapsulation_headers(inner_frame, len(inner_frame), src_ip=src_ip, dst_ip=dst_ip,
                                    src_port=src_port, dst_port=dst_port, vni=vni, ident=ident,
                                    ttl=ttl, accel=accel)
    if udp_checksum:
        udp = h.IPV4_MIN_HEADER_LEN
        csum = accel.l4_checksum(src_ip, dst_ip, h.IpProto.UDP,
                                 b"".join((headers[udp:], inner_frame))) or 0xFFFF
        headers = headers[: udp + 6] + csum.to_bytes(2, "big") + headers[udp + 8:]
    return b"".join((headers, inner_frame))


def encapsulation_headers(inner_head: bytes, inner_len: int, *, src_ip: bytes, dst_ip: bytes,
                          src_port: int, dst_port: int, vni: int, ident: int, ttl: int = 64,
                          accel: ModuleType = _pure) -> bytes:
    """The outer IPv4, UDP (checksum 0) and VXLAN headers in front of an ``inner_len``-byte inner
    frame that starts with ``inner_head`` (its Ethernet and IPv4 headers at least, for the ECN
    field): the caller joins them with the frame's pieces without copying the frame twice.
    Packed with ``struct`` rather than built from the construct declarations, because this runs
    for every packet to another node; the declarations (``headers.VXLAN``, ``UDP``, ``IPV4``)
    stay the test oracle."""
    if not 0 <= vni <= h.VXLAN_MAX_VNI:
        raise ValueError(f"VNI {vni} is not a 24-bit number")
    if inner_len > MAX_INNER_FRAME_LEN:
        raise ValueError(f"an inner frame of {inner_len} bytes does not fit one IPv4 packet "
                         f"(at most {MAX_INNER_FRAME_LEN})")
    udp_length = h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN + inner_len
    header = bytearray(_IPV4.pack(0x45, _outer_tos(inner_head), h.IPV4_MIN_HEADER_LEN + udp_length,
                                  ident, 0, ttl, h.IpProto.UDP, 0, src_ip, dst_ip))
    csum = accel.checksum(bytes(header))
    header[10], header[11] = csum >> 8, csum & 0xFF
    return bytes(header) + _UDP_VXLAN.pack(src_port, dst_port, udp_length, 0,
                                           h.VXLAN_FLAG_VNI << 24, vni << 8)


def inner_flow_key(inner_frame: bytes) -> bytes:
    """What identifies the inner frame's flow for ``source_port``, as Linux's flow hash sees it:
    IPv4 addresses and protocol, plus the ports of TCP and UDP unless the packet is a fragment
    (so all fragments of a datagram take one path); for a frame that is not IPv4, its two MAC
    addresses and EtherType (Linux's fallback for a VXLAN device)."""
    if not _carries_ipv4(inner_frame):
        return bytes(inner_frame[: h.ETH_HEADER_LEN])
    l3 = h.ETH_HEADER_LEN
    protocol = inner_frame[l3 + 9]
    key = bytes(inner_frame[l3 + 9: l3 + 10]) + bytes(inner_frame[l3 + 12: l3 + 20])
    l4 = l3 + (inner_frame[l3] & 0x0F) * 4
    (flags_fragment,) = _U16.unpack_from(inner_frame, l3 + h.IPV4_FLAGS_FRAGMENT_OFFSET)
    if (protocol in _L4_WITH_PORTS and not flags_fragment & (h.IPV4_FLAG_MF | 0x1FFF)
            and len(inner_frame) >= l4 + h.L4_PORTS_LEN):
        key += bytes(inner_frame[l4: l4 + h.L4_PORTS_LEN])
    return key


def source_port(flow_key: bytes, *, seed: int = 0, low: int = SOURCE_PORT_LOW,
                high: int = SOURCE_PORT_HIGH, accel: ModuleType = _pure) -> int:
    """The outer UDP source port, in ``low..high`` (both included), for the inner flow
    ``flow_key`` (``inner_flow_key`` of its frames, or any bytes that identify the flow).

    The same flow and ``seed`` always give the same port, and different flows spread evenly over
    the range. The high 32 bits of the exact table's hash (``accel.hash_key``, the same in C:
    ``vs_vxlan_source_port``) are mapped into the range by multiplication, as Linux's
    ``udp_flow_src_port`` maps its hash, rather than by a modulo."""
    if not 0 < low <= high <= 0xFFFF:
        raise ValueError(f"not a port range: {low}-{high}")
    return low + (((accel.hash_key(flow_key, seed) >> 32) * (high - low + 1)) >> 32)


class DropReason(enum.Enum):
    """Why a packet addressed to our VTEP was not decapsulated."""
    SHORT = "shorter than its outer IPv4, UDP and VXLAN headers and an inner Ethernet header"
    BAD_IP_HEADER = "outer IPv4 header malformed: version, header length or total length"
    BAD_IP_CHECKSUM = "outer IPv4 header checksum is wrong"
    FRAGMENT = "outer IPv4 packet is a fragment (not reassembled)"
    NOT_UDP = "outer IPv4 packet is not UDP"
    WRONG_PORT = "UDP destination port is not the VXLAN port"
    BAD_UDP_LENGTH = "UDP length field disagrees with the outer IPv4 packet"
    BAD_UDP_CHECKSUM = "outer UDP checksum is present and wrong"
    NO_VNI_FLAG = "VXLAN flags without the I bit (VNI valid)"
    WRONG_VNI = "VXLAN network identifier is not ours"
    RESERVED_BITS = "VXLAN reserved bits or unknown flags set"


@dataclass(frozen=True, slots=True)
class Decapsulated:
    """What arrived through the tunnel: the inner Ethernet frame and where it came from."""
    inner: bytes
    src: bytes  # outer IPv4 source: the sending node's underlay address
    dst: bytes  # outer IPv4 destination: our VTEP address (or whichever the sender used)
    src_port: int  # outer UDP source port (the sender's hash of the inner flow)
    vni: int


def decapsulate(packet: bytes, *, vni: int, port: int, offset: int = 0,
                verify_udp_checksum: bool = True,
                accel: ModuleType = _pure) -> Decapsulated | DropReason:
    """The inner frame of a VXLAN packet whose outer IPv4 header starts at ``offset`` of
    ``packet`` (0 for an IP packet, 14 for an untagged Ethernet frame), or why it is refused.

    Bytes after the IPv4 total length (Ethernet padding) are ignored, as are bytes after the UDP
    length. Checked in the order Linux's IPv4, UDP and VXLAN receive paths check.

    A non-zero UDP checksum is verified unless ``verify_udp_checksum`` is False: the caller passes
    False when the virtio-net header says the checksum is partial (``VNET_F_NEEDS_CSUM``: the
    field holds only the pseudo-header sum, as from a local sender with checksum offload) or
    already checked (``VNET_F_DATA_VALID``)."""
    data = bytes(packet[offset:])
    if len(data) < h.IPV4_MIN_HEADER_LEN:
        return DropReason.SHORT
    ip = views.Ipv4(data)
    header_len = ip.ihl * 4
    if ip.version != 4 or ip.ihl < 5:
        return DropReason.BAD_IP_HEADER
    if header_len > len(data):
        return DropReason.SHORT
    if accel.checksum(data[:header_len]) != 0:
        return DropReason.BAD_IP_CHECKSUM
    if ip.total_length > len(data):
        return DropReason.SHORT
    if ip.total_length < header_len:
        return DropReason.BAD_IP_HEADER
    if ip.mf or ip.fragment_offset:
        return DropReason.FRAGMENT
    if ip.protocol != h.IpProto.UDP:
        return DropReason.NOT_UDP
    segment = data[header_len: ip.total_length]
    if len(segment) < h.UDP_HEADER_LEN:
        return DropReason.SHORT
    udp = views.Udp(segment)
    if udp.dst_port != port:
        return DropReason.WRONG_PORT
    if not h.UDP_HEADER_LEN <= udp.length <= len(segment):
        return DropReason.BAD_UDP_LENGTH
    segment = segment[: udp.length]
    if (verify_udp_checksum and udp.checksum
            and accel.l4_checksum(ip.src, ip.dst, h.IpProto.UDP, segment) != 0):
        return DropReason.BAD_UDP_CHECKSUM
    if len(segment) < h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN + h.ETH_HEADER_LEN:
        return DropReason.SHORT
    vxlan = views.Vxlan(segment, h.UDP_HEADER_LEN)
    if not vxlan.flags & h.VXLAN_FLAG_VNI:
        return DropReason.NO_VNI_FLAG
    if vxlan.vni != vni:
        return DropReason.WRONG_VNI
    if vxlan.flags != h.VXLAN_FLAG_VNI or vxlan.reserved1 or vxlan.reserved2:
        return DropReason.RESERVED_BITS
    return Decapsulated(inner=segment[h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN:], src=ip.src,
                        dst=ip.dst, src_port=udp.src_port, vni=vni)

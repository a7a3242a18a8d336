"""Every header vswitch reads or writes, declared once with construct.

Stages parse and build frames only through these declarations; nobody slices ``frame[12:14]`` by hand.
The one deliberate exception is the flow-key extractor of the fast path (``vswitch.accel``), which
exists in C and in Python and is tested against these declarations.

Parsing uses construct's interpreted mode: its compiled mode is documented as unsafe for untrusted
input, and every frame here comes from a pod.
"""
from __future__ import annotations

import enum

from construct import (
    Bytes,
    Computed,
    GreedyBytes,
    Int8ub,
    Int16ub,
    Int16ul,
    Int24ub,
    Int32ub,
    Struct,
    this,
)

ETH_HEADER_LEN = 14
IPV4_MIN_HEADER_LEN = 20
VNET_HDR_LEN = 10


class EtherType(enum.IntEnum):
    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100  # 802.1Q
    QINQ = 0x88A8  # 802.1ad
    IPV6 = 0x86DD


class IpProto(enum.IntEnum):
    ICMP = 1
    TCP = 6
    UDP = 17


class IcmpType(enum.IntEnum):
    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


class ArpOp(enum.IntEnum):
    REQUEST = 1
    REPLY = 2


# struct virtio_net_hdr (include/uapi/linux/virtio_net.h). A TAP opened with IFF_VNET_HDR puts it
# before every frame, in the host's byte order for a legacy header (little endian on x86 and arm64).
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_UDP = 3
VNET_GSO_TCPV6 = 4
VNET_GSO_ECN = 0x80

VIRTIO_NET_HDR = Struct(
    "flags" / Int8ub,
    "gso_type" / Int8ub,
    "hdr_len" / Int16ul,
    "gso_size" / Int16ul,
    "csum_start" / Int16ul,
    "csum_offset" / Int16ul,
)
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

ETHERNET = Struct(
    "dst" / Bytes(6),
    "src" / Bytes(6),
    "ethertype" / Int16ub,
)

ARP = Struct(
    "htype" / Int16ub,
    "ptype" / Int16ub,
    "hlen" / Int8ub,
    "plen" / Int8ub,
    "oper" / Int16ub,
    "sha" / Bytes(6),
    "spa" / Bytes(4),
    "tha" / Bytes(6),
    "tpa" / Bytes(4),
)
ARP_LEN = 28

# The version/IHL and flags/fragment-offset bytes are read as whole integers and split with
# Computed fields: construct's BitStruct costs several times more per parse.
IPV4 = Struct(
    "version_ihl" / Int8ub,
    "version" / Computed(this.version_ihl >> 4),
    "ihl" / Computed(this.version_ihl & 0x0F),
    "tos" / Int8ub,
    "total_length" / Int16ub,
    "identification" / Int16ub,
    "flags_fragment" / Int16ub,
    "df" / Computed(lambda ctx: bool(ctx.flags_fragment & 0x4000)),
    "mf" / Computed(lambda ctx: bool(ctx.flags_fragment & 0x2000)),
    "fragment_offset" / Computed(this.flags_fragment & 0x1FFF),
    "ttl" / Int8ub,
    "protocol" / Int8ub,
    "checksum" / Int16ub,
    "src" / Bytes(4),
    "dst" / Bytes(4),
)
IPV4_FLAG_DF = 0x4000
IPV4_FLAG_MF = 0x2000
# Field offsets inside the IPv4 header, for the in-place rewrites of a router (TTL, checksum,
# fragment fields), where rebuilding the header through construct would drop its options.
IPV4_TOTAL_LENGTH_OFFSET = 2
IPV4_FLAGS_FRAGMENT_OFFSET = 6
IPV4_TTL_OFFSET = 8
IPV4_CHECKSUM_OFFSET = 10
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})  # RFC 1122 3.2.2: never answered with an error

ICMP = Struct(
    "type" / Int8ub,
    "code" / Int8ub,
    "checksum" / Int16ub,
    "rest" / Bytes(4),  # identifier and sequence for echo; unused/next-hop MTU for errors
    "payload" / GreedyBytes,
)
ICMP_HEADER_LEN = 8

UDP = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
    "length" / Int16ub,
    "checksum" / Int16ub,
)
UDP_HEADER_LEN = 8

# The first four bytes of TCP and UDP alike: what a flow hash reads without caring which it is.
L4_PORTS = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
)
L4_PORTS_LEN = 4

# VXLAN (RFC 7348 section 5), after a UDP header: an 8-bit flags field in which only the I bit
# ("the VNI is valid") is defined, 24 reserved bits, the 24-bit VXLAN Network Identifier and 8 more
# reserved bits. The receiver's checks (Linux drops a header with any reserved bit set, although
# the RFC says to ignore them) are in ``vswitch.wire.vxlan``.
VXLAN = Struct(
    "flags" / Int8ub,
    "reserved1" / Int24ub,
    "vni" / Int24ub,
    "reserved2" / Int8ub,
)
VXLAN_HEADER_LEN = 8
VXLAN_FLAG_VNI = 0x08  # the I bit
VXLAN_MAX_VNI = 0xFFFFFF
VXLAN_IANA_PORT = 4789

TCP = Struct(
    "src_port" / Int16ub,
    "dst_port" / Int16ub,
    "seq" / Int32ub,
    "ack" / Int32ub,
    "offset_flags" / Int16ub,
    "data_offset" / Computed(this.offset_flags >> 12),
    "flags" / Computed(this.offset_flags & 0x01FF),
    "window" / Int16ub,
    "checksum" / Int16ub,
    "urgent" / Int16ub,
)
TCP_HEADER_LEN = 20


class TcpFlag(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


def build_ipv4(*, src: bytes, dst: bytes, protocol: int, payload_len: int, ttl: int = 64,
               identification: int = 0, df: bool = False, tos: int = 0, checksum: int = 0) -> bytes:
    return IPV4.build(
        dict(
            version_ihl=0x45,
            tos=tos,
            total_length=IPV4_MIN_HEADER_LEN + payload_len,
            identification=identification,
            flags_fragment=IPV4_FLAG_DF if df else 0,
            ttl=ttl,
            protocol=protocol,
            checksum=checksum,
            src=src,
            dst=dst,
        )
    )

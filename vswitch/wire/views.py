"""Headers read with ``struct`` for the packet path: the same fields, by the same names, as the
construct declarations in ``headers`` give, at a fraction of the cost.

The pipeline parses a packet's headers once, when it enters (eth-input) or leaves a tunnel
(vxlan-decap), and stages read the fields as attributes. Construct's parse builds a Container
through a dozen Python calls per header; these views are one ``unpack_from`` and a slotted object,
which matters on the slow path of every new flow. The declarations in ``headers`` stay the
definition of the wire format: they build frames, and a property test holds every view equal to
them, field by field, on arbitrary bytes. Views are read-only by convention, as the Containers
were: nothing in the pipeline assigns to a parsed header.
"""
from __future__ import annotations

import struct

_VNET = struct.Struct("<BBHHHH")
_ETHERNET = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIHHHH")
_UDP = struct.Struct("!HHHH")
_VXLAN = struct.Struct("!II")  # flags and 24 reserved bits; VNI and 8 reserved bits


class VirtioNetHeader:
    __slots__ = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")

    def __init__(self, data: bytes, offset: int = 0):
        (self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
         self.csum_offset) = _VNET.unpack_from(data, offset)


class Ethernet:
    __slots__ = ("dst", "src", "ethertype")

    def __init__(self, data: bytes, offset: int = 0):
        self.dst, self.src, self.ethertype = _ETHERNET.unpack_from(data, offset)


class Arp:
    __slots__ = ("htype", "ptype", "hlen", "plen", "oper", "sha", "spa", "tha", "tpa")

    def __init__(self, data: bytes, offset: int = 0):
        (self.htype, self.ptype, self.hlen, self.plen, self.oper, self.sha, self.spa, self.tha,
         self.tpa) = _ARP.unpack_from(data, offset)


class Ipv4:
    """The fixed 20 bytes of an IPv4 header (options, if any, follow; ``ihl`` says how many)."""

    __slots__ = ("version_ihl", "version", "ihl", "tos", "total_length", "identification",
                 "flags_fragment", "df", "mf", "fragment_offset", "ttl", "protocol", "checksum",
                 "src", "dst")

    def __init__(self, data: bytes, offset: int = 0):
        (version_ihl, self.tos, self.total_length, self.identification, flags_fragment,
         self.ttl, self.protocol, self.checksum, self.src, self.dst) = _IPV4.unpack_from(data,
                                                                                        offset)
        self.version_ihl = version_ihl
        self.version = version_ihl >> 4
        self.ihl = version_ihl & 0x0F
        self.flags_fragment = flags_fragment
        self.df = bool(flags_fragment & 0x4000)
        self.mf = bool(flags_fragment & 0x2000)
        self.fragment_offset = flags_fragment & 0x1FFF


class Tcp:
    __slots__ = ("src_port", "dst_port", "seq", "ack", "offset_flags", "data_offset", "flags",
                 "window", "checksum", "urgent")

    def __init__(self, data: bytes, offset: int = 0):
        (self.src_port, self.dst_port, self.seq, self.ack, offset_flags, self.window,
         self.checksum, self.urgent) = _TCP.unpack_from(data, offset)
        self.offset_flags = offset_flags
        self.data_offset = offset_flags >> 12
        self.flags = offset_flags & 0x01FF


class Udp:
    __slots__ = ("src_port", "dst_port", "length", "checksum")

    def __init__(self, data: bytes, offset: int = 0):
        self.src_port, self.dst_port, self.length, self.checksum = _UDP.unpack_from(data, offset)


class Vxlan:
    __slots__ = ("flags", "reserved1", "vni", "reserved2")

    def __init__(self, data: bytes, offset: int = 0):
        first, second = _VXLAN.unpack_from(data, offset)
        self.flags, self.reserved1 = first >> 24, first & 0xFFFFFF
        self.vni, self.reserved2 = second >> 8, second & 0xFF

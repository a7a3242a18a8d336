"""Encapsulating for another node and the headers of what crosses the tunnel, shared by the
overlay stages and the fast path.

What encapsulation for one remote node takes is fixed per node (MACs, addresses, VNI, the seed of
the source-port hash), so vxlan-encap builds an ``Encapsulation`` and a cacheable decision keeps
it: a cache hit then wraps the routed packet with the very function the stage used, and the two
paths cannot drift apart. Only the outer identification (one counter of the overlay table) and the
source port (a hash of the inner flow) change per packet.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from types import ModuleType

from vswitch.tables.overlay import LocalVtep, OverlayTable, RemoteNode
from vswitch.wire import headers as h, tunnel_offload, vxlan

ETHERTYPE_IPV4 = struct.pack("!H", h.EtherType.IPV4)
_CSUM_START = struct.Struct("<H")  # virtio_net_hdr.csum_start, little endian, at offset 6
_CSUM_FIELDS = struct.Struct("<HH")  # csum_start and csum_offset
_CSUM_START_OFFSET = 6
_GSO_TYPE_OFFSET = 1
_PLAIN_FLAGS = h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID


@dataclass(frozen=True)
class Encapsulation:
    node: RemoteNode
    inner_macs: bytes  # the inner Ethernet destination and source: the two VTEP MACs
    vtep: LocalVtep
    dst_ip: bytes  # the node's underlay address
    overlay: OverlayTable  # for the outer identification counter

    @classmethod
    def towards(cls, overlay: OverlayTable, node: RemoteNode) -> "Encapsulation | None":
        vtep = overlay.vtep
        mac = overlay.vtep_mac_of(node.address.packed)
        if vtep is None or mac is None:
            return None
        return cls(node, mac + vtep.vtep_mac, vtep, node.address.packed, overlay)

    def outer_packet(self, packet: bytes, accel: ModuleType, commit: bool = True
                     ) -> tuple[bytes, int]:
        """The outer IPv4 packet carrying the routed IPv4 ``packet``, and its UDP source port.
        A dry run (``commit`` False) leaves the identification counter alone."""
        ihl = (packet[0] & 0x0F) * 4
        pieces, src_port = self.outer_pieces(packet[:ihl], packet[ihl:], accel, commit)
        return b"".join(pieces), src_port

    def outer_pieces(self, ip_header: bytes, rest, accel: ModuleType, commit: bool = True
                     ) -> tuple[tuple, int]:
        """The outer packet for the routed packet ``ip_header`` + ``rest`` as pieces to join
        (``rest`` may be a memoryview of the received frame: it is copied once, by the join),
        and its UDP source port."""
        head = b"".join((self.inner_macs, ETHERTYPE_IPV4, ip_header, rest[: h.L4_PORTS_LEN]))
        inner_len = h.ETH_HEADER_LEN + len(ip_header) + len(rest)
        vtep = self.vtep
        src_port = vxlan.source_port(vxlan.inner_flow_key(head), seed=vtep.source_port_seed,
                                     accel=accel)
        ident = self.overlay.next_ident() if commit else 0
        headers = vxlan.encapsulation_headers(
            head, inner_len, src_ip=vtep.address, dst_ip=self.dst_ip, src_port=src_port,
            dst_port=vtep.port, vni=vtep.vni, ident=ident, accel=accel)
        return (headers, self.inner_macs, ETHERTYPE_IPV4, ip_header, rest), src_port


def outer_vnet(vnet: bytes, inner_len: int) -> bytes | None:
    """The virtio-net header of the encapsulated frame for an ``inner_len``-byte inner frame
    with header ``vnet`` (b"" on a port without one), or None when the frame cannot cross the
    tunnel as it is. A partial checksum stays partial, its start moved by the outer headers. A
    GSO super-frame crosses whole only with the 24-byte header of UDP-tunnel GSO
    (``wire.tunnel_offload``), which describes both the inner and the outer headers."""
    if not vnet:
        return vnet
    if vnet[_GSO_TYPE_OFFSET] != h.VNET_GSO_NONE:
        if len(vnet) < tunnel_offload.VNET_TUNNEL_HDR_LEN:
            return None
        return _tunnel_gso_header(vnet, inner_len)
    if vnet[0] & ~_PLAIN_FLAGS or inner_len > vxlan.MAX_INNER_FRAME_LEN:
        return None
    if not vnet[0] & h.VNET_F_NEEDS_CSUM:
        return vnet
    (start, offset) = _CSUM_FIELDS.unpack_from(vnet, _CSUM_START_OFFSET)
    if not _MIN_L4_START <= start <= inner_len - offset - 2:
        return None  # the checksum it asks for lies outside the frame: the kernel would refuse it
    if start + vxlan.OUTER_HEADERS_LEN > 0xFFFF:
        return None  # the moved start no longer fits its 16-bit field
    shifted = bytearray(vnet)
    _CSUM_START.pack_into(shifted, _CSUM_START_OFFSET, start + vxlan.OUTER_HEADERS_LEN)
    return bytes(shifted)


def inner_vnet(vnet: bytes) -> bytes | None:
    """The virtio-net header, in the same size, of the inner frame of a VXLAN frame read with
    ``vnet``; None when the inner frame cannot be passed on with its offload. A partial checksum
    of the outer headers (the outer UDP's) goes with them; one of the inner frame moves back."""
    if not vnet:
        return vnet
    if vnet[_GSO_TYPE_OFFSET] != h.VNET_GSO_NONE or vnet[0] & ~_PLAIN_FLAGS:
        if len(vnet) < tunnel_offload.VNET_TUNNEL_HDR_LEN:
            return None
        if vnet[_GSO_TYPE_OFFSET] != h.VNET_GSO_NONE:
            return _inner_gso_header(vnet)
        made = tunnel_offload.decap_vnet(vnet)
        if isinstance(made, tunnel_offload.Refusal):
            return None
        return tunnel_offload.widen_vnet(made)
    if not vnet[0] & h.VNET_F_NEEDS_CSUM:
        return vnet
    (start,) = _CSUM_START.unpack_from(vnet, _CSUM_START_OFFSET)
    start -= vxlan.OUTER_HEADERS_LEN
    if start < h.ETH_HEADER_LEN:
        return bytes(len(vnet))
    shifted = bytearray(vnet)
    _CSUM_START.pack_into(shifted, _CSUM_START_OFFSET, start)
    return bytes(shifted)


# The two conversions of a TSO super-frame's header, packed with struct because they run for every
# super-frame: ``wire.tunnel_offload.encap_vnet`` and ``decap_vnet`` (construct) are their
# reference, and a property test holds them equal.
_LEGACY = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_TUNNEL = struct.Struct("<BBHHHHHIHHHH")  # the legacy fields, then num_buffers, hash value and
# report, padding, outer_th_offset, inner_nh_offset
_OUTER = vxlan.OUTER_HEADERS_LEN
_OUTER_TH_OFFSET = _OUTER - h.UDP_HEADER_LEN - h.VXLAN_HEADER_LEN
_INNER_NH_OFFSET = _OUTER + h.ETH_HEADER_LEN
_TCP_GSO = (h.VNET_GSO_TCPV4, h.VNET_GSO_TCPV6)
_MIN_L4_START = h.ETH_HEADER_LEN + h.IPV4_MIN_HEADER_LEN
_TUNNEL_IPV4 = tunnel_offload.VNET_GSO_UDP_TUNNEL_IPV4
_TUNNEL_BITS = tunnel_offload.VNET_GSO_UDP_TUNNEL
_KNOWN_FLAGS = _PLAIN_FLAGS | tunnel_offload.VNET_F_UDP_TUNNEL_CSUM


def _tunnel_gso_header(vnet: bytes, inner_len: int) -> bytes | None:
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _LEGACY.unpack_from(vnet)
    if (inner_len + _OUTER - h.ETH_HEADER_LEN > 0xFFFF or flags & ~_PLAIN_FLAGS
            or not flags & h.VNET_F_NEEDS_CSUM
            or not (_MIN_L4_START <= csum_start and csum_start + csum_offset + 2 <= inner_len)
            or gso_type & ~h.VNET_GSO_ECN not in _TCP_GSO
            or hdr_len + _OUTER > 0xFFFF):  # the moved header length must fit its field
        return None
    return _TUNNEL.pack(h.VNET_F_NEEDS_CSUM, gso_type | _TUNNEL_IPV4, hdr_len + _OUTER, gso_size,
                        csum_start + _OUTER, csum_offset, 0, 0, 0, 0, _OUTER_TH_OFFSET,
                        _INNER_NH_OFFSET)


def _inner_gso_header(vnet: bytes) -> bytes | None:
    (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, _, _, _, _, outer_th,
     inner_nh) = _TUNNEL.unpack_from(vnet)
    inner_type = gso_type & ~_TUNNEL_BITS
    if (flags & ~_KNOWN_FLAGS or not flags & h.VNET_F_NEEDS_CSUM
            or gso_type & _TUNNEL_BITS != _TUNNEL_IPV4
            or inner_type & ~h.VNET_GSO_ECN not in _TCP_GSO
            or (outer_th, inner_nh) != (_OUTER_TH_OFFSET, _INNER_NH_OFFSET)
            or csum_start < inner_nh):
        return None
    return _LEGACY.pack(h.VNET_F_NEEDS_CSUM, inner_type, max(hdr_len - _OUTER, 0), gso_size,
                        csum_start - _OUTER, csum_offset) + bytes(len(vnet) - _LEGACY.size)

"""Encapsulating for another node, shared by vxlan-encap and the fast path.

What encapsulation for one remote node takes is fixed per node (MACs, addresses, VNI, the key of
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
from vswitch.wire import headers as h, vxlan

ETHERTYPE_IPV4 = struct.pack("!H", h.EtherType.IPV4)
_CSUM_START = struct.Struct("<H")  # virtio_net_hdr.csum_start, little endian, at offset 6
_CSUM_START_OFFSET = 6
_GSO_TYPE_OFFSET = 1


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

    def inner_frame(self, packet: bytes) -> bytes:
        return b"".join((self.inner_macs, ETHERTYPE_IPV4, packet))

    def outer_packet(self, packet: bytes, accel: ModuleType, commit: bool = True
                     ) -> tuple[bytes, int]:
        """The outer IPv4 packet carrying the routed IPv4 ``packet``, and its UDP source port.
        A dry run (``commit`` False) leaves the identification counter alone."""
        inner = self.inner_frame(packet)
        vtep = self.vtep
        src_port = vxlan.source_port(vxlan.inner_flow_key(inner), key=vtep.source_port_key)
        ident = self.overlay.next_ident() if commit else 0
        return vxlan.encapsulate_packet(inner, src_ip=vtep.address, dst_ip=self.dst_ip,
                                        src_port=src_port, dst_port=vtep.port, vni=vtep.vni,
                                        ident=ident, accel=accel), src_port


def outer_vnet(vnet: bytes) -> bytes | None:
    """The virtio-net header of the encapsulated frame for the inner frame's ``vnet`` (b"" on a
    port without one), or None when the frame cannot cross the tunnel as it is (a GSO
    super-frame). A partial checksum stays partial, its start moved by the outer headers."""
    if not vnet:
        return vnet
    if vnet[_GSO_TYPE_OFFSET] != h.VNET_GSO_NONE:
        return None
    if not vnet[0] & h.VNET_F_NEEDS_CSUM:
        return vnet
    (start,) = _CSUM_START.unpack_from(vnet, _CSUM_START_OFFSET)
    shifted = bytearray(vnet)
    _CSUM_START.pack_into(shifted, _CSUM_START_OFFSET, start + vxlan.OUTER_HEADERS_LEN)
    return bytes(shifted)

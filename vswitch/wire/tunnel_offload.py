"""UDP-tunnel GSO on a TAP: the 24-byte virtio-net header that lets a VXLAN-encapsulated TSO
super-frame cross a TAP whole, as pure functions from a pod's 10-byte header to the uplink's and
back.

Theory of operation
-------------------
A pod's kernel hands its TAP TCP super-frames of up to 64 KB (``VNET_GSO_TCPV4``, partial TCP
checksum, ``VNET_F_NEEDS_CSUM``). Encapsulated for another node, such a frame is one outer IPv4/UDP
packet far larger than the underlay MTU. Since Linux 6.17 a TAP whose virtio-net header is 24
bytes (``struct virtio_net_hdr_v1_hash_tunnel``) takes and gives such frames as they are: the
header then says where the outer UDP header and the inner IPv4 header are, and the kernel cuts the
frame into MTU-sized VXLAN packets itself (or, for a local VXLAN device, decapsulates the whole
super-frame as GRO would have merged it). The layout and rules below are those of the kernel's
``virtio_net_hdr_tnl_to_skb`` / ``virtio_net_hdr_tnl_from_skb`` (include/linux/virtio_net.h) and
``drivers/net/tun_vnet.h``:

* **Layout**, all fields little endian: the 10-byte legacy header (flags, gso_type, hdr_len,
  gso_size, csum_start, csum_offset), ``num_buffers`` (2), ``hash_value`` (4), ``hash_report``
  (2), padding (2), ``outer_th_offset`` (2) and ``inner_nh_offset`` (2). Offsets count from the
  first byte of the outer Ethernet header. The hash fields and ``num_buffers`` are unused on a
  TAP and are written as zero.
* **Writing** (us to the kernel): the kernel reads 24 bytes whenever ``TUNSETVNETHDRSZ`` is 24 or
  more, whatever ``TUNSETOFFLOAD`` says. A tunnel frame sets ``VNET_GSO_UDP_TUNNEL_IPV4`` (0x20)
  in ``gso_type`` on top of the inner type (TCPV4 or TCPV6, optionally with the ECN bit; never UFO,
  and never without an inner GSO type), must have ``VNET_F_NEEDS_CSUM`` with ``csum_start`` at the
  inner TCP header, and offsets that nest: ``outer_th_offset`` at least 14 + 20,
  ``inner_nh_offset`` at least ``outer_th_offset`` + 8, ``csum_start`` at least
  ``inner_nh_offset`` + 20. ``VNET_F_UDP_TUNNEL_CSUM`` (0x08) asks the kernel to fill in the outer
  UDP checksum of every segment; the field must then hold the outer pseudo-header sum (not
  inverted) for the whole super-frame's UDP length, as for any partial checksum; without the flag
  the field is sent as it is and must be 0. The outer IPv4 total length must be the super-frame's
  true length (``ip_rcv`` trims to it), so an encapsulated super-frame is at most 65535 bytes from
  the outer IPv4 header on; the kernel rewrites the outer and inner lengths, IPv4 identifications
  and checksums of every segment.
* **Reading** (the kernel to us): only a TAP opened with ``TUN_F_UDP_TUNNEL_GSO`` is given tunnel
  super-frames (otherwise the kernel segments them in software first), and only with
  ``TUN_F_UDP_TUNNEL_GSO_CSUM`` those whose outer UDP checksum is to be filled in. ``csum_start``
  then points at the inner TCP header, the outer UDP checksum field holds a partial sum, and the
  tunnel flags and offsets are set as above.
* **Not GSO:** an encapsulated frame whose inner checksum is partial travels as a plain partial
  checksum (no tunnel bits: the kernel takes its tunnel path only for GSO): ``csum_start`` simply
  moves by the outer headers' length, and the outer UDP checksum is left 0, since the inner bytes
  it would cover change when the inner checksum is completed (Linux fills it in by local checksum
  offload, which is not done here). A frame without offload needs an all-zero header.

``bench/tunnel_gso.py`` checks all of this against a node built from kernel parts and records
what Linux 6.18 gives in each direction.

``encap_vnet`` turns the header of an inner frame into the header of its encapsulation,
``decap_vnet`` the other way round; each returns a ``Refusal`` instead of raising when the frame
cannot cross as asked. Frames that cross between a pod and the uplink without VXLAN (NodePort
traffic, the host's own) keep their offload: ``widen_vnet`` and ``narrow_vnet`` convert the
header between the two sizes, the first 10 bytes being the same legacy header in both.
``encapsulate_offloaded`` wraps ``vxlan.encapsulate`` for an offloaded inner frame, so that the
outer UDP checksum follows these rules.
"""
from __future__ import annotations

import enum
from types import ModuleType

from construct import Int8ub, Int16ul, Int32ul, Struct

from vswitch.accel import pure as _pure
from vswitch.wire import headers as h
from vswitch.wire import vxlan

# sizeof(struct virtio_net_hdr_v1_hash_tunnel): the kernel's TUN_VNET_TNL_SIZE.
VNET_TUNNEL_HDR_LEN = 24

VNET_F_UDP_TUNNEL_CSUM = 0x08  # the kernel completes the outer UDP checksum of every segment
VNET_GSO_UDP_L4 = 5  # USO: UDP GSO; pods' TAPs are not offered it
VNET_GSO_UDP_TUNNEL_IPV4 = 0x20  # a UDP tunnel over IPv4 wraps the inner GSO frame
VNET_GSO_UDP_TUNNEL_IPV6 = 0x40
VNET_GSO_UDP_TUNNEL = VNET_GSO_UDP_TUNNEL_IPV4 | VNET_GSO_UDP_TUNNEL_IPV6

VIRTIO_NET_HDR_TUNNEL = Struct(
    "flags" / Int8ub,
    "gso_type" / Int8ub,
    "hdr_len" / Int16ul,
    "gso_size" / Int16ul,
    "csum_start" / Int16ul,
    "csum_offset" / Int16ul,
    "num_buffers" / Int16ul,
    "hash_value" / Int32ul,
    "hash_report" / Int16ul,
    "padding" / Int16ul,
    "outer_th_offset" / Int16ul,
    "inner_nh_offset" / Int16ul,
)
ZERO_VNET_TUNNEL_HDR = bytes(VNET_TUNNEL_HDR_LEN)

# From the outer UDP header to the inner Ethernet header: UDP and VXLAN.
_UDP_AND_VXLAN = h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN
_TCP_TYPES = (h.VNET_GSO_TCPV4, h.VNET_GSO_TCPV6)
_MIN_L4_START = h.ETH_HEADER_LEN + h.IPV4_MIN_HEADER_LEN  # no transport header starts earlier
_KNOWN_FLAGS = h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID | VNET_F_UDP_TUNNEL_CSUM


class Refusal(enum.Enum):
    """Why a frame's offload cannot be carried across the tunnel as asked."""
    GSO_WITHOUT_CSUM = "GSO frame without a partial checksum (the kernel refuses it in a tunnel)"
    GSO_TYPE = "GSO type that cannot be passed on (only TCP over IPv4 or IPv6 crosses)"
    CSUM_OUTSIDE_INNER = "partial checksum not within the inner frame's IPv4 payload"
    TOO_LONG = "encapsulated frame longer than one IPv4 packet (65535 bytes)"
    OUTER_IPV6 = "tunnel over IPv6, where the overlay runs over IPv4"
    OFFSETS = "tunnel header offsets do not match the outer headers that were removed"
    UNKNOWN_FLAGS = "virtio-net header flags this switch does not know"


def _outer_th_offset(outer_len: int) -> int:
    return outer_len - _UDP_AND_VXLAN


def encap_vnet(inner_vnet: bytes, inner_frame_len: int, *,
               outer_len: int = vxlan.OUTER_HEADERS_LEN,
               udp_tunnel_csum: bool = False) -> bytes | Refusal:
    """The 24-byte header of the encapsulation of an inner frame whose 10-byte header is
    ``inner_vnet``, or why it cannot be written.

    ``outer_len`` is how many bytes the encapsulation puts in front of the inner frame (Ethernet,
    IPv4 without options, UDP, VXLAN: 50). ``udp_tunnel_csum`` asks the kernel to complete the
    outer UDP checksum of every segment of a GSO frame; the outer UDP checksum field must then
    hold ``partial_udp_checksum`` of the outer packet, and 0 otherwise. A frame that is not GSO
    never gets the kernel's tunnel treatment, so the flag does not apply to it."""
    inner = h.VIRTIO_NET_HDR.parse(inner_vnet[: h.VNET_HDR_LEN])
    if inner_frame_len + outer_len - h.ETH_HEADER_LEN > 0xFFFF:
        return Refusal.TOO_LONG
    if inner.flags & ~(h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID):
        return Refusal.UNKNOWN_FLAGS
    needs_csum = bool(inner.flags & h.VNET_F_NEEDS_CSUM)
    if needs_csum and not (_MIN_L4_START <= inner.csum_start
                           and inner.csum_start + inner.csum_offset + 2 <= inner_frame_len):
        # The kernel would refuse the write (EINVAL): the header points outside the frame.
        return Refusal.CSUM_OUTSIDE_INNER
    if inner.gso_type == h.VNET_GSO_NONE:
        if not needs_csum:
            # DATA_VALID would only vouch for the outer checksum on the far side: dropped.
            return ZERO_VNET_TUNNEL_HDR
        return VIRTIO_NET_HDR_TUNNEL.build(dict(
            flags=h.VNET_F_NEEDS_CSUM, gso_type=h.VNET_GSO_NONE,
            # hdr_len is only a hint for a frame that is not GSO: capped, never refused.
            hdr_len=min(inner.hdr_len + outer_len, 0xFFFF) if inner.hdr_len else 0, gso_size=0,
            csum_start=inner.csum_start + outer_len, csum_offset=inner.csum_offset,
            num_buffers=0, hash_value=0, hash_report=0, padding=0,
            outer_th_offset=0, inner_nh_offset=0))
    if inner.gso_type & ~h.VNET_GSO_ECN not in _TCP_TYPES:
        return Refusal.GSO_TYPE
    if not needs_csum:
        return Refusal.GSO_WITHOUT_CSUM
    if inner.hdr_len + outer_len > 0xFFFF:
        return Refusal.TOO_LONG  # the outer frame's header length would not fit its field
    return VIRTIO_NET_HDR_TUNNEL.build(dict(
        flags=h.VNET_F_NEEDS_CSUM | (VNET_F_UDP_TUNNEL_CSUM if udp_tunnel_csum else 0),
        gso_type=inner.gso_type | VNET_GSO_UDP_TUNNEL_IPV4,
        hdr_len=inner.hdr_len + outer_len, gso_size=inner.gso_size,
        csum_start=inner.csum_start + outer_len, csum_offset=inner.csum_offset,
        num_buffers=0, hash_value=0, hash_report=0, padding=0,
        outer_th_offset=_outer_th_offset(outer_len),
        inner_nh_offset=outer_len + h.ETH_HEADER_LEN))


def decap_vnet(outer_vnet: bytes, *,
               outer_len: int = vxlan.OUTER_HEADERS_LEN) -> bytes | Refusal:
    """The 10-byte header of the inner frame of a VXLAN frame read with the 24-byte header
    ``outer_vnet``, once the ``outer_len`` bytes in front of the inner frame are removed; or why
    the inner frame cannot be passed on with its offload.

    A partial checksum in the outer headers (the outer UDP checksum) is dropped with them: the
    inner frame is then complete. ``VNET_F_DATA_VALID`` vouches for the inner checksum only
    together with ``VNET_F_UDP_TUNNEL_CSUM`` (the kernel's ``csum_level`` 1)."""
    outer = VIRTIO_NET_HDR_TUNNEL.parse(outer_vnet[:VNET_TUNNEL_HDR_LEN])
    if outer.flags & ~_KNOWN_FLAGS:
        return Refusal.UNKNOWN_FLAGS
    tunnel = outer.gso_type & VNET_GSO_UDP_TUNNEL
    inner_type = outer.gso_type & ~VNET_GSO_UDP_TUNNEL
    needs_csum = bool(outer.flags & h.VNET_F_NEEDS_CSUM)
    inner_valid = (outer.flags & h.VNET_F_DATA_VALID and outer.flags & VNET_F_UDP_TUNNEL_CSUM
                   and not needs_csum)
    if inner_type == h.VNET_GSO_NONE:
        if tunnel:
            return Refusal.GSO_TYPE
        if not needs_csum or outer.csum_start < outer_len:
            return h.VIRTIO_NET_HDR.build(dict(
                flags=h.VNET_F_DATA_VALID if inner_valid else 0, gso_type=h.VNET_GSO_NONE,
                hdr_len=0, gso_size=0, csum_start=0, csum_offset=0))
        if outer.csum_start < outer_len + _MIN_L4_START:
            return Refusal.CSUM_OUTSIDE_INNER
        return h.VIRTIO_NET_HDR.build(dict(
            flags=h.VNET_F_NEEDS_CSUM, gso_type=h.VNET_GSO_NONE,
            hdr_len=max(outer.hdr_len - outer_len, 0), gso_size=0,
            csum_start=outer.csum_start - outer_len, csum_offset=outer.csum_offset))
    if tunnel & VNET_GSO_UDP_TUNNEL_IPV6:
        return Refusal.OUTER_IPV6
    if inner_type & ~h.VNET_GSO_ECN not in _TCP_TYPES:
        return Refusal.GSO_TYPE
    if not tunnel:
        # A GSO frame without the tunnel bits is a super-frame of the outer protocol itself,
        # which VXLAN never is.
        return Refusal.GSO_TYPE
    if not needs_csum:
        return Refusal.GSO_WITHOUT_CSUM
    if (outer.outer_th_offset != _outer_th_offset(outer_len)
            or outer.inner_nh_offset != outer_len + h.ETH_HEADER_LEN):
        return Refusal.OFFSETS
    if outer.csum_start < outer.inner_nh_offset:
        return Refusal.CSUM_OUTSIDE_INNER
    return h.VIRTIO_NET_HDR.build(dict(
        flags=h.VNET_F_NEEDS_CSUM, gso_type=inner_type,
        hdr_len=max(outer.hdr_len - outer_len, 0), gso_size=outer.gso_size,
        csum_start=outer.csum_start - outer_len, csum_offset=outer.csum_offset))


def widen_vnet(vnet: bytes) -> bytes:
    """The 24-byte header of a frame that crosses to a tunnel-GSO TAP without being encapsulated:
    its 10-byte header with the tunnel fields zero (the kernel's tunnel path then stays out)."""
    return bytes(vnet[: h.VNET_HDR_LEN]) + ZERO_VNET_TUNNEL_HDR[h.VNET_HDR_LEN:]


def narrow_vnet(vnet: bytes) -> bytes | Refusal:
    """The 10-byte header of a frame read from a tunnel-GSO TAP that leaves for a pod as it is
    (not decapsulated), or why it cannot: a tunnel super-frame only crosses decapsulated, and the
    tunnel checksum flag has no meaning in the short header."""
    hdr = VIRTIO_NET_HDR_TUNNEL.parse(vnet[:VNET_TUNNEL_HDR_LEN])
    if hdr.gso_type & VNET_GSO_UDP_TUNNEL:
        return Refusal.GSO_TYPE
    if hdr.flags & ~(h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID):
        return Refusal.UNKNOWN_FLAGS
    return bytes(vnet[: h.VNET_HDR_LEN])


def partial_udp_checksum(src_ip: bytes, dst_ip: bytes, udp_length: int,
                         accel: ModuleType = _pure) -> int:
    """What the outer UDP checksum field holds when the kernel is to complete it
    (``VNET_F_UDP_TUNNEL_CSUM``): the folded, not inverted, pseudo-header sum of the whole
    super-frame, which the kernel adjusts to each segment's length."""
    return accel.pseudo_header_sum(src_ip, dst_ip, h.IpProto.UDP, udp_length)


def encapsulate_offloaded(inner_vnet: bytes, inner_frame: bytes, *, udp_checksum: bool = False,
                          accel: ModuleType = _pure, **outer) -> bytes | Refusal:
    """The 24-byte header followed by the VXLAN encapsulation of ``inner_frame`` (whose 10-byte
    header is ``inner_vnet``), ready to be written to a TAP opened for UDP-tunnel GSO.

    ``outer`` are ``vxlan.encapsulate``'s keyword arguments (addresses, ports, VNI, ident, ttl).
    With ``udp_checksum`` the outer UDP checksum is computed here for a complete inner frame, left
    to the kernel for a GSO frame, and 0 (none) for a non-GSO frame with a partial checksum, whose
    inner bytes are not final yet."""
    vnet = encap_vnet(inner_vnet, len(inner_frame), udp_tunnel_csum=udp_checksum)
    if isinstance(vnet, Refusal):
        return vnet
    flags, gso_type = vnet[0], vnet[1]
    complete = not flags & h.VNET_F_NEEDS_CSUM
    frame = vxlan.encapsulate(inner_frame, udp_checksum=udp_checksum and complete, accel=accel,
                              **outer)
    if udp_checksum and gso_type != h.VNET_GSO_NONE:
        udp_at = _outer_th_offset(vxlan.OUTER_HEADERS_LEN)
        udp_length = len(frame) - udp_at
        csum = partial_udp_checksum(outer["src_ip"], outer["dst_ip"], udp_length, accel)
        field = udp_at + 6
        frame = frame[:field] + csum.to_bytes(2, "big") + frame[field + 2:]
    return vnet + frame

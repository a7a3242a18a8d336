"""ip4-rewrite: what a router does to a packet it forwards. TTL, MTU, fragments.

* TTL 1 or 0 on arrival: the packet dies here and the sender gets ICMP Time Exceeded (that is how
  traceroute shows the gateway as the first hop).
* MTU: the size that counts is the size each packet will have on the egress segment. For a TSO
  frame from a pod (virtio-net GSO) that is one segment (headers + ``gso_size``), not the 64 KB
  frame, which the receiving kernel splits; such frames pass intact when their segments fit.
* Too big with DF set: ICMP Fragmentation Needed with the egress MTU, so path-MTU discovery works.
  Too big without DF: fragmented here (RFC 791), as Linux does; a partial checksum
  (``VIRTIO_NET_HDR_F_NEEDS_CSUM``) is completed first, because the receiver cannot complete it
  over fragments. A GSO frame without DF whose segments do not fit is dropped and counted (the
  senders that produce GSO frames set DF).
* A packet for another node's pods (an overlay route) is measured against the overlay's MTU and
  goes on to vxlan-encap.
* TTL is decremented and the header checksum updated incrementally (``pipeline.ttl``, which the
  fast path shares).
"""
from __future__ import annotations

import enum
import struct

from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.pipeline.ttl import decrement_ttl
from vswitch.tables.fib import RouteKind
from vswitch.wire import headers as h, views

NAME = "ip4-rewrite"
NEXT = ("ip4-neighbor", "vxlan-encap", "ip4-icmp-error")


class Counter(enum.Enum):
    FORWARDED = "packets rewritten for forwarding (TTL decremented)"
    TTL_EXPIRED = "TTL reached zero: ICMP time exceeded"
    FRAG_NEEDED = "DF packet larger than the egress MTU: ICMP fragmentation needed"
    FRAGMENTED = "packets fragmented to fit the egress MTU"
    FRAGMENTS = "fragments produced"
    GSO_TOO_BIG = "GSO frame without DF whose segments exceed the egress MTU"


def wire_length(pkt: Packet) -> int:
    """The IPv4 length of each packet the egress segment will carry for this frame."""
    ip = pkt.ip
    vnet = pkt.vnet
    if vnet is None or not vnet.gso_type:  # VNET_GSO_NONE
        return ip.total_length
    l4 = pkt.l3_offset + ip.ihl * 4
    l4_header = h.UDP_HEADER_LEN
    if ip.protocol == h.IpProto.TCP and len(pkt.data) >= l4 + h.TCP_HEADER_LEN:
        l4_header = views.Tcp(pkt.data, l4).data_offset * 4
    return ip.ihl * 4 + l4_header + vnet.gso_size


def _completed_l4_checksum(pkt: Packet, packet: bytes, env: Env) -> bytes:
    """Finish a partial checksum (virtio NEEDS_CSUM) in software before the packet is split."""
    vnet = pkt.vnet
    if vnet is None or not vnet.flags & h.VNET_F_NEEDS_CSUM:
        return packet
    start = vnet.csum_start - h.ETH_HEADER_LEN  # offsets in the header count from the frame start
    field = start + vnet.csum_offset
    if start < 0 or field + 2 > len(packet):
        return packet
    total = env.accel.sum16(packet[start:])
    return packet[:field] + (~total & 0xFFFF).to_bytes(2, "big") + packet[field + 2:]


def fragment(packet: bytes, mtu: int, env: Env) -> list[bytes]:
    """Split an IPv4 packet into fragments that fit ``mtu`` (RFC 791). Options stay in the first
    fragment only."""
    ihl = (packet[0] & 0x0F) * 4
    header, payload = packet[:ihl], packet[ihl:]
    (flags_fragment,) = struct.unpack_from("!H", header, h.IPV4_FLAGS_FRAGMENT_OFFSET)
    base_offset = flags_fragment & 0x1FFF
    last_had_mf = bool(flags_fragment & h.IPV4_FLAG_MF)
    fragments = []
    position = 0
    while position < len(payload):
        first = position == 0
        this_header = header if first else header[:20]
        if not first:
            this_header = bytes([0x45]) + this_header[1:]
        chunk = (mtu - len(this_header)) // 8 * 8
        piece = payload[position: position + chunk]
        last = position + len(piece) >= len(payload)
        more = (not last) or last_had_mf
        offset = base_offset + position // 8
        fields = bytearray(this_header)
        struct.pack_into("!H", fields, h.IPV4_TOTAL_LENGTH_OFFSET, len(fields) + len(piece))
        struct.pack_into("!H", fields, h.IPV4_FLAGS_FRAGMENT_OFFSET,
                         (h.IPV4_FLAG_MF if more else 0) | offset)
        struct.pack_into("!H", fields, h.IPV4_CHECKSUM_OFFSET, 0)
        struct.pack_into("!H", fields, h.IPV4_CHECKSUM_OFFSET, env.accel.checksum(bytes(fields)))
        fragments.append(bytes(fields) + piece)
        position += len(piece)
    return fragments


def _where(segment, overlay: bool) -> str:
    return "the overlay" if overlay else f"segment {segment.name}"


def process(pkt: Packet, env: Env):
    ip = pkt.ip
    if ip.ttl <= 1:
        pkt.pending_drop = env.drop_action(pkt, Counter.TTL_EXPIRED)
        pkt.icmp_error = (h.IcmpType.TIME_EXCEEDED, 0, bytes(4))
        return "ip4-icmp-error"
    segment = env.segments[pkt.route.segment]
    overlay = pkt.route.kind is RouteKind.OVERLAY
    mtu = env.overlay.vtep.mtu if overlay else segment.mtu
    size = wire_length(pkt)
    header_len = ip.ihl * 4
    current = tracked_flows.current_packet(pkt)  # after NAT; without Ethernet padding
    packet = decrement_ttl(current[:header_len], env.accel) + current[header_len:]
    pkt.egress_mtu = mtu
    if size <= mtu:
        pkt.out_packets = [packet]
    elif ip.df:
        pkt.pending_drop = env.drop_action(pkt, Counter.FRAG_NEEDED)
        pkt.icmp_error = (h.IcmpType.DEST_UNREACHABLE, 4, struct.pack("!HH", 0, mtu))
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{size}-byte packets with DF do not fit MTU {mtu} of "
                                 f"{_where(segment, overlay)}")
        return "ip4-icmp-error"
    elif pkt.vnet is not None and pkt.vnet.gso_type != h.VNET_GSO_NONE:
        return env.drop(pkt, Counter.GSO_TOO_BIG)
    else:
        pkt.out_packets = fragment(_completed_l4_checksum(pkt, packet, env), mtu, env)
        env.count(Counter.FRAGMENTED)
        env.count(Counter.FRAGMENTS, len(pkt.out_packets))
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{size} bytes exceed MTU {mtu} of {_where(segment, overlay)}: "
                                 f"{len(pkt.out_packets)} fragments")
    env.count(Counter.FORWARDED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"TTL {ip.ttl} -> {ip.ttl - 1}, header checksum updated; "
                             f"{size} bytes fit MTU {mtu}" if size <= mtu else
                             f"TTL {ip.ttl} -> {ip.ttl - 1}")
    return "vxlan-encap" if overlay else "ip4-neighbor"

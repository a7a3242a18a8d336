"""The fast path: what a flow-cache hit does to a frame, and which decisions become cache entries.

The pipeline decides; this module only replays a memoised decision on a packet of the same flow,
checking first whatever may differ from packet to packet (TTL, size, the neighbour's freshness,
the connection's state) and declining (returning None) whenever the pipeline could decide
differently. It reads a few header bytes directly, at offsets the flow-key extractor has already
validated: that, like the extractor, is the hot path's one exception to declaring headers with
construct, and the parity tests hold it to the pipeline's answers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vswitch.core.flow_cache import CacheEntry
from vswitch.pipeline import tunnel
from vswitch.pipeline.context import Packet
from vswitch.pipeline.ttl import decrement_ttl, lower_ttl
from vswitch.tables.conntrack import ConntrackTable, Direction, Entry, TcpState, Timeouts
from vswitch.tables.neighbors import NeighborState, NeighborTimers
from vswitch.tables.overlay import LocalVtep
from vswitch.wire import headers as h

_U16 = struct.Struct("!H")
_GSO_PROTOCOL = {h.VNET_GSO_TCPV4: int(h.IpProto.TCP), h.VNET_GSO_UDP: int(h.IpProto.UDP)}
_GSO_UDP_TUNNEL = 0x60  # VNET_GSO_UDP_TUNNEL_IPV4 | _IPV6: judged on the tunnel path
# Plain ints: the enum types' own operators cost a Python call per use on the hot path.
_TCP_STATE_FLAGS = int(h.TcpFlag.SYN | h.TcpFlag.FIN | h.TcpFlag.RST)
_ACK = int(h.TcpFlag.ACK)
_TCP = int(h.IpProto.TCP)
_NEEDS_CSUM = int(h.VNET_F_NEEDS_CSUM)
_DATA_VALID = int(h.VNET_F_DATA_VALID)
_UDP = int(h.IpProto.UDP)
_ICMP = int(h.IpProto.ICMP)
_IPV4_NO_OPTIONS = 0x45  # what encapsulation sends; an outer header with options goes the long way
_ECN_CE = 0x03
_UDP_HEADER = struct.Struct("!HHHH")
# An outer IPv4 packet carrying at least an inner Ethernet and IPv4 header.
_OUTER_MIN = (h.IPV4_MIN_HEADER_LEN + h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN + h.ETH_HEADER_LEN
              + h.IPV4_MIN_HEADER_LEN)


def connection_key(key: bytes, frame: bytes, l2: int) -> bytes | None:
    """The flow key plus what tells connections apart: protocol and ports (TCP, UDP), or ICMP
    type and echo identifier. None when the L4 header is not all there."""
    l3 = l2 + h.ETH_HEADER_LEN
    l4 = l3 + (frame[l3] & 0x0F) * 4
    proto = frame[l3 + 9]
    if proto in (h.IpProto.TCP, h.IpProto.UDP):
        if len(frame) < l4 + (h.TCP_HEADER_LEN if proto == h.IpProto.TCP else h.UDP_HEADER_LEN):
            return None
        return key + frame[l3 + 9: l3 + 10] + frame[l4: l4 + 4]
    if proto == h.IpProto.ICMP and len(frame) >= l4 + h.ICMP_HEADER_LEN:
        return key + frame[l3 + 9: l3 + 10] + frame[l4: l4 + 1] + frame[l4 + 4: l4 + 6]
    return None


def vnet_plausible(frame: bytes, l2: int) -> bool:
    """Hand-written twin of eth-input's check of the virtio-net header (``vnet_plausible`` in
    native/datapath.c too): False for a header that cannot describe its frame, which must go to
    the pipeline to be counted and dropped instead of being replayed to an output port. Called
    only for a frame with a flow key (a whole IPv4 packet) and a header of ``l2`` bytes."""
    flags, gso_type = frame[0], frame[1]
    if not flags and gso_type == h.VNET_GSO_NONE:
        return True
    if flags & h.VNET_F_NEEDS_CSUM and ((frame[6] | frame[7] << 8) + (frame[8] | frame[9] << 8)
                                        + 2 > len(frame) - l2):
        return False
    if gso_type == h.VNET_GSO_NONE or gso_type & _GSO_UDP_TUNNEL:
        return True
    protocol = frame[l2 + h.ETH_HEADER_LEN + 9]
    return ((frame[4] | frame[5] << 8) > 0
            and _GSO_PROTOCOL.get(gso_type & ~h.VNET_GSO_ECN) == protocol)


def packet_length_on_wire(frame: bytes, l2: int) -> int:
    """Hand-written twin of ``ip4_rewrite.wire_length``: the IPv4 length of each packet this frame
    becomes on the wire (one TSO segment for a GSO frame)."""
    l3 = l2 + h.ETH_HEADER_LEN
    if not l2 or frame[1] == h.VNET_GSO_NONE:
        return _U16.unpack_from(frame, l3 + h.IPV4_TOTAL_LENGTH_OFFSET)[0]
    ihl = (frame[l3] & 0x0F) * 4
    l4_header = h.UDP_HEADER_LEN
    if frame[l3 + 9] == h.IpProto.TCP and len(frame) >= l3 + ihl + h.TCP_HEADER_LEN:
        l4_header = (frame[l3 + ihl + 12] >> 4) * 4
    gso_size = frame[4] | (frame[5] << 8)
    return ihl + l4_header + gso_size


def lookup(cache: dict[bytes, CacheEntry], key: bytes, frame: bytes, l2: int,
           generation: int) -> tuple[CacheEntry | None, bytes | None]:
    """The current entry for a frame of ``key`` (following a per-connection marker to the
    connection's own entry), or None; and the connection key when one was computed. Each entry
    of the current generation found on the way is marked used (``FlowCache``: what the sweep
    and the eviction clock spare), as native/datapath.c's flow_get marks it."""
    entry = cache.get(key)
    if entry is None or entry.generation != generation:
        return None, None
    entry.used = True
    if not entry.per_connection:
        return entry, None
    conn_key = connection_key(key, frame, l2)
    entry = cache.get(conn_key) if conn_key is not None else None
    if entry is None or entry.generation != generation:
        return None, conn_key
    entry.used = True
    if entry.per_connection:
        return None, conn_key
    return entry, conn_key


# Inner frames of VXLAN are cached under this instead of a port id (port ids are small numbers).
INNER_PREFIX = b"\xffVXL"


@dataclass(frozen=True)
class TunnelEnd:
    """What a cached "VXLAN for us" marker checks per packet, from our VTEP."""

    vtep_mac: bytes
    port: int
    vxlan_header: bytes  # flags with the I bit, our VNI, reserved bits zero: all 8 bytes exact

    @classmethod
    def of(cls, vtep: LocalVtep) -> "TunnelEnd":
        return cls(vtep.vtep_mac, vtep.port,
                   struct.pack("!II", h.VXLAN_FLAG_VNI << 24, vtep.vni << 8))


def memoise(pkt: Packet, key: bytes, conn_key: bytes | None,
            generation: int) -> list[tuple[bytes, CacheEntry]]:
    """The cache entries a pipeline run justifies: one for a plain switched or routed decision;
    for a translated connection a per-connection marker under the flow key, and the connection's
    own entry when its output is a single known port."""
    if pkt.cacheable:
        return [(key, CacheEntry(generation, pkt.dst_entry.port, pkt.src_entry, pkt.dst_entry,
                                 pkt.rewrite, pkt.neighbor, pkt.egress_mtu, encap=pkt.encap))]
    if pkt.ct is None:
        return []
    entries = [(key, CacheEntry(generation, -1, None, None, per_connection=True))]
    if pkt.conn_out_port is None or pkt.src_entry is None:
        return entries
    if conn_key is None:
        conn_key = connection_key(key, pkt.data, pkt.l2_offset)
    if conn_key is not None:
        ct, direction = pkt.ct
        target = (ct.reply if direction is Direction.ORIGINAL else ct.original).reversed()
        entries.append((conn_key, CacheEntry(generation, pkt.conn_out_port, pkt.src_entry,
                                             pkt.dst_entry, pkt.rewrite, pkt.neighbor,
                                             pkt.egress_mtu, ct=ct, direction=direction,
                                             target=target, encap=pkt.encap)))
    return entries


class FastPath:
    def __init__(self, accel: ModuleType, conntrack: ConntrackTable, timers: NeighborTimers,
                 extractor: Any = None, vtep: LocalVtep | None = None):
        self.accel = accel
        self.conntrack = conntrack
        self.timers = timers
        self.extractor = extractor if extractor is not None else accel.FlowKeyExtractor()
        self.tunnel_end = TunnelEnd.of(vtep) if vtep is not None else None

    def memoise_decapsulated(self, pkt: Packet, key: bytes,
                             generation: int) -> list[tuple[bytes, CacheEntry]]:
        """For a packet vxlan-decap opened: the marker under the outer key, and the inner
        decision under the inner frame's key (``pkt.data`` is the inner frame by now)."""
        if self.tunnel_end is None:
            return []
        entries = [(key, CacheEntry(generation, -1, None, None, decap=self.tunnel_end))]
        (inner_key,) = self.extractor.extract([pkt.data], pkt.l2_offset)
        if inner_key is not None:
            entries += memoise(pkt, INNER_PREFIX + inner_key, None, generation)
        return entries

    def through_tunnel(self, marker: CacheEntry, frame: bytes, l2: int,
                       cache: dict[bytes, CacheEntry], generation: int
                       ) -> tuple[bytes, CacheEntry | None]:
        """The inner frame of a VXLAN packet for us and its current entry, or (frame, None)
        when the pipeline must see the packet."""
        inner = self._opened(marker.decap, frame, l2)
        if inner is None:
            return frame, None
        (inner_key,) = self.extractor.extract([inner], l2)
        if inner_key is None:
            return frame, None
        entry, _ = lookup(cache, INNER_PREFIX + inner_key, inner, l2, generation)
        if entry is None or entry.decap is not None:
            return frame, None
        return inner, entry

    def _opened(self, end: TunnelEnd, frame: bytes, l2: int) -> bytes | None:
        """The twin of vxlan-decap for the plain case: the inner frame with its virtio-net
        header, or None for anything the stage would drop or treat specially."""
        l3 = l2 + h.ETH_HEADER_LEN
        if (len(frame) < l3 + _OUTER_MIN or frame[l3] != _IPV4_NO_OPTIONS
                or frame[l3 + 9] != _UDP or frame[l3 + 6] & 0x3F or frame[l3 + 7]
                or frame[l3 + 1] & _ECN_CE == _ECN_CE):
            return None
        (total,) = _U16.unpack_from(frame, l3 + h.IPV4_TOTAL_LENGTH_OFFSET)
        if not _OUTER_MIN <= total <= len(frame) - l3:
            return None
        if self.accel.checksum(frame[l3: l3 + h.IPV4_MIN_HEADER_LEN]) != 0:
            return None
        udp = l3 + h.IPV4_MIN_HEADER_LEN
        _, dport, length, udp_checksum = _UDP_HEADER.unpack_from(frame, udp)
        trusted = l2 and frame[0] & (_NEEDS_CSUM | _DATA_VALID)
        if (dport != end.port or length != total - h.IPV4_MIN_HEADER_LEN
                or (udp_checksum and not trusted)):
            return None
        start = udp + h.UDP_HEADER_LEN + h.VXLAN_HEADER_LEN
        if (frame[udp + h.UDP_HEADER_LEN: start] != end.vxlan_header
                or frame[start: start + 6] != end.vtep_mac
                or frame[start + 6: start + 12] == end.vtep_mac):
            return None
        vnet = tunnel.inner_vnet(frame[:l2])
        if vnet is None:
            return None
        return b"".join((vnet, memoryview(frame)[start: l3 + total]))

    def apply(self, entry: CacheEntry, frame: bytes, l2: int, now: float) -> bytes | None:
        """The bytes to send for a hit on ``entry``, or None: the pipeline must see this one."""
        if l2 and not vnet_plausible(frame, l2):
            return None  # a header that lies: the pipeline counts and drops the frame
        vnet = frame[:l2]
        if entry.encap is not None:
            (total,) = _U16.unpack_from(frame, l2 + h.ETH_HEADER_LEN + h.IPV4_TOTAL_LENGTH_OFFSET)
            vnet = tunnel.outer_vnet(vnet, h.ETH_HEADER_LEN + total)
            if vnet is None:
                return None  # cannot cross the tunnel as it is: the pipeline counts the drop
        if entry.ct is not None:
            return self._connection(entry, frame, l2, now, vnet)
        if entry.rewrite is None:
            return frame
        return self._routed(entry, frame, l2, now, vnet)

    def _routing_allows(self, entry: CacheEntry, frame: bytes, l2: int, l3: int, ihl: int,
                        now: float) -> bool:
        """What ip4-input, ip4-rewrite and ip4-neighbor check that can change per packet: the
        header checksum, the TTL, the size against the egress MTU, the neighbour's freshness."""
        neighbor = entry.neighbor
        return (neighbor.state is NeighborState.REACHABLE
                and now - neighbor.confirmed < self.timers.reachable_time
                and frame[l3 + h.IPV4_TTL_OFFSET] > 1
                and packet_length_on_wire(frame, l2) <= entry.mtu
                and self.accel.checksum(frame[l3: l3 + ihl]) == 0)

    def _routed(self, entry: CacheEntry, frame: bytes, l2: int, now: float,
                vnet: bytes) -> bytes | None:
        l3 = l2 + h.ETH_HEADER_LEN
        ihl = (frame[l3] & 0x0F) * 4
        if not self._routing_allows(entry, frame, l2, l3, ihl, now):
            return None
        (total,) = _U16.unpack_from(frame, l3 + h.IPV4_TOTAL_LENGTH_OFFSET)
        if entry.encap is not None:
            return self._encapsulated(entry, vnet, decrement_ttl(frame[l3: l3 + ihl], self.accel),
                                      memoryview(frame)[l3 + ihl: l3 + total])
        return b"".join((frame[:l2], entry.rewrite, frame[l2 + 12: l3],
                         decrement_ttl(frame[l3: l3 + ihl], self.accel),
                         frame[l3 + ihl: l3 + total]))

    def _encapsulated(self, entry: CacheEntry, vnet: bytes, ip_header: bytes, rest) -> bytes:
        """What vxlan-encap and ip4-neighbor make of a routed packet (``ip_header`` + ``rest``)
        for another node; ``vnet`` is the encapsulated frame's header (``tunnel.outer_vnet``)."""
        pieces, _ = entry.encap.outer_pieces(ip_header, rest, self.accel)
        return b"".join((vnet, entry.rewrite, tunnel.ETHERTYPE_IPV4, *pieces))

    def _connection(self, entry: CacheEntry, frame: bytes, l2: int, now: float,
                    vnet: bytes) -> bytes | None:
        """A packet of a translated connection in a plain state: the conntrack update and the NAT
        rewrite run here, as the stages would run them. SYN, FIN, RST, a TCP state other than
        an assured ESTABLISHED, a first reply, or a dead entry go to the pipeline."""
        ct = entry.ct
        if not ct.alive(now):
            return None
        l3 = l2 + h.ETH_HEADER_LEN
        ihl = (frame[l3] & 0x0F) * 4
        l4 = l3 + ihl
        proto = frame[l3 + 9]
        if proto == _TCP:
            flags = ((frame[l4 + 12] & 0x01) << 8) | frame[l4 + 13]
            if (ct.tcp_state is not TcpState.ESTABLISHED or not ct.assured
                    or flags & _TCP_STATE_FLAGS or not flags & _ACK):
                return None
        routed = entry.rewrite is not None
        if routed and not self._routing_allows(entry, frame, l2, l3, ihl, now):
            return None
        direction = entry.direction.value
        expires = plain_expiry(ct, direction, proto, now, self.conntrack.timeouts)
        if expires is None:
            return None
        (total,) = _U16.unpack_from(frame, l3 + h.IPV4_TOTAL_LENGTH_OFFSET)
        ct.packets[direction] += 1
        ct.bytes[direction] += total
        ct.last_seen = now
        ct.expires = expires
        target = entry.target
        packet = bytearray(frame[l3: l3 + total])
        self.accel.nat_rewrite(packet, src=target.src, sport=target.sport, dst=target.dst,
                               dport=target.dport, partial=l2 > 0 and bool(frame[0] & _NEEDS_CSUM))
        if not routed:
            return b"".join((frame[:l3], packet))
        lower_ttl(packet, self.accel)
        if entry.encap is not None:
            ihl = (packet[0] & 0x0F) * 4
            return self._encapsulated(entry, vnet, bytes(packet[:ihl]), memoryview(packet)[ihl:])
        return b"".join((frame[:l2], entry.rewrite, frame[l2 + 12: l3], packet))


def plain_expiry(ct: Entry, direction: int, proto: int, now: float,
                 timeouts: Timeouts) -> float | None:
    """The new expiry of a connection after one more packet that changes nothing but its clock
    and counters (what ``ConntrackTable.update`` does for it), or None when the packet may change
    more (a first reply, a TCP transition) or would move the expiry earlier, which the table's
    deadline heap must hear of: the pipeline then updates the entry. The caller has checked a TCP
    packet's flags and state already."""
    if proto == _TCP:
        expires = now + timeouts.established
    elif direction == 1 and not ct.replied:
        return None
    elif proto == _UDP:
        expires = now + (timeouts.udp_replied if ct.replied else timeouts.udp_unreplied)
    elif proto == _ICMP:
        expires = now + timeouts.icmp
    else:
        return None
    return expires if expires >= ct.expires else None

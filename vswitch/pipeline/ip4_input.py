"""ip4-input: the router's front door for IPv4 addressed to a gateway MAC.

It verifies the header checksum (a router must not forward a corrupted header) and refuses to
route what must never be routed: broadcast and multicast destinations, and sources that are not a
unicast host address. UDP for the overlay port of the node's own VTEP address that came in on the uplink
is VXLAN from another node: vxlan-decap opens it, and its inner packet comes back here. Everything
else goes to connection tracking first, even packets for the node's own addresses: a NodePort
connection or a reply to a masqueraded one is addressed to the node and must be translated before
anyone decides it is local.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.wire import headers as h

NAME = "ip4-input"
NEXT = ("ip4-conntrack", "vxlan-decap")


class Counter(enum.Enum):
    PACKETS = "IPv4 packets addressed to a gateway MAC"
    BAD_CHECKSUM = "IPv4 header checksum is wrong"
    NOT_ROUTABLE = "broadcast, multicast or zero address: never routed"


_UDP = int(h.IpProto.UDP)


def process(pkt: Packet, env: Env):
    env.count(Counter.PACKETS)
    ip = pkt.ip
    header = pkt.data[pkt.l3_offset: pkt.l3_offset + ip.ihl * 4]
    if env.accel.checksum(header) != 0:
        return env.drop(pkt, Counter.BAD_CHECKSUM)
    dst, src, unroutable = ip.dst, ip.src, env.unroutable
    if dst[0] >= 224 or src[0] >= 224 or dst in unroutable or src in unroutable:
        return env.drop(pkt, Counter.NOT_ROUTABLE)
    if _is_tunnelled(pkt, env):
        return "vxlan-decap"
    return "ip4-conntrack"


def _is_tunnelled(pkt: Packet, env: Env) -> bool:
    vtep = env.overlay.vtep
    ip = pkt.ip
    if (vtep is None or ip.protocol != _UDP or ip.dst != vtep.address
            or pkt.port.segment != env.overlay.uplink_segment or ip.fragment_offset):
        return False
    ports = pkt.l3_offset + ip.ihl * 4
    if ports + h.L4_PORTS_LEN > pkt.l3_offset + ip.total_length:
        return False
    return int.from_bytes(pkt.data[ports + 2: ports + 4], "big") == vtep.port

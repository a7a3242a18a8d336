"""ip4-input: the router's front door for IPv4 addressed to a gateway MAC.

It verifies the header checksum (a router must not forward a corrupted header), hands packets for
one of the gateway addresses to ip4-local, and refuses to route what must never be routed:
broadcast and multicast destinations, and sources that are not a unicast host address.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.wire.addresses import ip_text

NAME = "ip4-input"
NEXT = ("ip4-local", "ip4-lookup")


class Counter(enum.Enum):
    PACKETS = "IPv4 packets addressed to a gateway MAC"
    BAD_CHECKSUM = "IPv4 header checksum is wrong"
    NOT_ROUTABLE = "broadcast, multicast or zero address: never routed"


def _not_routable(addr: bytes, env: Env) -> bool:
    if addr[0] >= 224 or addr == b"\x00\x00\x00\x00":
        return True
    return any(addr == s.cidr.broadcast_address.packed for s in env.segments)


def process(pkt: Packet, env: Env):
    env.count(Counter.PACKETS)
    ip = pkt.ip
    header = pkt.data[pkt.l3: pkt.l3 + ip.ihl * 4]
    if env.accel.checksum(header) != 0:
        return env.drop(pkt, Counter.BAD_CHECKSUM)
    if ip.dst in env.local_ips:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{ip_text(ip.dst)} is a gateway address of this node")
        return "ip4-local"
    if _not_routable(ip.dst, env) or _not_routable(ip.src, env):
        return env.drop(pkt, Counter.NOT_ROUTABLE)
    return "ip4-lookup"

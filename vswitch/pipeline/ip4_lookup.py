"""ip4-lookup: longest-prefix match in the FIB picks the egress segment and next hop.

No route means ICMP Destination Unreachable (network) goes back at once, so a client learns in
milliseconds, not after a timeout, that the address is unreachable.
"""
from __future__ import annotations

import enum

from vswitch.pipeline import ip4_masquerade
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-lookup"
NEXT = ("ip4-rewrite", "ip4-masquerade", "ip4-icmp-error")


class Counter(enum.Enum):
    ROUTED = "packets with a route"
    NO_ROUTE = "no route to the destination: ICMP network unreachable"


def process(pkt: Packet, env: Env):
    dst = int.from_bytes(pkt.ip.dst, "big")
    route = env.fib.lookup(dst)
    if route is None:
        pkt.pending_drop = env.drop_verdict(pkt, Counter.NO_ROUTE)
        pkt.icmp_error = (h.IcmpType.DEST_UNREACHABLE, 0, bytes(4))
        return "ip4-icmp-error"
    env.count(Counter.ROUTED)
    pkt.route = route
    if pkt.trace is not None:
        others = [r.prefix for r in env.fib.matches(dst) if r is not route]
        why = (f"; longest of the matching prefixes {', '.join(map(str, [route.prefix] + others))}"
               if others else "")
        segment = env.segments[route.segment].name
        pkt.trace.note(NAME, f"{ip_text(pkt.ip.dst)} matches {route.describe()} "
                             f"(segment {segment}, from {route.origin}){why}")
    if ip4_masquerade.applies(pkt, env):
        return "ip4-masquerade"
    return "ip4-rewrite"

"""ip4-lookup: longest-prefix match in the FIB picks the egress segment and next hop.

No route means ICMP Destination Unreachable (network) goes back at once, so a client learns in
milliseconds, not after a timeout, that the address is unreachable. A packet routed out of the
uplink from a pod (a source inside the cluster CIDR) that no earlier stage translated goes to
ip4-masquerade, which gives it the node's address; every other routed packet goes to ip4-rewrite,
including those for another node's pods (an overlay route), which are never masqueraded.
A new connection (no tracked one, after a service's DNAT) from or to a pod that a network policy
selects goes to ip4-policy first, for its verdict.
"""
from __future__ import annotations

import enum
from ipaddress import IPv4Address

from vswitch.pipeline.context import Env, Packet
from vswitch.tables.fib import RouteKind
from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-lookup"
NEXT = ("ip4-rewrite", "ip4-masquerade", "ip4-icmp-error", "ip4-policy")


class Counter(enum.Enum):
    ROUTED = "packets with a route"
    NO_ROUTE = "no route to the destination: ICMP network unreachable"


def _leaves_masqueraded(pkt: Packet, env: Env) -> bool:
    nat = env.nat
    return (pkt.ct is None and nat.uplink_segment is not None and nat.node_address is not None
            and pkt.route.segment == nat.uplink_segment and pkt.route.kind is not RouteKind.OVERLAY and nat.cluster_cidr is not None
            and IPv4Address(pkt.ip.src) in nat.cluster_cidr)


def process(pkt: Packet, env: Env):
    dst = int.from_bytes(pkt.ip.dst, "big")
    route = env.fib.lookup(dst)
    if route is None:
        pkt.pending_drop = env.drop_action(pkt, Counter.NO_ROUTE)
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
    policies = env.nat.policies
    if pkt.new_connection and policies.active is not None:
        if policies.involves(_client(pkt, env), pkt.ip.dst):
            pkt.masquerade = _leaves_masqueraded(pkt, env)
            return "ip4-policy"
        if pkt.trace is not None:
            pkt.trace.note(NAME, "no policy selects the pod at either end")
    if _leaves_masqueraded(pkt, env):
        return "ip4-masquerade"
    return "ip4-rewrite"


def _client(pkt: Packet, env: Env) -> bytes:
    """The source a verdict is about: the client before a hairpin SNAT (see ``judged_tuple``)."""
    created = pkt.ct
    if created is not None and pkt.ip.src == env.nat.hairpin_address:
        return created[0].original.src
    return pkt.ip.src

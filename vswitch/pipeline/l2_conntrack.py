"""l2-conntrack: switched traffic between a pair of addresses that translated connections use.

A backend answering a client of its own segment replies straight to the client's MAC: the reply is
switched, not routed, yet it must be translated back (source = the service address), exactly as
kube-proxy needs br_netfilter for bridged traffic. l2-forward sends here only IPv4 unicast between
address pairs that some translated connection's replies carry, or from or to a pod that a network
policy selects; other switched traffic never pays for a lookup. A packet of no connection
between policy-selected pods goes to ip4-policy for its verdict. Nothing here is cached as a
plain decision: other connections between the same pair may be plain, or differently judged.
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Forward
from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.conntrack import Verdict

NAME = "l2-conntrack"
NEXT = ("ip4-policy",)


class Counter(enum.Enum):
    TRANSLATED = ("switched packets of tracked connections (translated, or checked by a network"
                  " policy), translated as their entry says")
    RELATED = "switched ICMP errors about translated connections, translated"
    PLAIN = "switched packets between such a pair that belong to no translated connection"
    TO_POLICY = "switched packets of no connection from or to a policy-selected pod: to verdict"
    INVALID = "TCP packets invalid for their connection's state: dropped"
    FRAGMENT_HELD = "switched later fragments that came before their first: held until it passes"
    FRAGMENT_HOLD_FULL = "switched later fragments that came before their first, not held: no room"
    FRAGMENT_OF_DROPPED = "switched later fragments of a datagram whose first fragment was dropped"


def process(pkt: Packet, env: Env):
    port = pkt.l2_out_port
    # Known unicast goes to its port; an unknown one of a policy-selected pair is flooded.
    ports = (port,) if port is not None else pkt.l2_flood_ports
    found = tracked_flows.find(pkt, env)
    if found is None:
        fragment = tracked_flows.untracked_fragment(pkt, env)
        if fragment is not tracked_flows.FragmentAction.PASS:
            return tracked_flows.hold_or_drop(pkt, env, fragment, NAME, Counter.FRAGMENT_HELD,
                                              Counter.FRAGMENT_HOLD_FULL,
                                              Counter.FRAGMENT_OF_DROPPED)
        if env.nat.policies.involves(pkt.ip.src, pkt.ip.dst):
            env.count(Counter.TO_POLICY)
            return "ip4-policy"
        env.count(Counter.PLAIN)
        if pkt.trace is not None:
            pkt.trace.note(NAME, "no translated connection: switched as it is")
        return (Forward(ports),)
    entry, direction, related = found
    if related:
        tracked_flows.apply_related(pkt, env, entry, direction)
        env.count(Counter.RELATED)
    else:
        verdict = tracked_flows.advance(pkt, env, entry, direction)
        if verdict is Verdict.INVALID:
            tracked_flows.dropped_first_fragment(pkt, env)
            return env.drop(pkt, Counter.INVALID)
        if verdict is Verdict.REOPEN:
            # The closed connection's entry is gone; this SYN belongs to no translated one.
            if env.nat.policies.involves(pkt.ip.src, pkt.ip.dst):
                env.count(Counter.TO_POLICY)
                return "ip4-policy"
            env.count(Counter.PLAIN)
            if pkt.trace is not None:
                pkt.trace.note(NAME, "a SYN on the tuple of a closed translated connection: "
                                     "its entry is removed, the packet switched as it is")
            return (Forward(ports),)
        tracked_flows.apply(pkt, env, entry, direction)
        env.count(Counter.TRANSLATED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"{direction.name.lower()} direction of [{entry.original.describe()}]:"
                             f" leaves as {tracked_flows.flow_of(pkt).describe()}")
    data = pkt.data[: pkt.l3_offset] + pkt.ip_packet
    if (not related and port is not None and pkt.src_entry is not None
            and pkt.dst_entry is not None):
        pkt.conn_out_port = port
    return (Forward(ports, data),)

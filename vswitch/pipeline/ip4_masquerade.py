"""ip4-masquerade: pod traffic leaving the cluster through the uplink takes the node's address.

ip4-lookup hands over the packets routed out of the uplink whose source is a pod (inside the
cluster CIDR) and that no earlier stage translated. The source port (or echo identifier) is kept
when no other connection to the same remote uses it, otherwise a free one is allocated, so replies
always map back to exactly one connection. Replies are translated back by ip4-conntrack.
"""
from __future__ import annotations

import enum

from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.conntrack import ConntrackTable, Direction
from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-masquerade"
NEXT = ("ip4-rewrite",)


class Counter(enum.Enum):
    NEW_CONNECTIONS = "new connections from pods to outside the cluster, masqueraded"
    UNTRACKABLE = "packets to outside the cluster with no port to translate: dropped"
    INVALID = "TCP packets other than SYN without a tracked connection: dropped"
    ECHO_REPLY_UNTRACKED = "ICMP echo replies to outside that answer no tracked echo request"
    TABLE_FULL = "new connections refused because the connection table is full of live entries"
    NO_PORT = "no free source port on the node address for this remote"


def process(pkt: Packet, env: Env):
    flow = tracked_flows.flow_of(pkt)
    if flow is None:
        return env.drop(pkt, Counter.UNTRACKABLE)
    if flow.proto == h.IpProto.TCP and not ConntrackTable.new_tcp_allowed(pkt.tcp_flags):
        return env.drop(pkt, Counter.INVALID)
    if (flow.proto == h.IpProto.ICMP
            and tracked_flows.current_packet(pkt)[pkt.ip.ihl * 4] != h.IcmpType.ECHO_REQUEST):
        return env.drop(pkt, Counter.ECHO_REPLY_UNTRACKED)
    node = env.nat.node_address
    low = 1 if flow.proto == h.IpProto.ICMP else 1024
    port = env.conntrack.allocate_port(flow.proto, node, flow.dst, flow.dport,
                                       preferred=flow.sport, low=low, now=env.now)
    if port is None:
        return env.drop(pkt, Counter.NO_PORT)
    if not env.commit:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"would masquerade {ip_text(flow.src)}:{flow.sport} as "
                                 f"{ip_text(node)}:{port}")
        return "ip4-rewrite"
    entry = env.conntrack.create(flow, env.now, snat=(node, port), labels={"kind": "masquerade"})
    if entry is None:
        return env.drop(pkt, Counter.TABLE_FULL)
    env.conntrack.update(entry, Direction.ORIGINAL, env.now, pkt.tcp_flags, pkt.ip.total_length)
    env.count(Counter.NEW_CONNECTIONS)
    tracked_flows.apply(pkt, env, entry, Direction.ORIGINAL)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"masquerade {ip_text(flow.src)}:{flow.sport} as "
                             f"{ip_text(node)}:{port}")
    return "ip4-rewrite"

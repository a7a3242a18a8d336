"""ip4-neighbor: put the routed packet back into Ethernet towards its next hop.

The next hop's MAC comes from the neighbour table. Unknown next hops are resolved by ARP from the
segment's gateway while the packet waits in a bounded per-neighbour queue (see
``vswitch.tables.neighbors``); a stale entry keeps forwarding and is re-probed. The frame's source
MAC is the egress segment's gateway MAC, so the receiver sees the router as its previous hop.
A decision is cacheable when it is a single packet to a reachable neighbour whose port is known,
of no translated connection and between addresses no translated connection's replies use.
An encapsulated packet's decision is cached with its ``Encapsulation``: the rewrite is then the
outer Ethernet header, and the fast path wraps each packet as vxlan-encap does. A decapsulated
packet's decision is cached under the key of its inner frame (see ``core.fast_path``).
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Hold
from vswitch.pipeline import routed_frames
from vswitch.pipeline.context import Env, Packet
from vswitch.tables.neighbors import NeighborState, ResolveResult
from vswitch.wire.addresses import ip_text, mac_text

NAME = "ip4-neighbor"
NEXT = ()


class Counter(enum.Enum):
    SENT = "routed packets sent to a resolved next hop"
    HELD = "packets held while the next hop is resolved"
    ARP_REQUESTS = "ARP requests sent for next hops"
    REPROBES = "unicast ARP probes for stale neighbours"
    QUEUE_OVERFLOW = "held packets dropped because the neighbour's queue was full"
    RESOLUTION_FAILED = "held packets dropped because the next hop never answered"
    TABLE_FULL = "the neighbour table has no room for another next hop"


def process(pkt: Packet, env: Env):
    route = pkt.route
    segment = env.segments[route.segment]
    next_hop = route.via.packed if route.via is not None else pkt.ip.dst
    entry = env.neighbors.usable(segment.index, next_hop)
    trace = pkt.trace
    fragmented = len(pkt.out_packets) > 1
    vnet = pkt.out_vnet if pkt.out_vnet is not None else pkt.vnet_bytes
    if fragmented and pkt.l2_offset:
        vnet = bytes(pkt.l2_offset)  # fragments carry complete checksums and are not GSO
    if entry is None:
        if trace is not None:
            trace.note(NAME, f"next hop {ip_text(next_hop)} on segment {segment.name} is not "
                             f"resolved: hold the packet and ARP for it")
        if not env.commit:
            return (Hold(),)
        actions: list = [Hold()]
        quote = pkt.data[pkt.l3_offset: pkt.l3_offset + pkt.ip.ihl * 4 + 8]
        for packet in pkt.out_packets:
            held = routed_frames.HeldPacket(pkt.port, vnet, packet, pkt.eth.src, quote,
                                            segment.index, next_hop)
            result, dropped = env.neighbors.resolve(segment.index, next_hop, held, env.now)
            if result is ResolveResult.FULL:
                return env.drop(pkt, Counter.TABLE_FULL)
            env.count(Counter.HELD)
            if dropped is not None:
                env.count(Counter.QUEUE_OVERFLOW)
            if result is ResolveResult.PROBE:
                env.count(Counter.ARP_REQUESTS)
                actions.extend(routed_frames.broadcast_arp_request(env, segment, next_hop))
        return tuple(actions)
    actions = []
    if env.commit and env.neighbors.wants_probe(entry, env.now):
        env.count(Counter.REPROBES)
        actions.extend(routed_frames.unicast_arp_probe(env, segment, next_hop, entry.mac))
    fdb_entry = None
    for packet in pkt.out_packets:
        data = routed_frames.ethernet_for(vnet, entry.mac, segment.gateway_mac, packet)
        action, fdb_entry = routed_frames.deliver(env, segment.index, entry.mac, data,
                                                 exclude=pkt.port.id)
        actions.append(action)
    env.count(Counter.SENT, len(pkt.out_packets))
    if trace is not None:
        where = ", ".join(env.port_name(p) for p in actions[-1].ports) or "no port"
        trace.note(NAME, f"next hop {ip_text(next_hop)} is-at {mac_text(entry.mac)} "
                         f"({entry.state.value}); source MAC {mac_text(segment.gateway_mac)}; "
                         f"out of {where}")
    if (not fragmented and fdb_entry is not None and entry.state is NeighborState.REACHABLE
            and pkt.src_entry is not None and not actions[:-1]):
        pkt.dst_entry = fdb_entry
        pkt.neighbor = entry
        pkt.rewrite = entry.mac + segment.gateway_mac
        if pkt.ct is not None:
            pkt.conn_out_port = fdb_entry.port
        elif (pkt.ip.src, pkt.ip.dst) not in env.nat.reply_pairs and not pkt.policy_judged:
            pkt.cacheable = True
    return tuple(actions)

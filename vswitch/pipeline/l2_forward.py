"""l2-forward: unicast by the FDB, flood what is unknown, and hand the gateway's frames to L3.

* Broadcast, multicast and unknown unicast go out of every port except the one they came in on.
* A known unicast MAC goes to its port; if that is the ingress port the frame is filtered (a bridge
  never sends a frame back where it came from).
* Frames addressed to the segment's gateway MAC are for the router and continue to ip4-input.
* Floods stay inside the ingress port's segment: each segment is its own broadcast domain.
* IPv4 unicast between address pairs that translated connections use, or from or to a pod that a
  network policy selects, goes to l2-conntrack: it must be tracked (and judged when new). Such a
  policy-selected pair's unknown unicast goes there too, before it is flooded.
Only known-unicast IPv4 decisions are cacheable: they depend on the flow key's MACs and IPs and on
FDB entries whose changes bump the generation. Floods are never cached, so learning a new MAC
cannot leave a stale flood behind.
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Forward
from vswitch.pipeline.context import Env, Packet
from vswitch.wire.addresses import is_multicast_mac, mac_text

NAME = "l2-forward"
NEXT = ("ip4-input", "l2-conntrack")


class Counter(enum.Enum):
    UNICAST = "known unicast frames sent to their port"
    FLOODED_MULTICAST = "broadcast and multicast frames flooded"
    FLOODED_UNKNOWN = "unknown unicast frames flooded"
    TO_GATEWAY = "frames addressed to the gateway MAC, handed to L3"
    SAME_PORT = "destination MAC lives on the ingress port: filtered"
    NO_OTHER_PORT = "flood with no other port to send to"
    NOT_IP_TO_GATEWAY = "non-IPv4 frame addressed to the gateway MAC"


def _flood(pkt: Packet, env: Env, counter: Counter, why: str):
    ports = tuple(p for p in env.segment_ports.get(pkt.port.segment, ()) if p != pkt.port.id)
    if not ports:
        return env.drop(pkt, Counter.NO_OTHER_PORT)
    env.count(counter)
    if pkt.trace is not None:
        names = ", ".join(env.port_name(p) for p in ports)
        pkt.trace.note(NAME, f"{why}: flood to {names}")
    return (Forward(ports),)


def process(pkt: Packet, env: Env):
    dst = pkt.eth.dst
    if dst == env.segment_of(pkt).gateway_mac:
        if pkt.ip is None:
            return env.drop(pkt, Counter.NOT_IP_TO_GATEWAY)
        env.count(Counter.TO_GATEWAY)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{mac_text(dst)} is the gateway: to L3")
        return "ip4-input"
    if is_multicast_mac(dst):
        return _flood(pkt, env, Counter.FLOODED_MULTICAST, f"{mac_text(dst)} is broadcast/multicast")
    entry = env.fdb.lookup(pkt.port.segment, dst, env.now)
    if entry is None:
        ip = pkt.ip
        if ip is not None and env.nat.policies.involves(ip.src, ip.dst):
            # A flood reaches the pod too: it needs the verdict a known unicast would get.
            ports = tuple(p for p in env.segment_ports.get(pkt.port.segment, ())
                          if p != pkt.port.id)
            if ports:
                env.count(Counter.FLOODED_UNKNOWN)
                pkt.l2_flood_ports = ports
                if pkt.trace is not None:
                    pkt.trace.note(NAME, f"{mac_text(dst)} is not in the FDB; a network policy "
                                         f"selects a pod of this address pair: tracked first")
                return "l2-conntrack"
        return _flood(pkt, env, Counter.FLOODED_UNKNOWN, f"{mac_text(dst)} is not in the FDB")
    if entry.port == pkt.port.id:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{mac_text(dst)} is on the ingress port {pkt.port.name}")
        return env.drop(pkt, Counter.SAME_PORT)
    env.count(Counter.UNICAST)
    pkt.dst_entry = entry
    ip = pkt.ip
    if ip is not None:
        nat = env.nat
        if (ip.src, ip.dst) in nat.reply_pairs:
            pkt.l2_out_port = entry.port
            if pkt.trace is not None:
                pkt.trace.note(NAME, f"{mac_text(dst)} is on port {env.port_name(entry.port)}; "
                                     f"translated connections use this address pair")
            return "l2-conntrack"
        if nat.policies.active is not None:
            if nat.policies.involves(ip.src, ip.dst):
                pkt.l2_out_port = entry.port
                if pkt.trace is not None:
                    pkt.trace.note(NAME, f"{mac_text(dst)} is on port "
                                         f"{env.port_name(entry.port)}; a network policy "
                                         f"selects a pod of this address pair")
                return "l2-conntrack"
            if pkt.trace is not None:
                pkt.trace.note(NAME, "no policy selects the pod at either end")
    pkt.cacheable = pkt.ip is not None and pkt.src_entry is not None
    if pkt.trace is not None:
        age = env.now - entry.last_seen
        pkt.trace.note(NAME, f"{mac_text(dst)} found in the FDB on port {env.port_name(entry.port)} "
                             f"(seen {age:.1f} s ago)")
    return (Forward((entry.port,)),)

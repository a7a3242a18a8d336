"""arp-responder: the switch owns each segment's gateway address, so it answers ARP for it.

* A request for the gateway is answered on the port it came from and not flooded: no pod owns that
  address. Like Linux, the router also takes the asker's address into its neighbour table, so the
  reply traffic it will route there needs no ARP of its own.
* A reply to the gateway confirms a neighbour the router asked about, and releases the packets that
  waited for it. Unsolicited replies for unknown addresses are not learned (no cache poisoning
  from gratuitous ARP).
* On the uplink, requests for a service's external IP inside the uplink network are answered with
  the node's MAC, so outside clients on that network reach the IP without a route (what
  MetalLB's L2 mode or kube-proxy's IPVS dummy interface do).
* All other ARP is ordinary L2 traffic and continues to l2-forward.
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Reply
from vswitch.pipeline import routed_frames
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import ip_text, mac_text

NAME = "arp-responder"
NEXT = ("l2-forward",)

_ANY_IP = bytes(4)


class Counter(enum.Enum):
    REPLIED = "ARP requests for the gateway answered"
    ANNOUNCED = "ARP requests on the uplink for a service's external IP, answered for the node"
    NEIGHBORS_CONFIRMED = "ARP messages that confirmed a neighbour of the router"
    RELEASED = "held packets sent after their next hop answered ARP"
    CONSUMED = "ARP replies or announcements addressed to the gateway"
    PASSED = "ARP for other addresses, switched as ordinary frames"


def process(pkt: Packet, env: Env):
    arp = pkt.arp
    segment = env.segment_of(pkt)
    if arp.tpa != segment.gateway_ip:
        if (arp.oper == h.ArpOp.REQUEST and segment.index == env.nat.uplink_segment
                and arp.tpa in env.nat.announced):
            return _announce(pkt, env, segment)
        env.count(Counter.PASSED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{ip_text(arp.tpa)} is not the gateway: switch it")
        return "l2-forward"
    actions: list = []
    is_request = arp.oper == h.ArpOp.REQUEST
    if arp.spa != _ANY_IP and (is_request or env.neighbors.get(segment.index, arp.spa) is not None):
        if env.commit:
            held = env.neighbors.confirm(segment.index, arp.spa, arp.sha, env.now)
            env.count(Counter.NEIGHBORS_CONFIRMED)
            if held:
                env.count(Counter.RELEASED, len(held))
                actions.extend(routed_frames.release(env, held, arp.sha))
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"neighbour {ip_text(arp.spa)} is-at {mac_text(arp.sha)} "
                                 f"(segment {segment.name})")
    if not is_request:
        env.count(Counter.CONSUMED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"ARP op {arp.oper} for the gateway: consumed")
        return tuple(actions)
    body = builders.arp(oper=h.ArpOp.REPLY, sha=segment.gateway_mac, spa=segment.gateway_ip,
                        tha=arp.sha, tpa=arp.spa)
    frame = builders.ethernet(arp.sha, segment.gateway_mac, h.EtherType.ARP, body)
    env.count(Counter.REPLIED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"reply: {ip_text(segment.gateway_ip)} is-at "
                             f"{mac_text(segment.gateway_mac)} to {ip_text(arp.spa)} on port "
                             f"{pkt.port.name}")
    actions.append(Reply(pkt.port.id, frame))
    return tuple(actions)


def _announce(pkt: Packet, env: Env, segment):
    arp = pkt.arp
    body = builders.arp(oper=h.ArpOp.REPLY, sha=segment.gateway_mac, spa=arp.tpa,
                        tha=arp.sha, tpa=arp.spa)
    env.count(Counter.ANNOUNCED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"{ip_text(arp.tpa)} is a service's external IP: reply with the "
                             f"node's MAC {mac_text(segment.gateway_mac)}")
    return (Reply(pkt.port.id, builders.ethernet(arp.sha, segment.gateway_mac, h.EtherType.ARP,
                                                 body)),)

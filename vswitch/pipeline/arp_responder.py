"""arp-responder: the switch owns the gateway address, so it answers ARP for it.

A request for the gateway is answered on the port it came from and not flooded: no pod owns that
address. ARP replies and gratuitous ARP addressed to the gateway are consumed (the router keeps no
neighbour table for pods yet). All other ARP is ordinary L2 traffic and continues to l2-forward.
"""
from __future__ import annotations

import enum

from vswitch.core.verdict import Reply
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import ip_text, mac_text

NAME = "arp-responder"
NEXT = ("l2-forward",)


class Counter(enum.Enum):
    REPLIED = "ARP requests for the gateway answered"
    CONSUMED = "ARP replies or announcements addressed to the gateway"
    PASSED = "ARP for other addresses, switched as ordinary frames"


def process(pkt: Packet, env: Env):
    arp = pkt.arp
    if arp.tpa != env.gateway_ip:
        env.count(Counter.PASSED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{ip_text(arp.tpa)} is not the gateway: switch it")
        return "l2-forward"
    if arp.oper != h.ArpOp.REQUEST:
        env.count(Counter.CONSUMED)
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"ARP op {arp.oper} for the gateway: consumed")
        return ()
    body = builders.arp(oper=h.ArpOp.REPLY, sha=env.gateway_mac, spa=env.gateway_ip,
                        tha=arp.sha, tpa=arp.spa)
    frame = builders.ethernet(arp.sha, env.gateway_mac, h.EtherType.ARP, body)
    env.count(Counter.REPLIED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"reply: {ip_text(env.gateway_ip)} is-at {mac_text(env.gateway_mac)} "
                             f"to {ip_text(arp.spa)} on port {pkt.port.name}")
    return (Reply(pkt.port.id, frame),)

"""ip4-local: IPv4 addressed to the gateway MAC.

The switch answers ICMP echo for the gateway address, with the request's identifier, sequence and
payload, so `ping <gateway>` works from every pod. Other traffic to the gateway address and traffic
that would need routing (another subnet) is dropped and counted: routing between subnets is not
part of this pipeline yet.
"""
from __future__ import annotations

import enum

from vswitch.core.verdict import Reply
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-local"
NEXT = ()


class Counter(enum.Enum):
    ECHO_REPLIED = "ICMP echo requests to the gateway answered"
    BAD_ICMP = "ICMP to the gateway that is truncated or has a bad checksum"
    NOT_ECHO = "ICMP to the gateway other than echo request"
    UNSUPPORTED_PROTOCOL = "TCP, UDP or other protocols to the gateway address"
    FRAGMENT = "fragments addressed to the gateway (not reassembled)"
    NO_ROUTE = "destination outside the node's segment: routing is not enabled"


def process(pkt: Packet, env: Env):
    ip = pkt.ip
    if ip.dst != env.gateway_ip:
        if pkt.trace is not None:
            pkt.trace.note(NAME, f"{ip_text(ip.dst)} is not on this node's segment and no route exists")
        return env.drop(pkt, Counter.NO_ROUTE)
    if ip.mf or ip.fragment_offset:
        return env.drop(pkt, Counter.FRAGMENT)
    if ip.protocol != h.IpProto.ICMP:
        return env.drop(pkt, Counter.UNSUPPORTED_PROTOCOL)
    start = pkt.l3 + ip.ihl * 4
    icmp_bytes = pkt.data[start: pkt.l3 + ip.total_length]
    if len(icmp_bytes) < h.ICMP_HEADER_LEN or env.accel.checksum(icmp_bytes) != 0:
        return env.drop(pkt, Counter.BAD_ICMP)
    icmp = h.ICMP.parse(icmp_bytes)
    if icmp.type != h.IcmpType.ECHO_REQUEST:
        return env.drop(pkt, Counter.NOT_ECHO)
    reply = builders.icmp(type=h.IcmpType.ECHO_REPLY, code=0, rest=icmp.rest,
                          payload=icmp.payload, accel=env.accel)
    packet = builders.ipv4(src=env.gateway_ip, dst=ip.src, protocol=h.IpProto.ICMP, payload=reply,
                           ttl=64, tos=ip.tos, accel=env.accel)
    frame = builders.ethernet(pkt.eth.src, env.gateway_mac, h.EtherType.IPV4, packet)
    env.count(Counter.ECHO_REPLIED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"echo request to the gateway: reply to {ip_text(ip.src)} "
                             f"on port {pkt.port.name}")
    return (Reply(pkt.port.id, frame),)

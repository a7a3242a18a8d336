"""ip4-local: IPv4 addressed to one of the gateway addresses the switch owns.

The switch answers ICMP echo for every gateway address, with the request's identifier, sequence and
payload, so `ping <gateway>` works from every pod. A UDP datagram to a gateway gets ICMP port
unreachable, as from a host with no listener; other protocols are dropped and counted.
"""
from __future__ import annotations

import enum

from vswitch.core.actions import Reply
from vswitch.pipeline import tracked_flows
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import ip_text

NAME = "ip4-local"
NEXT = ("ip4-icmp-error",)


class Counter(enum.Enum):
    ECHO_REPLIED = "ICMP echo requests to a gateway answered"
    BAD_ICMP = "ICMP to a gateway that is truncated or has a bad checksum"
    NOT_ECHO = "ICMP to a gateway other than echo request"
    UDP_NO_LISTENER = "UDP to a gateway: answered with port unreachable"
    UNSUPPORTED_PROTOCOL = "TCP or other protocols to a gateway address"
    FRAGMENT = "fragments addressed to a gateway (not reassembled)"


def process(pkt: Packet, env: Env):
    ip = pkt.ip
    if ip.mf or ip.fragment_offset:
        return env.drop(pkt, Counter.FRAGMENT)
    if ip.protocol == h.IpProto.UDP:
        pkt.pending_drop = env.drop_action(pkt, Counter.UDP_NO_LISTENER)
        pkt.icmp_error = (h.IcmpType.DEST_UNREACHABLE, 3, bytes(4))
        return "ip4-icmp-error"
    if ip.protocol != h.IpProto.ICMP:
        return env.drop(pkt, Counter.UNSUPPORTED_PROTOCOL)
    icmp_bytes = tracked_flows.current_packet(pkt)[ip.ihl * 4:]
    if len(icmp_bytes) < h.ICMP_HEADER_LEN or env.accel.checksum(icmp_bytes) != 0:
        return env.drop(pkt, Counter.BAD_ICMP)
    # The ICMP header (``headers.ICMP``) read at its offsets: type, code, checksum, 4 bytes of
    # "rest" (the echo identifier and sequence), then the payload.
    if icmp_bytes[0] != h.IcmpType.ECHO_REQUEST:
        return env.drop(pkt, Counter.NOT_ECHO)
    reply = builders.icmp(type=h.IcmpType.ECHO_REPLY, code=0, rest=icmp_bytes[4:8],
                          payload=icmp_bytes[8:], accel=env.accel)
    packet = builders.ipv4(src=ip.dst, dst=ip.src, protocol=h.IpProto.ICMP, payload=reply,
                           ttl=64, tos=ip.tos, accel=env.accel)
    frame = builders.ethernet(pkt.eth.src, env.segment_of(pkt).gateway_mac, h.EtherType.IPV4,
                              packet)
    env.count(Counter.ECHO_REPLIED)
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"echo request to {ip_text(ip.dst)}: reply to {ip_text(ip.src)} "
                             f"on port {pkt.port.name}")
    return (Reply(pkt.port.id, frame),)

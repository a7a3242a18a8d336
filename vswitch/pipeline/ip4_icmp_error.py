"""ip4-icmp-error: tell the sender the truth about a packet the router could not deliver.

Builds the ICMP error a stage asked for (``pkt.icmp_error``) with the original IPv4 header and the
first 8 bytes of its payload quoted (RFC 792), from the gateway address of the segment the packet
came in on, back to the sender's MAC. Errors are never sent about ICMP errors, non-first
fragments, or packets from or to broadcast and multicast addresses (RFC 1122 3.2.2), and they are
rate-limited as Linux does. The offending packet itself is dropped under the reason its stage
counted.
"""
from __future__ import annotations

import enum

from vswitch.core.port_spec import PortSpec
from vswitch.core.actions import Reply
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import builders, headers as h, views
from vswitch.wire.addresses import ip_text

NAME = "ip4-icmp-error"
NEXT = ()

ERROR_TOS = 0xC0  # IPTOS_PREC_INTERNETCONTROL, as Linux sets on ICMP errors


class Counter(enum.Enum):
    TIME_EXCEEDED = "ICMP time exceeded sent (TTL reached zero)"
    NET_UNREACHABLE = "ICMP network unreachable sent (no route)"
    HOST_UNREACHABLE = "ICMP host unreachable sent (next hop did not answer ARP)"
    PORT_UNREACHABLE = "ICMP port unreachable sent (UDP to a gateway address)"
    FRAG_NEEDED = "ICMP fragmentation needed sent (DF packet larger than the egress MTU)"
    OTHER = "other ICMP errors sent"
    RATE_LIMITED = "ICMP errors not sent: rate limit"
    SUPPRESSED = "ICMP errors not sent: about an ICMP error, a fragment or a broadcast"


_SENT = {(11, 0): Counter.TIME_EXCEEDED, (3, 0): Counter.NET_UNREACHABLE,
         (3, 1): Counter.HOST_UNREACHABLE, (3, 3): Counter.PORT_UNREACHABLE,
         (3, 4): Counter.FRAG_NEEDED}

_NAMES = {(11, 0): "time exceeded", (3, 0): "network unreachable", (3, 1): "host unreachable",
          (3, 3): "port unreachable", (3, 4): "fragmentation needed"}


def _suppressed(original: bytes, ip: views.Ipv4) -> str | None:
    if ip.fragment_offset:
        return "the packet is a non-first fragment"
    if ip.src[0] >= 224 or ip.src == bytes(4) or ip.dst[0] >= 224:
        return "the packet is from or to a broadcast, multicast or zero address"
    body = original[ip.ihl * 4:]
    if ip.protocol == h.IpProto.ICMP and body and body[0] in h.ICMP_ERROR_TYPES:
        return "the packet is itself an ICMP error"
    return None


def build_error(env: Env, *, in_port: PortSpec, eth_src: bytes, original: bytes, icmp_type: int,
                code: int, rest: bytes, note=None) -> bytes | None:
    """The Ethernet frame of the error, or None when it must not (or may not yet) be sent.

    ``original`` is the offending IPv4 packet from its header on (as received). ``note`` receives
    a sentence for a trace. Counts what it decides, under this stage. Besides ``process``, the
    switch's timer asks it for the packets whose next hop never answered ARP (host unreachable);
    other stages hand over to this stage through the graph instead (``pkt.icmp_error``).
    """
    ip = views.Ipv4(original)
    why = _suppressed(original, ip)
    if why is not None:
        env.count(Counter.SUPPRESSED)
        if note:
            note(f"no ICMP error: {why}")
        return None
    exempt = (icmp_type, code) == (3, 4)
    if env.commit and not env.icmp_limiter.allow(ip.src, env.now, exempt_per_destination=exempt):
        env.count(Counter.RATE_LIMITED)
        if note:
            note(f"no ICMP error to {ip_text(ip.src)}: rate limit")
        return None
    segment = env.segments[in_port.segment]
    quote = original[: ip.ihl * 4 + 8]
    message = builders.icmp(type=icmp_type, code=code, rest=rest, payload=quote, accel=env.accel)
    packet = builders.ipv4(src=segment.gateway_ip, dst=ip.src, protocol=h.IpProto.ICMP,
                           payload=message, ttl=64, tos=ERROR_TOS, accel=env.accel)
    env.count(_SENT.get((icmp_type, code), Counter.OTHER))
    if note:
        name = _NAMES.get((icmp_type, code), f"type {icmp_type} code {code}")
        note(f"ICMP {name} from {ip_text(segment.gateway_ip)} to {ip_text(ip.src)}")
    return builders.ethernet(eth_src, segment.gateway_mac, h.EtherType.IPV4, packet)


def process(pkt: Packet, env: Env):
    icmp_type, code, rest = pkt.icmp_error
    note = (lambda text: pkt.trace.note(NAME, text)) if pkt.trace is not None else None
    original = pkt.data[pkt.l3_offset: pkt.l3_offset + pkt.ip.total_length]
    frame = build_error(env, in_port=pkt.port, eth_src=pkt.eth.src, original=original,
                        icmp_type=icmp_type, code=code, rest=rest, note=note)
    if frame is None:
        return (pkt.pending_drop,)
    return (pkt.pending_drop, Reply(pkt.port.id, frame))

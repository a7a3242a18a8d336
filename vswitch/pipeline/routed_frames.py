"""Frames the router sends: routed packets put back into Ethernet, held packets, ARP requests.

Shared by the stages that route (ip4-neighbor), that learn neighbours (arp-responder, which
releases held packets) and by the switch's timer (which retries ARP and gives up on neighbours).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from vswitch.core.port_spec import PortSpec
from vswitch.core.actions import Forward, Reply
from vswitch.pipeline.context import Env, SegmentInfo
from vswitch.tables.fdb import FdbEntry
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import BROADCAST_MAC, ZERO_MAC

_ETHERTYPE_IPV4 = struct.pack("!H", h.EtherType.IPV4)


@dataclass(frozen=True)
class HeldPacket:
    """A routed packet waiting for its next hop's MAC."""

    in_port: PortSpec  # whose framing ``vnet`` follows, and where an ICMP error would go
    vnet: bytes  # virtio-net header in the ingress port's framing (b"" when it has none)
    ip_packet: bytes  # the IPv4 packet, already rewritten (TTL, checksum)
    eth_src: bytes  # the original sender's MAC
    quote: bytes  # the original IPv4 header and 8 bytes of payload, for ICMP errors
    segment: int  # egress segment
    next_hop: bytes


def ethernet_for(vnet: bytes, dst_mac: bytes, src_mac: bytes, ip_packet: bytes) -> bytes:
    return b"".join((vnet, dst_mac, src_mac, _ETHERTYPE_IPV4, ip_packet))


def deliver(env: Env, segment: int, dst_mac: bytes, data: bytes, exclude: int,
            framing: PortSpec | None = None) -> tuple[Forward, FdbEntry | None]:
    """Forward ``data`` to the port behind ``dst_mac`` in ``segment`` (flooding the segment if
    the FDB does not know it). Returns the action and the FDB entry it relied on (or None)."""
    entry = env.fdb.lookup(segment, dst_mac, env.now)
    if entry is not None:
        return Forward((entry.port,), data, framing), entry
    ports = tuple(p for p in env.segment_ports.get(segment, ()) if p != exclude)
    return Forward(ports, data, framing), None


def release(env: Env, held: list[HeldPacket], mac: bytes) -> list[Forward]:
    actions = []
    for item in held:
        segment = env.segments[item.segment]
        data = ethernet_for(item.vnet, mac, segment.gateway_mac, item.ip_packet)
        action, _ = deliver(env, item.segment, mac, data, exclude=-1, framing=item.in_port)
        actions.append(action)
    return actions


def arp_request(segment: SegmentInfo, target_ip: bytes, dst_mac: bytes = BROADCAST_MAC) -> bytes:
    body = builders.arp(oper=h.ArpOp.REQUEST, sha=segment.gateway_mac, spa=segment.gateway_ip,
                        tha=ZERO_MAC, tpa=target_ip)
    return builders.ethernet(dst_mac, segment.gateway_mac, h.EtherType.ARP, body)


def broadcast_arp_request(env: Env, segment: SegmentInfo, target_ip: bytes) -> list[Reply]:
    frame = arp_request(segment, target_ip)
    return [Reply(port, frame) for port in env.segment_ports.get(segment.index, ())]


def unicast_arp_probe(env: Env, segment: SegmentInfo, target_ip: bytes, mac: bytes) -> list[Reply]:
    frame = arp_request(segment, target_ip, mac)
    entry = env.fdb.lookup(segment.index, mac, env.now)
    ports = (entry.port,) if entry is not None else env.segment_ports.get(segment.index, ())
    return [Reply(port, frame) for port in ports]

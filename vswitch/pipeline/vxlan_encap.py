"""vxlan-encap: a routed packet for another node's pod leaves inside VXLAN (RFC 7348).

The packet has been routed like any other (ip4-rewrite lowered its TTL and checked it against the
overlay MTU). Here it becomes an inner Ethernet frame from our VTEP MAC to the remote node's VTEP
MAC, as a flannel node's kernel builds it, inside outer IPv4/UDP/VXLAN from our uplink address to
the node's underlay address (``wire.vxlan``: outer UDP source port hashed from the inner flow, so
flows spread over ECMP paths; DF clear; outer ECN from the inner header). The outer packet then
goes to ip4-neighbor as a packet routed out of the uplink: to the node itself when it is on the
uplink's network, else to the route that covers its address (the uplink gateway), resolved by ARP.

A partial checksum (virtio-net ``NEEDS_CSUM``) stays partial: its start moves by the outer headers,
and the kernel on the far side completes it. A TSO super-frame crosses whole: on a node whose
uplink takes UDP-tunnel GSO every port has the 24-byte virtio-net header, and the encapsulated
frame's header tells the kernel where the outer and inner headers are, so the kernel cuts it into
MTU-sized VXLAN packets (or hands it whole to the next tunnel-GSO TAP). Without that (an older
kernel) pods get no TSO on such a node, and a super-frame that comes anyway is dropped and counted.
"""
from __future__ import annotations

import enum
from ipaddress import IPv4Network

from vswitch.pipeline import tunnel
from vswitch.pipeline.context import Env, Packet
from vswitch.pipeline.tunnel import Encapsulation
from vswitch.tables.fib import Route, RouteKind
from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text

NAME = "vxlan-encap"
NEXT = ("ip4-neighbor",)

class Counter(enum.Enum):
    ENCAPSULATED = "packets encapsulated for another node"
    NO_UNDERLAY_ROUTE = "the remote node's underlay address has no route outside the overlay"
    GSO_UNSUPPORTED = "GSO super-frames that cannot cross the tunnel (no UDP-tunnel GSO, too long)"


def _underlay_route(env: Env, address) -> Route | None:
    """The route the outer packet takes: to the node itself when it is on a connected network,
    else through that route's gateway. An overlay route never carries the overlay."""
    route = env.fib.lookup(int(address))
    if route is None or route.kind is RouteKind.OVERLAY:
        return None
    return Route(IPv4Network(f"{address}/32"), route.kind, route.segment,
                 route.via if route.via is not None else address, origin=route.origin)


def process(pkt: Packet, env: Env):
    overlay = env.overlay
    node = overlay.by_address(pkt.route.via.packed)
    encap = Encapsulation.towards(overlay, node) if node is not None else None
    underlay = _underlay_route(env, pkt.route.via)
    if encap is None or underlay is None:
        return env.drop(pkt, Counter.NO_UNDERLAY_ROUTE)
    fragmented = len(pkt.out_packets) > 1
    vnet = tunnel.outer_vnet(pkt.vnet_bytes if not fragmented else bytes(pkt.l2_offset),
                             h.ETH_HEADER_LEN + len(pkt.out_packets[0]))
    if vnet is None:
        return env.drop(pkt, Counter.GSO_UNSUPPORTED)
    outer = []
    first_port = 0
    for packet in pkt.out_packets:
        encapsulated, src_port = encap.outer_packet(packet, env.accel, env.commit)
        outer.append(encapsulated)
        first_port = first_port or src_port
    env.count(Counter.ENCAPSULATED, len(outer))
    if pkt.trace is not None:
        vtep = encap.vtep
        pkt.trace.note(NAME, f"to node {node.name}: outer {ip_text(vtep.address)}:{first_port} > "
                             f"{node.address}:{vtep.port} VNI {vtep.vni}, inner MAC "
                             f"{node.vtep_mac}; next hop {underlay.via} ({underlay.origin})")
    pkt.encap = encap
    pkt.out_vnet = vnet
    pkt.out_packets = outer
    pkt.route = underlay
    return "ip4-neighbor"

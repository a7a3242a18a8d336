"""vxlan-decap: VXLAN for our VTEP is opened, and its inner packet routed like any other.

ip4-input hands over UDP to our uplink address and the overlay port that arrived on the uplink.
What is not valid VXLAN for us (short, wrong VNI, flags, bad lengths or checksums: the reasons of
``wire.vxlan.DropReason``, each a counter here) is dropped, and so is valid VXLAN from an address
that is not a known node: the table of nodes comes from the file or the cluster store, never from
the data plane (flannel's ``nolearning``). The inner frame must be IPv4 addressed to our VTEP MAC
and not from it (a frame of ours coming back is a loop, which Linux drops too).

The inner packet then re-enters ip4-input as if it had arrived on the uplink, so connection
tracking, NAT and routing treat it as any routed packet, and the TTL is lowered by this node's
router as it is by the sender's (a pod two nodes away sees TTL 62). Outer ECN congestion
marks are carried inwards (RFC 6040 normal mode, as Linux's ``ip_tunnel_ecn_decapsulate``): CE
outside marks an ECN-capable inner packet CE; CE outside a not-ECT inner packet drops it.
A partial inner checksum (the sender's ``NEEDS_CSUM``) keeps its start, moved back by the outer
headers, and a tunnel super-frame becomes the inner TSO super-frame it carried
(``pipeline.tunnel.inner_vnet``). A frame is opened once: VXLAN inside VXLAN is dropped.
"""
from __future__ import annotations

import enum

from vswitch.pipeline import tunnel
from vswitch.pipeline.context import Env, Packet
from vswitch.wire import headers as h, views, vxlan
from vswitch.wire.addresses import ip_text, mac_text

NAME = "vxlan-decap"
NEXT = ("ip4-input",)

_ECN_MASK = 0x03
_ECN_CE = 0x03


class Counter(enum.Enum):
    DECAPSULATED = "VXLAN packets from a known node opened"
    SHORT = "VXLAN: " + vxlan.DropReason.SHORT.value
    BAD_IP_HEADER = "VXLAN: " + vxlan.DropReason.BAD_IP_HEADER.value
    BAD_IP_CHECKSUM = "VXLAN: " + vxlan.DropReason.BAD_IP_CHECKSUM.value
    FRAGMENT = "VXLAN: " + vxlan.DropReason.FRAGMENT.value
    NOT_UDP = "VXLAN: " + vxlan.DropReason.NOT_UDP.value
    WRONG_PORT = "VXLAN: " + vxlan.DropReason.WRONG_PORT.value
    BAD_UDP_LENGTH = "VXLAN: " + vxlan.DropReason.BAD_UDP_LENGTH.value
    BAD_UDP_CHECKSUM = "VXLAN: " + vxlan.DropReason.BAD_UDP_CHECKSUM.value
    NO_VNI_FLAG = "VXLAN: " + vxlan.DropReason.NO_VNI_FLAG.value
    WRONG_VNI = "VXLAN: " + vxlan.DropReason.WRONG_VNI.value
    RESERVED_BITS = "VXLAN: " + vxlan.DropReason.RESERVED_BITS.value
    UNKNOWN_NODE = "VXLAN from an address that is not a known node (no data-plane learning)"
    NOT_FOR_VTEP = "inner frame not addressed to our VTEP MAC"
    LOOP = "inner frame from our own VTEP MAC"
    INNER_NOT_IPV4 = "inner frame is not IPv4"
    INNER_MALFORMED = "inner IPv4 header truncated or inconsistent"
    ECN_NOT_ECT = "outer CE mark on an inner packet that is not ECN-capable"
    NESTED = "VXLAN inside VXLAN"
    GSO_UNSUPPORTED = "outer super-frame whose offload cannot be passed on to the inner frame"


_BY_REASON = {reason: Counter[reason.name] for reason in vxlan.DropReason}


def _inner_ip(inner: bytes):
    """The inner IPv4 header, parsed, if it is whole and agrees with the frame; else None."""
    available = len(inner) - h.ETH_HEADER_LEN
    if available < h.IPV4_MIN_HEADER_LEN:
        return None
    ip = views.Ipv4(inner, h.ETH_HEADER_LEN)
    if (ip.version != 4 or ip.ihl < 5 or ip.ihl * 4 > available
            or not ip.ihl * 4 <= ip.total_length <= available):
        return None
    return ip


def _carry_ecn(inner: bytes, outer_tos: int, env: Env) -> bytes | None:
    """RFC 6040 normal-mode decapsulation of the ECN field; None: drop."""
    if outer_tos & _ECN_MASK != _ECN_CE:
        return inner
    at = h.ETH_HEADER_LEN
    tos = inner[at + 1]
    if tos & _ECN_MASK == _ECN_CE:
        return inner
    if tos & _ECN_MASK == 0:
        return None
    marked = bytearray(inner)
    word = (inner[at] << 8) | tos
    csum_at = at + h.IPV4_CHECKSUM_OFFSET
    csum = env.accel.checksum_update16((inner[csum_at] << 8) | inner[csum_at + 1], word,
                                       word | _ECN_CE)
    marked[at + 1] = tos | _ECN_CE
    marked[csum_at], marked[csum_at + 1] = csum >> 8, csum & 0xFF
    return bytes(marked)


def process(pkt: Packet, env: Env):
    if pkt.decapsulated_from is not None:
        return env.drop(pkt, Counter.NESTED)
    vtep = env.overlay.vtep
    vnet = pkt.vnet
    trusted = vnet is not None and bool(vnet.flags & (h.VNET_F_NEEDS_CSUM | h.VNET_F_DATA_VALID))
    opened = vxlan.decapsulate(pkt.data, vni=vtep.vni, port=vtep.port, offset=pkt.l3_offset,
                               verify_udp_checksum=not trusted, accel=env.accel)
    if isinstance(opened, vxlan.DropReason):
        return env.drop(pkt, _BY_REASON[opened])
    node = env.overlay.by_address(opened.src)
    if node is None:
        return env.drop(pkt, Counter.UNKNOWN_NODE)
    inner = opened.inner
    eth = views.Ethernet(inner)
    if eth.dst != vtep.vtep_mac:
        return env.drop(pkt, Counter.NOT_FOR_VTEP)
    if eth.src == vtep.vtep_mac:
        return env.drop(pkt, Counter.LOOP)
    if eth.ethertype != h.EtherType.IPV4:
        return env.drop(pkt, Counter.INNER_NOT_IPV4)
    inner_ip = _inner_ip(inner)
    if inner_ip is None:
        return env.drop(pkt, Counter.INNER_MALFORMED)
    inner_vnet = tunnel.inner_vnet(pkt.vnet_bytes)
    if inner_vnet is None:
        return env.drop(pkt, Counter.GSO_UNSUPPORTED)
    marked = _carry_ecn(inner, pkt.ip.tos, env)
    if marked is None:
        return env.drop(pkt, Counter.ECN_NOT_ECT)
    if marked is not inner:
        inner, inner_ip = marked, _inner_ip(marked)
    env.count(Counter.DECAPSULATED)
    pkt.decapsulated_from = node
    pkt.data = inner_vnet + inner
    pkt.vnet = views.VirtioNetHeader(inner_vnet) if inner_vnet else None
    pkt.eth = eth
    pkt.ip = inner_ip
    if pkt.trace is not None:
        pkt.trace.note(NAME, f"from node {node.name}: outer {ip_text(opened.src)}:"
                             f"{opened.src_port} > {ip_text(opened.dst)}:{vtep.port} VNI "
                             f"{opened.vni}; inner {mac_text(eth.src)} > {mac_text(eth.dst)}, "
                             f"IPv4 {ip_text(pkt.ip.src)} > {ip_text(pkt.ip.dst)} ttl {pkt.ip.ttl}")
    return "ip4-input"

"""eth-input: the first stage. Splits off the virtio-net header and validates the frame's headers.

Everything later stages read has been checked here, so they can trust lengths: a frame that is too
short, carries an 802.1Q/802.1ad tag (VLANs are not supported), has an ethertype we do not handle, or
an IPv4 header whose version, IHL or total length disagree with the bytes received, is dropped and
counted under its own reason. Malformed input never raises past this stage.

The virtio-net header is checked too, as far as it describes the frame: a checksum to complete
must lie inside it, and a GSO type must be that of the packet with a segment size above 0. An
output port's kernel would refuse such a frame, or segment it by a header that lies; a pod's own
kernel never writes one, so such a frame comes from something that is not a pod's kernel. The
tunnel GSO types of an uplink's 24-byte header are vxlan-decap's to judge. The C datapath and the
Python fast path decline these frames (``fast_path.vnet_plausible``), so they always come here.
"""
from __future__ import annotations

import enum

from vswitch.pipeline.context import Env, Packet
from vswitch.wire import headers as h, views
from vswitch.wire.addresses import ip_text, mac_text

NAME = "eth-input"
NEXT = ("port-security",)

# Plain ints: an enum member costs a class attribute lookup per use on the packet path.
_IPV4 = int(h.EtherType.IPV4)
_ARP = int(h.EtherType.ARP)
_TAGGED = (int(h.EtherType.VLAN), int(h.EtherType.QINQ))
_ARP_ETHERNET_IPV4 = (1, _IPV4, 6, 4)  # htype, ptype, hlen, plen


class Counter(enum.Enum):
    FRAMES = "frames that entered the pipeline"
    TRUNCATED_VNET = "shorter than the virtio-net header"
    RUNT = "shorter than an Ethernet header"
    VLAN_TAGGED = "802.1Q/802.1ad tagged: VLANs are not supported"
    UNSUPPORTED_ETHERTYPE = "ethertype other than IPv4 or ARP (IPv6 and 802.3 frames included)"
    MALFORMED_ARP = "ARP that is truncated or not Ethernet/IPv4"
    TRUNCATED_IPV4 = "shorter than a minimal IPv4 header"
    BAD_IP_VERSION = "IPv4 ethertype but version field is not 4"
    BAD_IHL = "IPv4 header length below 20 bytes or beyond the frame"
    BAD_TOTAL_LENGTH = "IPv4 total length below the header length or beyond the frame"
    CHECKSUM_PAST_END = "virtio-net checksum start and offset point past the frame's end"
    GSO_SIZE_ZERO = "virtio-net GSO frame with a segment size of 0"
    GSO_TYPE_MISMATCH = ("virtio-net GSO type that is not the packet's (TCPv4 on UDP, UDP on TCP,"
                         " IPv6 on IPv4, on ARP, or unknown)")


# GSO types (without the ECN bit) and the IPv4 protocol each one segments.
_GSO_PROTOCOL = {h.VNET_GSO_TCPV4: int(h.IpProto.TCP), h.VNET_GSO_UDP: int(h.IpProto.UDP)}
_GSO_UDP_TUNNEL = 0x60  # VNET_GSO_UDP_TUNNEL_IPV4 | _IPV6: judged by vxlan-decap


def _vnet_problem(vnet: views.VirtioNetHeader, body_len: int, protocol: int | None
                  ) -> Counter | None:
    """Why the virtio-net header cannot describe a frame of ``body_len`` bytes (after the
    header) carrying ``protocol`` (None: not IPv4), or None when it can."""
    if vnet.flags & h.VNET_F_NEEDS_CSUM and vnet.csum_start + vnet.csum_offset + 2 > body_len:
        return Counter.CHECKSUM_PAST_END
    gso_type = vnet.gso_type
    if gso_type == h.VNET_GSO_NONE or gso_type & _GSO_UDP_TUNNEL:
        return None
    if _GSO_PROTOCOL.get(gso_type & ~h.VNET_GSO_ECN) != protocol or protocol is None:
        return Counter.GSO_TYPE_MISMATCH
    if not vnet.gso_size:
        return Counter.GSO_SIZE_ZERO
    return None


def process(pkt: Packet, env: Env):
    env.count(Counter.FRAMES)
    data, trace = pkt.data, pkt.trace
    l2, l3 = pkt.l2_offset, pkt.l3_offset
    if l2:
        if len(data) < l2:
            return env.drop(pkt, Counter.TRUNCATED_VNET)
        pkt.vnet = views.VirtioNetHeader(data)
        if trace is not None and (pkt.vnet.flags or pkt.vnet.gso_type):
            v = pkt.vnet
            trace.note(NAME, f"virtio-net header: flags {v.flags:#x} gso_type {v.gso_type} "
                             f"gso_size {v.gso_size} csum_start {v.csum_start}")
    if len(data) - l2 < h.ETH_HEADER_LEN:
        return env.drop(pkt, Counter.RUNT)
    eth = pkt.eth = views.Ethernet(data, l2)
    ethertype = eth.ethertype
    if trace is not None:
        trace.note(NAME, f"Ethernet {mac_text(eth.src)} > {mac_text(eth.dst)}, "
                         f"ethertype {ethertype:#06x}, {len(data) - l2} bytes")
    if ethertype in _TAGGED:
        return env.drop(pkt, Counter.VLAN_TAGGED)
    available = len(data) - l3
    if ethertype == _ARP:
        if available < h.ARP_LEN:
            return env.drop(pkt, Counter.MALFORMED_ARP)
        arp = views.Arp(data, l3)
        if (arp.htype, arp.ptype, arp.hlen, arp.plen) != _ARP_ETHERNET_IPV4:
            return env.drop(pkt, Counter.MALFORMED_ARP)
        if pkt.vnet is not None and (pkt.vnet.flags or pkt.vnet.gso_type):
            problem = _vnet_problem(pkt.vnet, len(data) - l2, None)
            if problem is not None:
                return env.drop(pkt, problem)
        pkt.arp = arp
        if trace is not None:
            op = "request" if arp.oper == h.ArpOp.REQUEST else f"op {arp.oper}"
            if arp.oper == h.ArpOp.REPLY:
                op = "reply"
            trace.note(NAME, f"ARP {op}: who-has {ip_text(arp.tpa)} tell {ip_text(arp.spa)} "
                             f"({mac_text(arp.sha)})")
        return "port-security"
    if ethertype != _IPV4:
        return env.drop(pkt, Counter.UNSUPPORTED_ETHERTYPE)
    if available < h.IPV4_MIN_HEADER_LEN:
        return env.drop(pkt, Counter.TRUNCATED_IPV4)
    ip = views.Ipv4(data, l3)
    if ip.version != 4:
        return env.drop(pkt, Counter.BAD_IP_VERSION)
    header_len = ip.ihl * 4
    if ip.ihl < 5 or header_len > available:
        return env.drop(pkt, Counter.BAD_IHL)
    if ip.total_length < header_len or ip.total_length > available:
        return env.drop(pkt, Counter.BAD_TOTAL_LENGTH)
    if pkt.vnet is not None and (pkt.vnet.flags or pkt.vnet.gso_type):
        problem = _vnet_problem(pkt.vnet, len(data) - l2, ip.protocol)
        if problem is not None:
            return env.drop(pkt, problem)
    pkt.ip = ip
    if trace is not None:
        frag = ""
        if ip.mf or ip.fragment_offset:
            frag = f", fragment offset {ip.fragment_offset * 8}{' MF' if ip.mf else ''}"
        trace.note(NAME, f"IPv4 {ip_text(ip.src)} > {ip_text(ip.dst)} proto {ip.protocol} "
                         f"ttl {ip.ttl} len {ip.total_length}{' DF' if ip.df else ''}{frag}")
    return "port-security"

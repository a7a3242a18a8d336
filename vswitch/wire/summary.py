"""One line per frame, tcpdump-like, for ``vswitchctl capture`` without ``-w``."""
from __future__ import annotations

import struct

from construct import ConstructError

from vswitch.wire import headers as h
from vswitch.wire.addresses import ip_text, mac_text

_TCP_FLAGS = [(h.TcpFlag.SYN, "S"), (h.TcpFlag.FIN, "F"), (h.TcpFlag.RST, "R"),
              (h.TcpFlag.PSH, "P"), (h.TcpFlag.ACK, ".")]
_ICMP_NAMES = {0: "echo reply", 8: "echo request", 3: "unreachable", 11: "time exceeded"}


def summarize(frame: bytes, length: int | None = None) -> str:
    try:
        return _summarize(frame, length if length is not None else len(frame))
    except (ConstructError, IndexError, struct.error):
        return f"{len(frame)} bytes (truncated or malformed)"


def _summarize(frame: bytes, length: int) -> str:
    eth = h.ETHERNET.parse(frame[: h.ETH_HEADER_LEN])
    macs = f"{mac_text(eth.src)} > {mac_text(eth.dst)}"
    body = frame[h.ETH_HEADER_LEN:]
    if eth.ethertype == h.EtherType.ARP:
        arp = h.ARP.parse(body[: h.ARP_LEN])
        if arp.oper == h.ArpOp.REQUEST:
            return f"{macs} ARP who-has {ip_text(arp.tpa)} tell {ip_text(arp.spa)}"
        return f"{macs} ARP reply {ip_text(arp.spa)} is-at {mac_text(arp.sha)}"
    if eth.ethertype != h.EtherType.IPV4:
        return f"{macs} ethertype {eth.ethertype:#06x}, length {length}"
    ip = h.IPV4.parse(body[: h.IPV4_MIN_HEADER_LEN])
    l4 = body[ip.ihl * 4:]
    src, dst = ip_text(ip.src), ip_text(ip.dst)
    if ip.protocol == h.IpProto.TCP and len(l4) >= h.TCP_HEADER_LEN:
        tcp = h.TCP.parse(l4[: h.TCP_HEADER_LEN])
        flags = "".join(letter for flag, letter in _TCP_FLAGS if tcp.flags & flag) or "none"
        payload = ip.total_length - ip.ihl * 4 - tcp.data_offset * 4
        return (f"IP {src}.{tcp.src_port} > {dst}.{tcp.dst_port}: Flags [{flags}], "
                f"seq {tcp.seq}, ack {tcp.ack}, length {payload}, ttl {ip.ttl}")
    if ip.protocol == h.IpProto.UDP and len(l4) >= h.UDP_HEADER_LEN:
        udp = h.UDP.parse(l4[: h.UDP_HEADER_LEN])
        return (f"IP {src}.{udp.src_port} > {dst}.{udp.dst_port}: UDP, length "
                f"{udp.length - h.UDP_HEADER_LEN}, ttl {ip.ttl}")
    if ip.protocol == h.IpProto.ICMP and len(l4) >= 4:
        name = _ICMP_NAMES.get(l4[0], f"type {l4[0]}")
        return f"IP {src} > {dst}: ICMP {name}, code {l4[1]}, ttl {ip.ttl}"
    return f"IP {src} > {dst}: proto {ip.protocol}, length {ip.total_length}, ttl {ip.ttl}"

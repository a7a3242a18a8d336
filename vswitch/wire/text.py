"""A short text syntax for packets, for ``vswitchctl trace`` and for tests.

Written the way tcpdump prints packets, so that what a user reads in a capture can be pasted back::

    icmp 10.244.1.10 > 10.244.1.11                     echo request (id 1, seq 1)
    icmp 10.244.1.10 > 10.244.1.11 echo-reply id 7 seq 3
    tcp 10.244.1.10:40000 > 10.244.1.11:8080 flags S   SYN; flags from S A F R P U
    udp 10.244.1.10:5000 > 10.244.1.11:53 len 32       32 bytes of payload
    arp who-has 10.244.1.1 tell 10.244.1.10
    arp reply 10.244.1.10 is-at 0a:58:0a:f4:01:0a to 10.244.1.1

Options after the addresses: ``ttl N``, ``df``, ``len N`` (payload bytes), ``vlan N`` (adds an 802.1Q
tag), ``src-mac MAC``, ``dst-mac MAC``; for fragments, ``ipid N`` (the IP identification), ``mf``
(more fragments) and ``frag N`` (the fragment's byte offset, a multiple of 8; a later fragment
carries no L4 header, so its ports are ignored). Unset MACs are filled in by the caller, which knows the
topology.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from types import ModuleType

from vswitch.accel import pure as _pure
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import BROADCAST_MAC, ZERO_MAC, mac_bytes


class PacketSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class PacketSpec:
    kind: str  # icmp | tcp | udp | arp
    src: IPv4Address
    dst: IPv4Address
    src_port: int = 0
    dst_port: int = 0
    tcp_flags: int = int(h.TcpFlag.SYN)
    icmp_type: int = int(h.IcmpType.ECHO_REQUEST)
    icmp_id: int = 1
    icmp_seq: int = 1
    arp_op: int = int(h.ArpOp.REQUEST)
    arp_mac: bytes | None = None  # the "is-at" MAC of an ARP reply
    ttl: int = 64
    df: bool = False
    ip_id: int = 0
    mf: bool = False
    frag_offset: int = 0
    payload_len: int = 0
    vlan: int | None = None
    src_mac: bytes | None = None
    dst_mac: bytes | None = None


_TCP_FLAG_LETTERS = {"S": h.TcpFlag.SYN, "A": h.TcpFlag.ACK, "F": h.TcpFlag.FIN,
                     "R": h.TcpFlag.RST, "P": h.TcpFlag.PSH, "U": h.TcpFlag.URG, ".": h.TcpFlag.ACK}


def _ip(word: str) -> IPv4Address:
    try:
        return IPv4Address(word)
    except ValueError:
        raise PacketSyntaxError(f"not an IPv4 address: {word!r}") from None


def _int(word: str, what: str, lo: int, hi: int) -> int:
    try:
        value = int(word, 0)
    except ValueError:
        raise PacketSyntaxError(f"{what} must be a number, got {word!r}") from None
    if not lo <= value <= hi:
        raise PacketSyntaxError(f"{what} must be in {lo}..{hi}, got {value}")
    return value


def _endpoint(word: str) -> tuple[IPv4Address, int]:
    addr, sep, port = word.rpartition(":")
    if not sep:
        raise PacketSyntaxError(f"expected ADDRESS:PORT, got {word!r}")
    return _ip(addr), _int(port, "port", 0, 65535)


def _mac(word: str) -> bytes:
    try:
        return mac_bytes(word)
    except ValueError as exc:
        raise PacketSyntaxError(str(exc)) from None


def parse_packet(text: str) -> PacketSpec:
    words = text.split()
    if not words:
        raise PacketSyntaxError("empty packet description")
    kind = words[0].lower()

    def take(i: int, what: str) -> str:
        if i >= len(words):
            raise PacketSyntaxError(f"missing {what} in {text!r}")
        return words[i]

    if kind == "arp":
        op = take(1, "'who-has' or 'reply'")
        if op == "who-has":
            target = _ip(take(2, "target address"))
            if take(3, "'tell'") != "tell":
                raise PacketSyntaxError("expected 'arp who-has TARGET tell SENDER'")
            sender = _ip(take(4, "sender address"))
            spec = PacketSpec(kind="arp", src=sender, dst=target)
            rest = words[5:]
        elif op == "reply":
            sender = _ip(take(2, "sender address"))
            if take(3, "'is-at'") != "is-at":
                raise PacketSyntaxError("expected 'arp reply SENDER is-at MAC to TARGET'")
            mac = _mac(take(4, "MAC"))
            if take(5, "'to'") != "to":
                raise PacketSyntaxError("expected 'arp reply SENDER is-at MAC to TARGET'")
            target = _ip(take(6, "target address"))
            spec = PacketSpec(kind="arp", src=sender, dst=target, arp_op=int(h.ArpOp.REPLY),
                              arp_mac=mac)
            rest = words[7:]
        else:
            raise PacketSyntaxError(f"unknown arp operation {op!r}: use who-has or reply")
    elif kind in ("icmp", "tcp", "udp"):
        if take(2, "'>'") != ">":
            raise PacketSyntaxError(f"expected '{kind} SRC > DST', got {text!r}")
        if kind == "icmp":
            spec = PacketSpec(kind=kind, src=_ip(take(1, "source")), dst=_ip(take(3, "destination")))
        else:
            src, sport = _endpoint(take(1, "source"))
            dst, dport = _endpoint(take(3, "destination"))
            spec = PacketSpec(kind=kind, src=src, dst=dst, src_port=sport, dst_port=dport)
        rest = words[4:]
    else:
        raise PacketSyntaxError(f"unknown packet kind {kind!r}: use icmp, tcp, udp or arp")

    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("df", "mf"):
            spec = replace(spec, df=True) if word == "df" else replace(spec, mf=True)
            i += 1
            continue
        if word in ("echo-request", "echo-reply") and spec.kind == "icmp":
            kind_type = h.IcmpType.ECHO_REQUEST if word == "echo-request" else h.IcmpType.ECHO_REPLY
            spec = replace(spec, icmp_type=int(kind_type))
            i += 1
            continue
        if i + 1 >= len(rest):
            raise PacketSyntaxError(f"option {word!r} needs a value")
        value = rest[i + 1]
        if word == "ttl":
            spec = replace(spec, ttl=_int(value, "ttl", 0, 255))
        elif word == "ipid":
            spec = replace(spec, ip_id=_int(value, "ipid", 0, 65535))
        elif word == "frag":
            offset = _int(value, "frag", 0, 65528)
            if offset % 8:
                raise PacketSyntaxError(f"frag {offset}: a fragment offset is a multiple of 8")
            spec = replace(spec, frag_offset=offset)
        elif word == "len":
            spec = replace(spec, payload_len=_int(value, "len", 0, 9000))
        elif word == "vlan":
            spec = replace(spec, vlan=_int(value, "vlan", 0, 4095))
        elif word == "src-mac":
            spec = replace(spec, src_mac=_mac(value))
        elif word == "dst-mac":
            spec = replace(spec, dst_mac=_mac(value))
        elif word == "flags" and spec.kind == "tcp":
            flags = 0
            for letter in value.upper():
                if letter not in _TCP_FLAG_LETTERS:
                    raise PacketSyntaxError(f"unknown TCP flag {letter!r}: use S A F R P U")
                flags |= _TCP_FLAG_LETTERS[letter]
            spec = replace(spec, tcp_flags=flags)
        elif word == "id" and spec.kind == "icmp":
            spec = replace(spec, icmp_id=_int(value, "id", 0, 65535))
        elif word == "seq" and spec.kind == "icmp":
            spec = replace(spec, icmp_seq=_int(value, "seq", 0, 65535))
        else:
            raise PacketSyntaxError(f"unknown option {word!r} for a {spec.kind} packet")
        i += 2
    return spec


def build_frame(spec: PacketSpec, src_mac: bytes, dst_mac: bytes,
                accel: ModuleType = _pure) -> bytes:
    """The Ethernet frame for ``spec``; the spec's own MACs, when given, win over the arguments."""
    src_mac = spec.src_mac or src_mac
    dst_mac = spec.dst_mac or dst_mac
    src, dst = spec.src.packed, spec.dst.packed
    payload = bytes(spec.payload_len)
    if spec.kind == "arp":
        if spec.arp_op == h.ArpOp.REQUEST:
            body = builders.arp(oper=h.ArpOp.REQUEST, sha=src_mac, spa=src, tha=ZERO_MAC, tpa=dst)
            dst_mac = spec.dst_mac or BROADCAST_MAC
        else:
            body = builders.arp(oper=h.ArpOp.REPLY, sha=spec.arp_mac or src_mac, spa=src,
                                tha=dst_mac, tpa=dst)
        ethertype = h.EtherType.ARP
    else:
        if spec.kind == "icmp":
            l4 = builders.icmp(type=spec.icmp_type, code=0,
                               rest=struct.pack("!HH", spec.icmp_id, spec.icmp_seq),
                               payload=payload, accel=accel)
            proto = h.IpProto.ICMP
        elif spec.kind == "udp":
            l4 = builders.udp(src=src, dst=dst, src_port=spec.src_port, dst_port=spec.dst_port,
                              payload=payload, accel=accel)
            proto = h.IpProto.UDP
        else:
            l4 = builders.tcp(src=src, dst=dst, src_port=spec.src_port, dst_port=spec.dst_port,
                              flags=spec.tcp_flags, payload=payload, seq=1000, accel=accel)
            proto = h.IpProto.TCP
        body = builders.ipv4(src=src, dst=dst, protocol=proto, payload=l4, ttl=spec.ttl,
                             identification=spec.ip_id, df=spec.df, accel=accel)
        if spec.mf or spec.frag_offset:
            field = (0x4000 if spec.df else 0) | (0x2000 if spec.mf else 0) | spec.frag_offset // 8
            header = body[:6] + struct.pack("!HBBH", field, body[8], body[9], 0) + body[12:20]
            body = header[:10] + accel.checksum(header).to_bytes(2, "big") + header[12:] + body[20:]
        ethertype = h.EtherType.IPV4
    if spec.vlan is not None:
        tag = struct.pack("!HH", spec.vlan, ethertype)
        return builders.ethernet(dst_mac, src_mac, h.EtherType.VLAN, tag + body)
    return builders.ethernet(dst_mac, src_mac, ethertype, body)

"""Frame construction from the declarations in ``headers``, with correct checksums.

Checksums are computed by an accel implementation passed in (the switch passes its own, so
generated frames use the native module); tests may rely on the pure default.
"""
from __future__ import annotations

from types import ModuleType

from vswitch.accel import pure as _pure
from vswitch.wire import headers as h


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return h.ETHERNET.build(dict(dst=dst, src=src, ethertype=ethertype)) + payload


def arp(*, oper: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return h.ARP.build(dict(htype=1, ptype=h.EtherType.IPV4, hlen=6, plen=4, oper=oper,
                            sha=sha, spa=spa, tha=tha, tpa=tpa))


def ipv4(*, src: bytes, dst: bytes, protocol: int, payload: bytes, ttl: int = 64,
         identification: int = 0, df: bool = False, tos: int = 0,
         accel: ModuleType = _pure) -> bytes:
    header = h.build_ipv4(src=src, dst=dst, protocol=protocol, payload_len=len(payload), ttl=ttl,
                          identification=identification, df=df, tos=tos)
    csum = accel.checksum(header)
    return header[:10] + csum.to_bytes(2, "big") + header[12:] + payload


def icmp(*, type: int, code: int, rest: bytes, payload: bytes, accel: ModuleType = _pure) -> bytes:
    body = h.ICMP.build(dict(type=type, code=code, checksum=0, rest=rest, payload=payload))
    csum = accel.checksum(body)
    return body[:2] + csum.to_bytes(2, "big") + body[4:]


def _l4_with_checksum(segment: bytes, checksum_at: int, src: bytes, dst: bytes, protocol: int,
                      accel: ModuleType, zero_means_none: bool) -> bytes:
    pseudo = accel.pseudo_header_sum(src, dst, protocol, len(segment))
    csum = ~accel.sum16(segment, pseudo) & 0xFFFF
    if csum == 0 and zero_means_none:
        csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones; zero means "no checksum"
    return segment[:checksum_at] + csum.to_bytes(2, "big") + segment[checksum_at + 2:]


def udp(*, src: bytes, dst: bytes, src_port: int, dst_port: int, payload: bytes,
        accel: ModuleType = _pure) -> bytes:
    segment = h.UDP.build(dict(src_port=src_port, dst_port=dst_port,
                               length=h.UDP_HEADER_LEN + len(payload), checksum=0)) + payload
    return _l4_with_checksum(segment, 6, src, dst, h.IpProto.UDP, accel, zero_means_none=True)


def tcp(*, src: bytes, dst: bytes, src_port: int, dst_port: int, flags: int, payload: bytes = b"",
        seq: int = 0, ack: int = 0, window: int = 65535, accel: ModuleType = _pure) -> bytes:
    segment = h.TCP.build(dict(src_port=src_port, dst_port=dst_port, seq=seq, ack=ack,
                               offset_flags=(5 << 12) | (flags & 0x01FF), window=window,
                               checksum=0, urgent=0)) + payload
    return _l4_with_checksum(segment, 16, src, dst, h.IpProto.TCP, accel, zero_means_none=False)

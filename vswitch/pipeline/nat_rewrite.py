"""Address and port rewrites of NAT, with every checksum kept right incrementally (RFC 1624).

What changes where:
* IPv4 source/destination: the header checksum, and — because addresses are part of the TCP/UDP
  pseudo-header — the L4 checksum too. ICMP has no pseudo-header.
* TCP/UDP ports: the L4 checksum. The ICMP echo identifier: the ICMP checksum.
* A UDP checksum of zero means "none" and stays zero; a computed zero is sent as 0xFFFF.
* A partial checksum (virtio-net ``NEEDS_CSUM``, from a pod with checksum offload) holds the
  pseudo-header *sum*, not a checksum, and the receiving kernel will add the data in: an address
  change updates that sum the other way round, and a port change must not touch it at all, since the
  ports are data the receiver sums itself.
* ICMP errors quoting a translated packet are translated inside as well (the quoted header, its
  checksum, the quoted ports) and their ICMP checksum is recomputed, so the client sees an error
  about the connection it made, not about the backend.
All functions take and return the IPv4 packet from its header on, as a bytearray.
"""
from __future__ import annotations

import struct
from types import ModuleType

from vswitch.wire import headers as h

_U16 = struct.Struct("!H")


def translate(packet: bytes | bytearray, *, src: bytes | None = None, sport: int | None = None,
              dst: bytes | None = None, dport: int | None = None, partial: bool = False,
              accel: ModuleType) -> bytearray:
    """Rewrite the addresses and ports of a TCP, UDP or ICMP echo packet (or of a fragment of
    one: a non-first fragment gets its addresses rewritten only), as a new bytearray.

    For ICMP echo, ``sport``/``dport`` is the identifier (conntrack keys echo flows by it).
    ``partial`` says the L4 checksum is a virtio-net partial checksum. The work is one call into
    the accel module (``nat_rewrite``; its pure twin spells out the rules above).
    """
    buf = bytearray(packet)
    accel.nat_rewrite(buf, src=src, sport=sport, dst=dst, dport=dport, partial=partial)
    return buf


def translate_icmp_error(packet: bytes | bytearray, *, outer_src: bytes | None = None,
                         outer_dst: bytes | None = None, inner_src: bytes | None = None,
                         inner_sport: int | None = None, inner_dst: bytes | None = None,
                         inner_dport: int | None = None, accel: ModuleType) -> bytearray:
    """Translate an ICMP error and the packet it quotes; the ICMP checksum is recomputed whole
    (the message is small, and the quote may be cut anywhere)."""
    buf = bytearray(packet)
    ihl = (buf[0] & 0x0F) * 4
    total = _U16.unpack_from(buf, h.IPV4_TOTAL_LENGTH_OFFSET)[0]
    icmp = ihl
    inner = icmp + h.ICMP_HEADER_LEN
    quoted = bytearray(buf[inner:total])
    if len(quoted) >= h.IPV4_MIN_HEADER_LEN and quoted[0] & 0x0F >= 5:
        # The quote is usually cut short: the rewrite changes the ports when they were quoted and
        # updates only the checksums whose field was quoted.
        accel.nat_rewrite(quoted, src=inner_src, sport=inner_sport, dst=inner_dst,
                          dport=inner_dport)
        buf[inner:total] = quoted
    accel.nat_rewrite(buf, src=outer_src, dst=outer_dst)  # ICMP: the header checksum only
    _U16.pack_into(buf, icmp + 2, 0)
    _U16.pack_into(buf, icmp + 2, accel.checksum(bytes(buf[icmp:total])))
    return buf

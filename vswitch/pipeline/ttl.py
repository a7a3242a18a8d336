"""Lowering an IPv4 packet's TTL as a router forwards it, shared by ip4-rewrite and the fast path.

The header checksum is updated incrementally (RFC 1624) through the accel module rather than
recomputed: TTL and protocol share a 16-bit word of the header. A partial L4 checksum is
unaffected, since TTL is not in the pseudo-header.
"""
from __future__ import annotations

from types import ModuleType

from vswitch.wire import headers as h


def lower_ttl(packet: bytearray, accel: ModuleType) -> None:
    """TTL one lower, in place, and the header checksum updated incrementally."""
    at, csum_at = h.IPV4_TTL_OFFSET, h.IPV4_CHECKSUM_OFFSET
    ttl, proto = packet[at], packet[at + 1]
    csum = accel.checksum_update16((packet[csum_at] << 8) | packet[csum_at + 1],
                                   (ttl << 8) | proto, ((ttl - 1) << 8) | proto)
    packet[at] = ttl - 1
    packet[csum_at], packet[csum_at + 1] = csum >> 8, csum & 0xFF


def decrement_ttl(header: bytes, accel: ModuleType) -> bytes:
    """The IPv4 header with TTL one lower and its checksum updated incrementally."""
    lowered = bytearray(header)
    lower_ttl(lowered, accel)
    return bytes(lowered)

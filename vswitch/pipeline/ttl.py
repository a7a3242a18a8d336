"""Lowering an IPv4 packet's TTL as a router forwards it, shared by ip4-rewrite and the fast path.

The header checksum is updated incrementally (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')) rather
than recomputed: TTL and protocol share a 16-bit word of the header. It is a few integer
operations, done here in Python: a call into the accel module (whose ``checksum_update16`` is the
same formula, and the reference the tests hold this one to) costs more than the arithmetic. A
partial L4 checksum is unaffected, since TTL is not in the pseudo-header.
"""
from __future__ import annotations

from types import ModuleType

from vswitch.wire import headers as h


def lower_ttl(packet: bytearray, accel: ModuleType | None = None) -> None:
    """TTL one lower, in place, and the header checksum updated incrementally. ``accel`` is
    accepted for the callers that pass one; the update needs none."""
    at, csum_at = h.IPV4_TTL_OFFSET, h.IPV4_CHECKSUM_OFFSET
    ttl, proto = packet[at], packet[at + 1]
    old_word = (ttl << 8) | proto
    total = ((~((packet[csum_at] << 8) | packet[csum_at + 1]) & 0xFFFF)
             + (~old_word & 0xFFFF) + old_word - 0x100)
    total = (total & 0xFFFF) + (total >> 16)
    csum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    packet[at] = ttl - 1
    packet[csum_at], packet[csum_at + 1] = csum >> 8, csum & 0xFF


def decrement_ttl(header: bytes, accel: ModuleType | None = None) -> bytes:
    """The IPv4 header with TTL one lower and its checksum updated incrementally."""
    lowered = bytearray(header)
    lower_ttl(lowered)
    return bytes(lowered)

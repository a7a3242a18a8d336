"""Pure-Python reference twin of the native module: same names, same signatures, same results.

The tables here are step-by-step replicas of the C data structures (the same hash, the same
robin-hood probing, the same DIR-16-8-8 trie with the same group collapsing), not merely
equivalent containers. That is deliberate: it makes observable details that depend on layout, such
as the order of ``ExactTable.items()`` and the group count in ``Lpm4.statistics()``, equal as well,
and it lets a developer step through the algorithm the C code runs. Tests additionally compare both
against naive references (a dict; a brute-force prefix scan).
"""
from __future__ import annotations

import struct
from typing import Sequence

from vswitch.accel import (
    LPM_MAX_ROUTES,
    LPM_MAX_VALUE,
    ExactTableStatistics,
    Lpm4Statistics,
    TableFullError,
    exact_slots_for,
    lpm_mask,
    require_exact_shape,
    require_ip4,
    require_key,
    require_lpm_route,
    require_proto,
    require_range,
    require_value64,
)

NAME = "pure"

_M64 = (1 << 64) - 1


# ---- Internet checksum ------------------------------------------------------------------------


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def sum16(data: bytes, initial: int = 0) -> int:
    """One's-complement sum of 16-bit big-endian words, folded to 16 bits (RFC 1071).

    A trailing odd byte counts as the high byte of a last word padded with zero.
    """
    require_range("initial", initial, 0, 0xFFFFFFFF)
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    return _fold(initial + sum(struct.unpack(f">{len(data) // 2}H", data)))


def checksum(data: bytes) -> int:
    return ~sum16(data) & 0xFFFF


def checksum_update16(old_csum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for one changed 16-bit word.

    It equals a full recomputation whenever the data is not all zero after the change; for all-zero
    data it yields 0x0000 where recomputation yields 0xFFFF, the other one's-complement zero. For
    UDP the caller leaves a zero (absent) checksum alone and sends a result of 0 as 0xFFFF.
    """
    require_range("old_csum", old_csum, 0, 0xFFFF)
    require_range("old_word", old_word, 0, 0xFFFF)
    require_range("new_word", new_word, 0, 0xFFFF)
    return ~_fold((~old_csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word) & 0xFFFF


def checksum_update32(old_csum: int, old_value: int, new_value: int) -> int:
    """RFC 1624 eqn. 3 for a changed 32-bit field, such as an IPv4 address, as two words."""
    require_range("old_csum", old_csum, 0, 0xFFFF)
    require_range("old_value", old_value, 0, 0xFFFFFFFF)
    require_range("new_value", new_value, 0, 0xFFFFFFFF)
    total = (
        (~old_csum & 0xFFFF)
        + (~(old_value >> 16) & 0xFFFF)
        + (~old_value & 0xFFFF)
        + (new_value >> 16)
        + (new_value & 0xFFFF)
    )
    return ~_fold(total) & 0xFFFF


def _pseudo_total(src_ip: bytes, dst_ip: bytes, proto: int, length: int) -> int:
    return (
        int.from_bytes(src_ip[:2], "big")
        + int.from_bytes(src_ip[2:], "big")
        + int.from_bytes(dst_ip[:2], "big")
        + int.from_bytes(dst_ip[2:], "big")
        + proto
        + (length >> 16)
        + (length & 0xFFFF)
    )


def pseudo_header_sum(src_ip: bytes, dst_ip: bytes, proto: int, length: int) -> int:
    """Folded, not inverted, sum of the IPv4 pseudo-header (src, dst, zero, proto, length).

    This is the value a virtio-net partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) leaves in the
    TCP/UDP checksum field. ``length`` may exceed 16 bits for a GSO super-segment; both halves are
    added, as the kernel does.
    """
    src_ip = require_ip4("src_ip", src_ip)
    dst_ip = require_ip4("dst_ip", dst_ip)
    require_range("proto", proto, 0, 255)
    require_range("length", length, 0, 0xFFFFFFFF)
    return _fold(_pseudo_total(src_ip, dst_ip, proto, length))


def l4_checksum(src_ip: bytes, dst_ip: bytes, proto: int | None, segment: bytes) -> int:
    """The checksum of a TCP/UDP segment (header with a zeroed checksum field, plus payload).

    ``proto=None`` leaves out the pseudo-header, which gives the ICMP checksum (the addresses are
    then still validated but not used). The result is not adjusted for UDP: use ``udp_checksum``.
    Run over a segment that carries its checksum, the result is 0 when the checksum is right.
    """
    src_ip = require_ip4("src_ip", src_ip)
    dst_ip = require_ip4("dst_ip", dst_ip)
    p = require_proto(proto)
    initial = 0 if p < 0 else _fold(_pseudo_total(src_ip, dst_ip, p, len(segment)))
    return ~sum16(segment, initial) & 0xFFFF


def udp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes) -> int:
    """UDP's checksum: as ``l4_checksum`` with proto 17, but a computed 0 is sent as 0xFFFF,
    because 0 in the field means "no checksum" (RFC 768)."""
    return l4_checksum(src_ip, dst_ip, 17, segment) or 0xFFFF


# ---- NAT rewrite ------------------------------------------------------------------------------

_L4_CHECKSUM_AT = {6: 16, 17: 6, 1: 2}


def _u16(buf: bytearray, at: int) -> int:
    return (buf[at] << 8) | buf[at + 1]


def _put16(buf: bytearray, at: int, value: int) -> None:
    buf[at] = value >> 8
    buf[at + 1] = value & 0xFF


def _update32_at(buf: bytearray, at: int, old: int, new: int, partial: bool) -> None:
    csum = _u16(buf, at)
    if partial:
        # The field holds a folded sum S (not inverted): S' = S - old + new = ~update(~S, old, new).
        csum = ~checksum_update32(~csum & 0xFFFF, old, new) & 0xFFFF
    else:
        csum = checksum_update32(csum, old, new)
    _put16(buf, at, csum)


def nat_rewrite(packet: bytearray, src: bytes | None = None, sport: int | None = None,
                dst: bytes | None = None, dport: int | None = None,
                partial: bool = False) -> None:
    """Rewrite an IPv4 packet's addresses and ports (or ICMP echo identifier) in place, keeping
    every checksum right incrementally (RFC 1624).

    * Addresses are in the IPv4 header checksum and, through the pseudo-header, in the TCP/UDP
      checksum; ICMP has no pseudo-header. Ports and the echo identifier are in the L4 checksum.
    * A non-first fragment carries no L4 header: only its addresses (and the header checksum)
      change; the L4 checksum, in the first fragment, already covers them.
    * A UDP checksum of zero means "none" and stays zero; a computed zero is sent as 0xFFFF.
    * ``partial``: the L4 field is a virtio-net partial checksum (the pseudo-header *sum*, which
      the receiver completes over the data): an address change updates that sum the other way
      round, and a port change must not touch it, since the ports are data the receiver sums.
    For ICMP echo, ``sport`` (else ``dport``) is the new identifier. ValueError when the packet is
    shorter than 20 bytes or its IHL is below 5; the packet is then unchanged.
    """
    # The arguments first, then the packet: the native twin checks in this order too.
    for name, address in (("src", src), ("dst", dst)):
        if address is not None:
            require_ip4(name, address)
    for name, port in (("sport", sport), ("dport", dport)):
        if port is not None:
            require_range(name, port, 0, 0xFFFF)
    if len(packet) < 20:
        raise ValueError(f"an IPv4 packet needs 20 bytes, got {len(packet)}")
    l4 = (packet[0] & 0x0F) * 4
    if l4 < 20:
        raise ValueError(f"IHL {l4 // 4} is below 5")
    size = len(packet)
    proto = -1 if _u16(packet, 6) & 0x1FFF else packet[9]
    csum_at = _L4_CHECKSUM_AT.get(proto)
    has_l4_csum = csum_at is not None and size >= l4 + csum_at + 2
    udp_no_csum = proto == 17 and has_l4_csum and not partial and _u16(packet, l4 + 6) == 0
    for at, new in ((12, src), (16, dst)):
        if new is None:
            continue
        old_value = int.from_bytes(packet[at: at + 4], "big")
        new_value = int.from_bytes(new, "big")
        if old_value == new_value:
            continue
        packet[at: at + 4] = new
        _update32_at(packet, 10, old_value, new_value, False)
        if has_l4_csum and proto != 1 and not udp_no_csum:
            _update32_at(packet, l4 + csum_at, old_value, new_value, partial)
    if proto in (6, 17):
        for offset, new_port in ((0, sport), (2, dport)):
            if new_port is None or size < l4 + offset + 2:
                continue
            old = _u16(packet, l4 + offset)
            if old == new_port:
                continue
            _put16(packet, l4 + offset, new_port)
            if has_l4_csum and not partial and not udp_no_csum:
                _put16(packet, l4 + csum_at,
                       checksum_update16(_u16(packet, l4 + csum_at), old, new_port))
    elif proto == 1:
        new_id = sport if sport is not None else dport
        if new_id is not None and size >= l4 + 6:
            old = _u16(packet, l4 + 4)
            if old != new_id:
                _put16(packet, l4 + 4, new_id)
                _put16(packet, l4 + 2, checksum_update16(_u16(packet, l4 + 2), old, new_id))
    if proto == 17 and has_l4_csum and not partial and not udp_no_csum:
        if _u16(packet, l4 + 6) == 0:
            _put16(packet, l4 + 6, 0xFFFF)


# ---- Exact-match table ----------------------------------------------------------------------

_K1 = 0x9E3779B97F4A7C15
_K2 = 0xFF51AFD7ED558CCD
_K3 = 0xC4CEB9FE1A85EC53


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def hash_key(key: bytes, seed: int = 0) -> int:
    """The exact table's 64-bit hash: a seeded word-at-a-time mix finished with fmix64."""
    require_range("seed", seed, 0, _M64)
    n = len(key)
    h = seed ^ ((n * _K1) & _M64)
    for i in range(0, n, 8):
        w = (int.from_bytes(key[i : i + 8], "little") * _K2) & _M64
        h ^= _rotl64(w, 31)
        h = (_rotl64(h, 27) * _K1 + _K3) & _M64
    h ^= h >> 33
    h = (h * _K2) & _M64
    h ^= h >> 33
    h = (h * _K3) & _M64
    h ^= h >> 33
    return h


class ExactTable:
    """Exact match on ``key_size``-byte keys to int64 values; see native/exact_table.c.

    The table holds at most ``capacity`` entries in a fixed power-of-two number of slots (at least
    capacity / 0.75). ``insert`` updates an existing key even when the table is full, and returns
    False only when a new key does not fit.
    """

    def __init__(self, key_size: int, capacity: int, seed: int = 0) -> None:
        require_exact_shape(key_size, capacity)
        require_range("seed", seed, 0, _M64)
        self.key_size = key_size
        self.capacity = capacity
        self.seed = seed
        slots = exact_slots_for(capacity)
        self._mask = slots - 1
        self._count = 0
        # dist[pos] is 0 for an empty slot, else the entry's distance from its home slot + 1.
        self._dist = [0] * slots
        self._keys: list[bytes] = [b""] * slots
        self._values = [0] * slots

    def _find(self, key: bytes) -> int:
        pos = hash_key(key, self.seed) & self._mask
        d = 1
        while True:
            r = self._dist[pos]
            if r < d:
                return -1
            if r == d and self._keys[pos] == key:
                return pos
            pos = (pos + 1) & self._mask
            d += 1

    def insert(self, key: bytes, value: int) -> bool:
        require_key(key, self.key_size)
        require_value64(value)
        key = bytes(key)
        found = self._find(key)
        if found >= 0:
            self._values[found] = value
            return True
        if self._count >= self.capacity:
            return False
        pos = hash_key(key, self.seed) & self._mask
        d = 1
        while True:
            r = self._dist[pos]
            if r == 0:
                self._dist[pos] = d
                self._keys[pos] = key
                self._values[pos] = value
                self._count += 1
                return True
            if r < d:
                # The resident is closer to home: it yields the slot and carries on probing.
                key, self._keys[pos] = self._keys[pos], key
                value, self._values[pos] = self._values[pos], value
                self._dist[pos] = d
                d = r
            pos = (pos + 1) & self._mask
            d += 1

    def lookup(self, key: bytes) -> int | None:
        require_key(key, self.key_size)
        pos = self._find(bytes(key))
        return None if pos < 0 else self._values[pos]

    def delete(self, key: bytes) -> bool:
        require_key(key, self.key_size)
        pos = self._find(bytes(key))
        if pos < 0:
            return False
        while True:
            nxt = (pos + 1) & self._mask
            r = self._dist[nxt]
            if r <= 1:
                self._dist[pos] = 0
                self._keys[pos] = b""
                break
            self._keys[pos] = self._keys[nxt]
            self._values[pos] = self._values[nxt]
            self._dist[pos] = r - 1
            pos = nxt
        self._count -= 1
        return True

    def lookup_batch(self, keys: Sequence[bytes]) -> list[int | None]:
        for key in keys:
            require_key(key, self.key_size)
        return [self.lookup(key) for key in keys]

    def items(self) -> list[tuple[bytes, int]]:
        """Entries in slot order (the same order as the native table's)."""
        return [
            (self._keys[pos], self._values[pos])
            for pos in range(self._mask + 1)
            if self._dist[pos]
        ]

    def clear(self) -> None:
        self._dist = [0] * (self._mask + 1)
        self._keys = [b""] * (self._mask + 1)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def statistics(self) -> ExactTableStatistics:
        return ExactTableStatistics(
            entries=self._count,
            capacity=self.capacity,
            slots=self._mask + 1,
            max_probe=max(self._dist) - 1 if self._count else 0,
        )


# ---- IPv4 longest-prefix match ----------------------------------------------------------------

_L1_SIZE = 1 << 16
_GROUP = 256
_EXT = 0x80000000


class Lpm4:
    """IPv4 longest-prefix match; a replica of the DIR-16-8-8 trie in native/lpm4.c.

    An entry is 0 (no route), rule number + 1, or ``_EXT | group``. ``add`` of an existing
    (prefix, length) replaces its value; host bits beyond ``length`` are ignored.
    """

    def __init__(self, max_routes: int = 65536) -> None:
        require_range("max_routes", max_routes, 1, LPM_MAX_ROUTES)
        self.max_routes = max_routes
        self.clear()

    def clear(self) -> None:
        self._l1 = [0] * _L1_SIZE
        self._groups: list[list[int]] = []
        self._free_groups: list[int] = []
        self._rules: dict[tuple[int, int], int] = {}
        self._rule_len = [0] * self.max_routes
        self._rule_value = [0] * self.max_routes
        self._free_rules = list(range(self.max_routes - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._rules)

    def statistics(self) -> Lpm4Statistics:
        return Lpm4Statistics(
            routes=len(self._rules),
            max_routes=self.max_routes,
            groups=len(self._groups) - len(self._free_groups),
        )

    def _depth(self, entry: int) -> int:
        return -1 if entry == 0 else self._rule_len[entry - 1]

    def _descend(self, table: list[int], index: int) -> list[int]:
        entry = table[index]
        if entry & _EXT:
            return self._groups[entry & ~_EXT]
        fill = [entry] * _GROUP
        if self._free_groups:
            g = self._free_groups.pop()
            self._groups[g] = fill
        else:
            g = len(self._groups)
            self._groups.append(fill)
        table[index] = _EXT | g
        return fill

    def _set_range(self, table: list[int], start: int, count: int, entry: int, depth: int) -> None:
        for i in range(start, start + count):
            e = table[i]
            if e & _EXT:
                self._set_range(self._groups[e & ~_EXT], 0, _GROUP, entry, depth)
            elif self._depth(e) < depth:
                table[i] = entry

    def _collapse(self, table: list[int], index: int) -> None:
        entry = table[index]
        if not entry & _EXT:
            return
        g = entry & ~_EXT
        group = self._groups[g]
        first = group[0]
        if first & _EXT or group.count(first) != _GROUP:
            return
        table[index] = first
        self._free_groups.append(g)

    def _replace_range(self, table: list[int], start: int, count: int, old: int, new: int) -> None:
        for i in range(start, start + count):
            e = table[i]
            if e & _EXT:
                self._replace_range(self._groups[e & ~_EXT], 0, _GROUP, old, new)
                self._collapse(table, i)
            elif e == old:
                table[i] = new

    def add(self, prefix: int, length: int, value: int) -> None:
        """Adds a route, or replaces the value of an existing one; TableFullError when full."""
        prefix = require_lpm_route(prefix, length)
        require_range("value", value, 0, LPM_MAX_VALUE)
        existing = self._rules.get((prefix, length))
        if existing is not None:
            self._rule_value[existing] = value
            return
        if len(self._rules) >= self.max_routes:
            raise TableFullError(f"LPM table full ({self.max_routes} routes)")
        r = self._free_rules.pop()
        self._rule_len[r] = length
        self._rule_value[r] = value
        self._rules[(prefix, length)] = r
        entry = r + 1
        if length <= 16:
            self._set_range(self._l1, prefix >> 16, 1 << (16 - length), entry, length)
            return
        group = self._descend(self._l1, prefix >> 16)
        if length <= 24:
            self._set_range(group, (prefix >> 8) & 0xFF, 1 << (24 - length), entry, length)
            return
        group2 = self._descend(group, (prefix >> 8) & 0xFF)
        self._set_range(group2, prefix & 0xFF, 1 << (32 - length), entry, length)

    def delete(self, prefix: int, length: int) -> bool:
        """Removes a route; the addresses it covered fall back to the next less specific one."""
        prefix = require_lpm_route(prefix, length)
        r = self._rules.pop((prefix, length), None)
        if r is None:
            return False
        replacement = 0
        for shorter in range(length - 1, -1, -1):
            cover = self._rules.get((prefix & lpm_mask(shorter), shorter))
            if cover is not None:
                replacement = cover + 1
                break
        entry = r + 1
        if length <= 16:
            self._replace_range(self._l1, prefix >> 16, 1 << (16 - length), entry, replacement)
        else:
            i1 = prefix >> 16
            group = self._groups[self._l1[i1] & ~_EXT]
            if length <= 24:
                self._replace_range(group, (prefix >> 8) & 0xFF, 1 << (24 - length), entry, replacement)
            else:
                i2 = (prefix >> 8) & 0xFF
                group2 = self._groups[group[i2] & ~_EXT]
                self._replace_range(group2, prefix & 0xFF, 1 << (32 - length), entry, replacement)
                self._collapse(group, i2)
            self._collapse(self._l1, i1)
        self._free_rules.append(r)
        return True

    def _entry(self, addr: int) -> int:
        e = self._l1[addr >> 16]
        if e & _EXT:
            e = self._groups[e & ~_EXT][(addr >> 8) & 0xFF]
            if e & _EXT:
                e = self._groups[e & ~_EXT][addr & 0xFF]
        return e

    def lookup(self, addr: int) -> int | None:
        require_range("addr", addr, 0, 0xFFFFFFFF)
        e = self._entry(addr)
        return None if e == 0 else self._rule_value[e - 1]

    def lookup_batch(self, addrs: Sequence[int]) -> list[int | None]:
        for addr in addrs:
            require_range("addr", addr, 0, 0xFFFFFFFF)
        values = self._rule_value
        return [None if (e := self._entry(a)) == 0 else values[e - 1] for a in addrs]


# ---- Flow keys ---------------------------------------------------------------------------------


def _flow_key(frame: bytes, offset: int) -> bytes | None:
    n = len(frame)
    if offset > n or n - offset < 14 + 20:
        return None
    if frame[offset + 12] != 0x08 or frame[offset + 13] != 0x00:
        return None
    ip = offset + 14
    avail = n - ip
    version_ihl = frame[ip]
    if version_ihl >> 4 != 4:
        return None
    hlen = (version_ihl & 0x0F) * 4
    if hlen < 20 or hlen > avail:
        return None
    total = (frame[ip + 2] << 8) | frame[ip + 3]
    if total < hlen or total > avail:
        return None
    if ((frame[ip + 6] << 8) | frame[ip + 7]) & 0x3FFF:
        return None
    return bytes(frame[offset : offset + 14]) + bytes(frame[ip + 12 : ip + 20])


class FlowKeyExtractor:
    """Extracts flow keys from bursts; the native twin reuses its buffers across calls."""

    def extract(self, frames: Sequence[bytes], offset: int) -> list[bytes | None]:
        """The 22-byte flow key of each frame, or None for one that is not a whole,
        unfragmented IPv4 packet. ``offset`` skips a virtio-net header (10) or nothing (0)."""
        require_range("offset", offset, 0, 0xFFFF)
        return [_flow_key(frame, offset) for frame in frames]


def extract_flow_keys(frames: Sequence[bytes], offset: int) -> list[bytes | None]:
    """One-shot form of ``FlowKeyExtractor().extract``; a hot loop keeps an extractor instead."""
    return FlowKeyExtractor().extract(frames, offset)

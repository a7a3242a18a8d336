"""The cffi C module behind the same API as ``vswitch.accel.pure``.

Importing this module fails with ImportError when ``vswitch._native`` has not been built; nothing
here falls back to the pure twin. Arguments are checked in Python with the same helpers the twin
uses, so both raise the same errors, and the C side receives only values it accepts.

Batch calls (``lookup_batch``, ``FlowKeyExtractor.extract``) make one FFI call per burst and write
into output buffers the object owns and reuses; a buffer grows (to the next power of two) only when a
larger burst than any before arrives. A burst's inputs are packed into one contiguous Python object
(``array``, ``bytes.join``) by a single C-speed call and handed over with ``ffi.from_buffer``; the
object stays referenced until the C call has returned, and C keeps no pointer to it afterwards.
"""
from __future__ import annotations

import struct
from array import array
from typing import Sequence

from vswitch._native import ffi, lib
from vswitch.accel import (
    FLOW_KEY_LEN,
    LPM_MAX_ROUTES,
    LPM_MAX_VALUE,
    ExactTableStatistics,
    Lpm4Statistics,
    TableFullError,
    exact_slots_for,
    require_exact_shape,
    require_ip4,
    require_key,
    require_lpm_route,
    require_proto,
    require_range,
    require_value64,
)

NAME = "native"

_M64 = (1 << 64) - 1
_MIN_HEADERS = 14 + 20  # Ethernet + a minimal IPv4 header
_KEY_FORMAT = f"{FLOW_KEY_LEN}s"


def _grown(current: int, needed: int) -> int:
    size = max(current, 64)
    while size < needed:
        size <<= 1
    return size


# ---- Internet checksum ------------------------------------------------------------------------


def sum16(data: bytes, initial: int = 0) -> int:
    require_range("initial", initial, 0, 0xFFFFFFFF)
    return lib.vs_sum16(ffi.from_buffer("uint8_t[]", data), len(data), initial)


def checksum(data: bytes) -> int:
    return lib.vs_checksum(ffi.from_buffer("uint8_t[]", data), len(data))


def checksum_update16(old_csum: int, old_word: int, new_word: int) -> int:
    require_range("old_csum", old_csum, 0, 0xFFFF)
    require_range("old_word", old_word, 0, 0xFFFF)
    require_range("new_word", new_word, 0, 0xFFFF)
    return lib.vs_checksum_update16(old_csum, old_word, new_word)


def checksum_update32(old_csum: int, old_value: int, new_value: int) -> int:
    require_range("old_csum", old_csum, 0, 0xFFFF)
    require_range("old_value", old_value, 0, 0xFFFFFFFF)
    require_range("new_value", new_value, 0, 0xFFFFFFFF)
    return lib.vs_checksum_update32(old_csum, old_value, new_value)


def nat_rewrite(packet: bytearray, src: bytes | None = None, sport: int | None = None,
                dst: bytes | None = None, dport: int | None = None,
                partial: bool = False) -> None:
    if src is not None:
        src = require_ip4("src", src)
    if dst is not None:
        dst = require_ip4("dst", dst)
    if sport is not None:
        require_range("sport", sport, 0, 0xFFFF)
    if dport is not None:
        require_range("dport", dport, 0, 0xFFFF)
    status = lib.vs_nat_rewrite(ffi.from_buffer("uint8_t[]", packet, require_writable=True),
                                len(packet), ffi.NULL if src is None else src,
                                ffi.NULL if dst is None else dst,
                                -1 if sport is None else sport, -1 if dport is None else dport,
                                1 if partial else 0)
    if status == lib.VS_NAT_SHORT:
        raise ValueError(f"an IPv4 packet needs 20 bytes, got {len(packet)}")
    if status == lib.VS_NAT_BAD_IHL:
        raise ValueError(f"IHL {packet[0] & 0x0F} is below 5")


def pseudo_header_sum(src_ip: bytes, dst_ip: bytes, proto: int, length: int) -> int:
    src_ip = require_ip4("src_ip", src_ip)
    dst_ip = require_ip4("dst_ip", dst_ip)
    require_range("proto", proto, 0, 255)
    require_range("length", length, 0, 0xFFFFFFFF)
    return lib.vs_pseudo_header_sum(src_ip, dst_ip, proto, length)


def l4_checksum(src_ip: bytes, dst_ip: bytes, proto: int | None, segment: bytes) -> int:
    src_ip = require_ip4("src_ip", src_ip)
    dst_ip = require_ip4("dst_ip", dst_ip)
    p = require_proto(proto)
    return lib.vs_l4_checksum(
        src_ip, dst_ip, p, ffi.from_buffer("uint8_t[]", segment), len(segment)
    )


def udp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes) -> int:
    return l4_checksum(src_ip, dst_ip, 17, segment) or 0xFFFF


# ---- Exact-match table ----------------------------------------------------------------------


def hash_key(key: bytes, seed: int = 0) -> int:
    require_range("seed", seed, 0, _M64)
    return lib.vs_exact_hash(ffi.from_buffer("uint8_t[]", key), len(key), seed)


class ExactTable:
    """Exact match on ``key_size``-byte keys to int64 values; see native/exact_table.c."""

    def __init__(self, key_size: int, capacity: int, seed: int = 0) -> None:
        require_exact_shape(key_size, capacity)
        require_range("seed", seed, 0, _M64)
        self.key_size = key_size
        self.capacity = capacity
        self.seed = seed
        table = lib.vs_exact_create(key_size, capacity, seed)
        if table == ffi.NULL:
            raise MemoryError(f"cannot allocate an exact table of {capacity} entries")
        slots = exact_slots_for(capacity)
        self._t = ffi.gc(table, lib.vs_exact_destroy, size=slots * (key_size + 12))
        self._value = ffi.new("int64_t *")
        self._batch = 0
        self._values = ffi.NULL
        self._found = ffi.NULL

    def insert(self, key: bytes, value: int) -> bool:
        require_key(key, self.key_size)
        require_value64(value)
        return lib.vs_exact_insert(self._t, ffi.from_buffer("uint8_t[]", key), value) != 0

    def lookup(self, key: bytes) -> int | None:
        require_key(key, self.key_size)
        if lib.vs_exact_lookup(self._t, ffi.from_buffer("uint8_t[]", key), self._value):
            return self._value[0]
        return None

    def delete(self, key: bytes) -> bool:
        require_key(key, self.key_size)
        return bool(lib.vs_exact_delete(self._t, ffi.from_buffer("uint8_t[]", key)))

    def lookup_batch(self, keys: Sequence[bytes]) -> list[int | None]:
        n = len(keys)
        if n == 0:
            return []
        if set(map(len, keys)) != {self.key_size}:
            for key in keys:
                require_key(key, self.key_size)
        packed = b"".join(keys)
        if n > self._batch:
            self._batch = _grown(self._batch, n)
            self._values = ffi.new("int64_t[]", self._batch)
            self._found = ffi.new("uint8_t[]", self._batch)
        hits = lib.vs_exact_lookup_batch(
            self._t, ffi.from_buffer("uint8_t[]", packed), n, self._values, self._found
        )
        if hits == 0:
            return [None] * n
        values = ffi.unpack(self._values, n)
        if hits == n:
            return values
        return [v if f else None for v, f in zip(values, ffi.buffer(self._found, n)[:])]

    def items(self) -> list[tuple[bytes, int]]:
        """Entries in slot order (the same order as the pure twin's)."""
        count = lib.vs_exact_count(self._t)
        keys = ffi.new("uint8_t[]", max(count, 1) * self.key_size)
        values = ffi.new("int64_t[]", max(count, 1))
        n = lib.vs_exact_dump(self._t, keys, values, count)
        raw = ffi.buffer(keys, n * self.key_size)[:]
        ks = self.key_size
        return [(raw[i * ks : (i + 1) * ks], values[i]) for i in range(n)]

    def clear(self) -> None:
        lib.vs_exact_clear(self._t)

    def __len__(self) -> int:
        return lib.vs_exact_count(self._t)

    def statistics(self) -> ExactTableStatistics:
        return ExactTableStatistics(
            entries=lib.vs_exact_count(self._t),
            capacity=self.capacity,
            slots=lib.vs_exact_slots(self._t),
            max_probe=lib.vs_exact_max_probe(self._t),
        )


# ---- IPv4 longest-prefix match ----------------------------------------------------------------


class Lpm4:
    """IPv4 longest-prefix match; see native/lpm4.c for the DIR-16-8-8 trie."""

    def __init__(self, max_routes: int = 65536) -> None:
        require_range("max_routes", max_routes, 1, LPM_MAX_ROUTES)
        self.max_routes = max_routes
        table = lib.vs_lpm4_create(max_routes)
        if table == ffi.NULL:
            raise MemoryError(f"cannot allocate an LPM table of {max_routes} routes")
        # The size hint is the fixed part (top level, rule arrays, rule index); groups come on top.
        self._t = ffi.gc(table, lib.vs_lpm4_destroy, size=(1 << 18) + max_routes * 40)
        self._value = ffi.new("uint32_t *")
        self._batch = 0
        self._out = ffi.NULL

    def add(self, prefix: int, length: int, value: int) -> None:
        prefix = require_lpm_route(prefix, length)
        require_range("value", value, 0, LPM_MAX_VALUE)
        status = lib.vs_lpm4_add(self._t, prefix, length, value)
        if status == lib.VS_LPM_FULL:
            raise TableFullError(f"LPM table full ({self.max_routes} routes)")
        if status == lib.VS_LPM_NOMEM:
            raise MemoryError("cannot grow the LPM group pool")
        if status != lib.VS_LPM_OK:
            raise ValueError(f"route rejected by the LPM table (status {status})")

    def delete(self, prefix: int, length: int) -> bool:
        prefix = require_lpm_route(prefix, length)
        return bool(lib.vs_lpm4_delete(self._t, prefix, length))

    def lookup(self, addr: int) -> int | None:
        require_range("addr", addr, 0, 0xFFFFFFFF)
        if lib.vs_lpm4_lookup(self._t, addr, self._value):
            return self._value[0]
        return None

    def lookup_batch(self, addrs: Sequence[int]) -> list[int | None]:
        n = len(addrs)
        if n == 0:
            return []
        if n > self._batch:
            self._batch = _grown(self._batch, n)
            self._out = ffi.new("int32_t[]", self._batch)
        try:
            packed = array("I", addrs)
        except OverflowError:
            for addr in addrs:
                require_range("addr", addr, 0, 0xFFFFFFFF)
            raise
        hits = lib.vs_lpm4_lookup_batch(self._t, ffi.from_buffer("uint32_t[]", packed), n, self._out)
        values = ffi.unpack(self._out, n)
        if hits == n:
            return values
        return [None if v < 0 else v for v in values]

    def clear(self) -> None:
        lib.vs_lpm4_clear(self._t)

    def __len__(self) -> int:
        return lib.vs_lpm4_count(self._t)

    def statistics(self) -> Lpm4Statistics:
        return Lpm4Statistics(
            routes=lib.vs_lpm4_count(self._t),
            max_routes=self.max_routes,
            groups=lib.vs_lpm4_groups(self._t),
        )


# ---- Flow keys ---------------------------------------------------------------------------------


class FlowKeyExtractor:
    """Extracts flow keys from bursts with one C call each.

    The frames' first ``offset + 34`` bytes (all the checks and the key need) are cut and joined
    into one buffer of fixed-stride windows, which costs one slice per frame but no Python-level
    call into cffi per frame; the key and status arrays are owned here and reused from burst to
    burst, and ``struct`` splits the keys out in one call.
    """

    def __init__(self) -> None:
        self._batch = 0
        self._keys = ffi.NULL
        self._status = ffi.NULL

    def extract(self, frames: Sequence[bytes], offset: int) -> list[bytes | None]:
        require_range("offset", offset, 0, 0xFFFF)
        n = len(frames)
        if n == 0:
            return []
        if n > self._batch:
            self._batch = _grown(self._batch, n)
            self._keys = ffi.new("uint8_t[]", self._batch * FLOW_KEY_LEN)
            self._status = ffi.new("uint8_t[]", self._batch)
        stride = offset + _MIN_HEADERS
        lens = list(map(len, frames))
        if min(lens) >= stride:
            windows = b"".join([frame[:stride] for frame in frames])
        else:
            windows = b"".join([bytes(frame[:stride]).ljust(stride, b"\0") for frame in frames])
        ok = lib.vs_flow_keys_batch(
            ffi.from_buffer("uint8_t[]", windows), stride,
            ffi.from_buffer("uint64_t[]", array("Q", lens)), n, offset, self._keys, self._status,
        )
        if ok == 0:
            return [None] * n
        # struct caches the compiled format, so a burst size seen before costs no parsing.
        keys = list(struct.unpack(_KEY_FORMAT * n, ffi.buffer(self._keys, n * FLOW_KEY_LEN)))
        if ok == n:
            return keys
        return [None if s else k for k, s in zip(keys, ffi.buffer(self._status, n)[:])]


def extract_flow_keys(frames: Sequence[bytes], offset: int) -> list[bytes | None]:
    """One-shot form of ``FlowKeyExtractor().extract``; a hot loop keeps an extractor instead."""
    return FlowKeyExtractor().extract(frames, offset)


# The datapath that executes cached decisions in C (``vswitch.core.native_cache`` drives it);
# the pure accel has none, and the switch then keeps its cache for ``core.fast_path``.
from vswitch.accel.datapath import Datapath  # noqa: E402,F401 (re-exported)

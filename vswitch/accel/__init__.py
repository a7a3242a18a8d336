"""One API, two implementations: ``native`` (the cffi C module) and ``pure`` (the reference twin).

The daemon uses the native implementation; the pure one exists so that tests can hold the two equal
and so that a developer can step through the algorithm. It is never a silent fallback: if the native
module is missing, ``load("native")`` raises.

Both implementations expose the same names with the same signatures and results:

- ``sum16``, ``checksum``, ``checksum_update16``, ``checksum_update32``, ``pseudo_header_sum``,
  ``l4_checksum``, ``udp_checksum`` -- Internet checksums (RFC 1071, RFC 1624);
- ``nat_rewrite`` -- a NAT rewrite of addresses and ports in place, checksums kept right;
- ``hash_key`` -- the seeded hash the exact-match table uses;
- ``Lpm4`` -- IPv4 longest-prefix match (DIR-16-8-8);
- ``ExactTable`` -- exact match on fixed-size byte keys (robin hood);
- ``extract_flow_keys`` and ``FlowKeyExtractor`` -- the 22-byte Ethernet+IPv4 flow key.

This module holds what the two share so that they raise the same errors and return the same
statistics types: the argument checks, ``TableFullError`` and the statistics snapshots.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

IMPLEMENTATIONS = ("native", "pure")

FLOW_KEY_LEN = 22  # dst MAC 6 + src MAC 6 + ethertype 2 + IPv4 src 4 + IPv4 dst 4
LPM_MAX_VALUE = 2**31 - 1
LPM_MAX_ROUTES = 1 << 26
EXACT_MAX_KEY = 255
EXACT_MAX_CAPACITY = 1 << 28


def load(name: str = "native") -> ModuleType:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown accel implementation {name!r}; choose one of {IMPLEMENTATIONS}")
    return importlib.import_module(f"vswitch.accel.{name}")


class TableFullError(Exception):
    """A route could not be added because the table already holds ``max_routes`` routes.

    ``ExactTable.insert`` reports a full table by returning False instead, because the callers of an
    exact table (FDB learning, conntrack) treat "full" as an ordinary, counted outcome; a route that
    does not fit is a configuration error that must not pass silently.
    """


@dataclass(frozen=True, slots=True)
class Lpm4Statistics:
    routes: int
    max_routes: int
    groups: int  # 256-entry second- and third-level groups in use, 1 KiB each in C


@dataclass(frozen=True, slots=True)
class ExactTableStatistics:
    entries: int
    capacity: int  # most entries the table accepts
    slots: int  # power of two >= capacity / 0.75
    max_probe: int  # longest distance of an entry from its home slot


def require_ip4(name: str, value: bytes) -> bytes:
    if len(value) != 4:
        raise ValueError(f"{name} must be 4 bytes (an IPv4 address), got {len(value)}")
    return bytes(value)


def require_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


def require_proto(proto: int | None) -> int:
    """Maps ``None`` (no pseudo-header, as for ICMP) to -1, the C side's spelling of it."""
    if proto is None:
        return -1
    return require_range("proto", proto, 0, 255)


def require_lpm_route(prefix: int, length: int) -> int:
    """Validates a route and returns its prefix with the host bits cleared."""
    require_range("prefix", prefix, 0, 0xFFFFFFFF)
    require_range("length", length, 0, 32)
    return prefix & lpm_mask(length)


def lpm_mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


def exact_slots_for(capacity: int) -> int:
    """The slot count for ``capacity`` entries: the power of two >= capacity / 0.75."""
    need = (capacity * 4 + 2) // 3
    slots = 1
    while slots < need:
        slots <<= 1
    return slots


def require_exact_shape(key_size: int, capacity: int) -> None:
    require_range("key_size", key_size, 1, EXACT_MAX_KEY)
    require_range("capacity", capacity, 1, EXACT_MAX_CAPACITY)


def require_key(key: bytes, key_size: int) -> None:
    if len(key) != key_size:
        raise ValueError(f"key must be {key_size} bytes, got {len(key)}")


def require_value64(value: int) -> None:
    require_range("value", value, -(2**63), 2**63 - 1)

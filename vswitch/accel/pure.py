"""Pure-Python reference twin of the native module: same names, same signatures, same results."""
from __future__ import annotations

NAME = "pure"


def sum16(data: bytes, initial: int = 0) -> int:
    """One's-complement sum of 16-bit big-endian words, folded to 16 bits (RFC 1071)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~sum16(data) & 0xFFFF

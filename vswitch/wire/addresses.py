"""MAC and IPv4 address conversions between the text users type and the bytes frames carry."""
from __future__ import annotations

from ipaddress import IPv4Address

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def is_multicast_mac(raw: bytes) -> bool:
    """Broadcast is a multicast address too: the group bit is the low bit of the first byte."""
    return bool(raw[0] & 1)


def ip_text(raw: bytes) -> str:
    if len(raw) == 4:  # formatted directly: IPv4Address costs a dozen Python calls
        return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])
    return str(IPv4Address(bytes(raw)))  # raises, naming the bad length


def ip_bytes(addr: IPv4Address | str) -> bytes:
    return IPv4Address(addr).packed

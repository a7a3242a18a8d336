"""The decisions a pipeline run ends in. Stages return them; the switch turns them into Transmits."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the received frame, unchanged, out of these ports."""

    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reply:
    """Send a frame the switch made itself (an ARP or ICMP answer), without virtio-net header."""

    port: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    stage: str
    reason: str  # the counter's kebab-case name, e.g. "spoofed-ip"


Action = Forward | Reply | Drop

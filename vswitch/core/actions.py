"""The decisions a pipeline run ends in. Stages return them; the switch turns them into Transmits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vswitch.core.port_spec import PortSpec


@dataclass(frozen=True, slots=True)
class Forward:
    """Send a frame framed like the ingress port's (virtio-net header included when it has one)
    out of these ports: the received frame itself, or ``data`` when a stage rewrote it."""

    ports: tuple[int, ...]
    data: bytes | None = None
    framing: PortSpec | None = None  # the PortSpec whose framing ``data`` follows; None: the ingress port's


@dataclass(frozen=True, slots=True)
class Hold:
    """The packet waits: in a neighbour queue until its next hop's MAC is known, or, a later
    fragment that came first, until its datagram's first fragment has passed."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Send a frame the switch made itself (an ARP or ICMP answer), without virtio-net header."""

    port: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    stage: str
    reason: str  # the counter's kebab-case name, e.g. "spoofed-ip"


Action = Forward | Reply | Drop | Hold

"""Packet capture on a port: the next N frames it receives, sends, or both, kept for a reader.

The core only keeps frames (time, original length, the first ``snaplen`` bytes of the Ethernet
frame without its virtio-net header); turning them into a pcap file is the client's business.
Recording costs nothing while no capture is armed: the switch checks one empty dict per frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DIRECTIONS = ("rx", "tx", "both")
MAX_PENDING = 10_000


@dataclass
class _Capture:
    remaining: int
    rx: bool
    tx: bool
    snaplen: int
    records: list[dict] = field(default_factory=list)


class Captures:
    def __init__(self) -> None:
        self.active: dict[int, _Capture] = {}

    def arm(self, port_id: int, count: int, direction: str = "both", snaplen: int = 65535) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        if not 1 <= count <= MAX_PENDING:
            raise ValueError(f"count must be from 1 to {MAX_PENDING}")
        if not 64 <= snaplen <= 65535 + 14:
            raise ValueError("snaplen must be from 64 to 65549 bytes")
        self.active[port_id] = _Capture(count, direction != "tx", direction != "rx", snaplen)

    def disarm(self, port_id: int) -> None:
        self.active.pop(port_id, None)

    def take(self, port_id: int) -> list[dict]:
        capture = self.active.get(port_id)
        if capture is None:
            return []
        taken, capture.records = capture.records, []
        if capture.remaining == 0:
            del self.active[port_id]
        return taken

    def record(self, port_id: int, now: float, data: bytes, l2_offset: int,
               direction: str) -> None:
        capture = self.active.get(port_id)
        if capture is None or capture.remaining == 0:
            return
        if not (capture.rx if direction == "rx" else capture.tx):
            return
        capture.remaining -= 1
        capture.records.append({"time": now, "direction": direction,
                                "length": len(data) - l2_offset,
                                "data": bytes(data[l2_offset: l2_offset + capture.snaplen])})

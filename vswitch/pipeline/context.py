"""What a stage sees: the packet being handled and the environment (tables, time, counters)."""
from __future__ import annotations

import enum
from types import ModuleType
from typing import Any

from vswitch.core.counters import StageCounters, counter_name
from vswitch.core.ports import PortSpec
from vswitch.core.trace import Trace
from vswitch.core.verdict import Drop
from vswitch.tables.fdb import Fdb, FdbEntry


class Packet:
    """One received frame and what the stages have learned about it so far.

    ``data`` is the buffer exactly as read from the port; ``l2`` is where the Ethernet header starts
    (after the virtio-net header, if the port has one). Parsed headers are construct Containers.
    """

    __slots__ = ("port", "data", "l2", "vnet", "eth", "l3", "arp", "ip", "trace",
                 "cacheable", "src_entry", "dst_entry")

    def __init__(self, port: PortSpec, data: bytes, l2: int, trace: Trace | None = None):
        self.port = port
        self.data = data
        self.l2 = l2
        self.l3 = l2 + 14
        self.vnet: Any = None
        self.eth: Any = None
        self.arp: Any = None
        self.ip: Any = None
        self.trace = trace
        # Set by the stage that makes a decision depending only on the flow key and on tables
        # covered by the generation number; the switch then memoises it in the flow cache.
        self.cacheable = False
        self.src_entry: FdbEntry | None = None
        self.dst_entry: FdbEntry | None = None

    @property
    def frame(self) -> bytes:
        """The Ethernet frame without the virtio-net header (a copy; for slow-path use only)."""
        return self.data[self.l2:]


class Env:
    """Tables and settings the stages consult. ``commit`` is False for dry-run traces, which must
    leave every table as it was."""

    def __init__(self, *, fdb: Fdb, ports: dict[int, PortSpec], gateway_ip: bytes,
                 gateway_mac: bytes, accel: ModuleType, counters: StageCounters,
                 commit: bool = True):
        self.fdb = fdb
        self.ports = ports
        self.gateway_ip = gateway_ip
        self.gateway_mac = gateway_mac
        self.accel = accel
        self.counters = counters
        self.commit = commit
        self.now = 0.0

    def count(self, member: enum.Enum, n: int = 1) -> None:
        self.counters.add(member, n)

    def drop(self, pkt: Packet, member: enum.Enum) -> tuple[Drop]:
        self.counters.add(member)
        stage = self.counters.stage_of(member)
        reason = counter_name(member)
        if pkt.trace is not None:
            pkt.trace.note(stage, f"drop: {member.value}")
        return (Drop(stage, reason),)

    def port_name(self, port_id: int) -> str:
        spec = self.ports.get(port_id)
        return spec.name if spec else f"#{port_id}"

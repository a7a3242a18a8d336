"""Counters of the switch: per stage, per port, and the dispositions that partition what ports received.

Each stage declares an enum whose members are its counters and whose values are descriptions a user
can read without the source. Counting is a dict increment keyed by the member's ``id`` (members are
singletons; an enum member's own hash is a Python-level call), so stages pay neither string
formatting nor enum hashing on the packet path. Every declared member has its key from the start,
so an increment is two dict operations done in C and never a miss.
"""
from __future__ import annotations

import enum
from collections import Counter as _Tally
from dataclasses import dataclass, field


def counter_name(member: enum.Enum) -> str:
    return member.name.lower().replace("_", "-")


class Disposition(enum.Enum):
    """Where each received frame ended. Every received frame gets exactly one, so they sum to rx."""

    CACHE_HIT = "forwarded by the flow cache without running the pipeline"
    FORWARDED = "forwarded by the pipeline (a flow-cache miss)"
    LOCAL = "consumed by the switch itself (ARP or ICMP for the gateway)"
    QUEUED = ("held until the next hop's MAC is resolved, or, a later fragment that came first, "
              "until its first fragment passes (then sent, or dropped: see ip4-neighbor, "
              "ip4-conntrack)")
    DROPPED = "dropped; the stage counters and the port's drop reasons say why"


@dataclass
class PortCounters:
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_drops: _Tally = field(default_factory=_Tally)  # reason -> count, for frames received here
    tx_drops: _Tally = field(default_factory=_Tally)  # reason -> count, for frames meant for here

    def snapshot(self) -> dict:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_drops": dict(sorted(self.rx_drops.items())),
            "tx_drops": dict(sorted(self.tx_drops.items())),
        }


class StageCounters:
    """Counts keyed by enum member; the member's class says which stage it belongs to."""

    def __init__(self, stages: dict[str, type[enum.Enum]]):
        self._stage_of = {counters: name for name, counters in stages.items()}
        self._counts: dict[int, int] = {id(m): 0 for counters in stages.values() for m in counters}
        self._stages = stages

    def add(self, member: enum.Enum, n: int = 1) -> None:
        self._counts[id(member)] += n

    def get(self, member: enum.Enum) -> int:
        return self._counts.get(id(member), 0)

    def stage_of(self, member: enum.Enum) -> str:
        return self._stage_of[type(member)]

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            stage: {counter_name(m): self._counts.get(id(m), 0) for m in counters}
            for stage, counters in self._stages.items()
        }

    def descriptions(self) -> dict[str, dict[str, str]]:
        return {stage: {counter_name(m): m.value for m in counters}
                for stage, counters in self._stages.items()}

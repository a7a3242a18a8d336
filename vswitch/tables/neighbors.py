"""The neighbour table: next-hop IPv4 addresses to MACs, resolved by ARP, per segment.

Theory of operation (a small version of Linux's neighbour state machine)
-----------------------------------------------------------------------
* ``resolve`` on an unknown address creates an INCOMPLETE entry, queues the packet and asks the
  caller to send an ARP request. Further packets queue behind it up to ``queue_len``; beyond that
  the oldest is dropped and counted (Linux's ``unres_qlen`` behaviour), so a dead next hop cannot
  hold unbounded memory.
* Requests are repeated every ``retrans_time`` seconds. After ``max_probes`` unanswered requests the
  entry fails: it is removed and its queued packets are handed back so the router can answer each
  sender with ICMP host unreachable.
* An ARP reply or request from the address (``confirm``) makes the entry REACHABLE and releases the
  queue. A REACHABLE entry becomes STALE after ``reachable_time``: still used, but the next use asks
  for a unicast re-probe (at most one per ``retrans_time``). A STALE entry not confirmed within
  ``stale_time`` is removed.
* ``generation`` changes when a MAC changes or an entry goes away, so cached routing decisions
  that carry a neighbour's MAC expire with it.
* Entries are keyed by 6 bytes (segment, IPv4 address) in the native exact-match table. When it is
  full, a new next hop cannot be resolved: its packet is refused (``resolve`` says FULL) rather
  than evicting a live neighbour.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vswitch.accel import pure as _pure
from vswitch.tables.object_table import ObjectTable
from vswitch.tables.shared_slots import StampSlots


class NeighborState(enum.Enum):
    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"


_NOT_REACHABLE = float("-inf")


class Neighbor:
    """A next hop. While it is REACHABLE, the time it was confirmed is also kept in the table's
    ``StampSlots`` (slot ``slot``; -inf in any other state), where the C datapath checks a
    routed hit's neighbour as ``now - since < reachable_time``: the same test as the pipeline's
    REACHABLE-and-recent, one float for C to read."""

    __slots__ = ("segment", "ip", "mac", "_state", "_confirmed", "probes", "next_probe", "queue",
                 "slot", "_stamps")

    def __init__(self, segment: int, ip: bytes, now: float, stamps: StampSlots | None = None):
        self.segment = segment
        self.ip = ip
        self.mac: bytes | None = None
        self._stamps = stamps.stamps if stamps is not None else None
        self.slot = stamps.take() if stamps is not None else -1
        self._state = NeighborState.INCOMPLETE
        self._confirmed = now
        self._publish()
        self.probes = 0
        self.next_probe = now
        self.queue: deque[Any] = deque()

    @property
    def state(self) -> NeighborState:
        return self._state

    @state.setter
    def state(self, value: NeighborState) -> None:
        self._state = value
        self._publish()

    @property
    def confirmed(self) -> float:
        return self._confirmed

    @confirmed.setter
    def confirmed(self, value: float) -> None:
        self._confirmed = value
        self._publish()

    def _publish(self) -> None:
        if self.slot >= 0:
            self._stamps[self.slot] = (self._confirmed if self._state is NeighborState.REACHABLE
                                       else _NOT_REACHABLE)

    def detach(self) -> int:
        """Take the entry out of the shared slots; returns the slot it held."""
        if self.slot >= 0:
            self._stamps[self.slot] = _NOT_REACHABLE
        slot, self.slot = self.slot, -1
        return slot


class ResolveResult(enum.Enum):
    FULL = "full"  # not queued: the table has no room for another neighbour
    PROBE = "probe"  # queued; send an ARP request now
    QUEUED = "queued"  # queued behind an outstanding request
    OVERFLOW = "overflow"  # queued, and the oldest queued packet was dropped


@dataclass(frozen=True)
class NeighborTimers:
    reachable_time: float = 30.0
    stale_time: float = 300.0
    retrans_time: float = 1.0
    max_probes: int = 3
    queue_len: int = 16


def _key(segment: int, ip: bytes) -> bytes:
    return segment.to_bytes(2, "big") + ip


class NeighborTable:
    def __init__(self, timers: NeighborTimers = NeighborTimers(), accel: ModuleType = _pure,
                 capacity: int = 16384):
        self.timers = timers
        self._entries: ObjectTable[Neighbor] = ObjectTable(accel, 6, capacity)
        # Reachable neighbours' confirmation times, shared with the C datapath.
        self.stamps = StampSlots(capacity)
        self.generation = 0
        self.overflow_drops = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, segment: int, ip: bytes) -> Neighbor | None:
        return self._entries.get(_key(segment, ip))

    def usable(self, segment: int, ip: bytes) -> Neighbor | None:
        entry = self._entries.get(_key(segment, ip))
        return entry if entry is not None and entry.mac is not None else None

    def wants_probe(self, entry: Neighbor, now: float) -> bool:
        """For an entry in use: move it to STALE when its confirmation is old, and say whether a
        unicast re-probe is due. Callers send the probe; this only keeps the books."""
        if entry.state is NeighborState.REACHABLE and now - entry.confirmed >= self.timers.reachable_time:
            entry.state = NeighborState.STALE
        if entry.state is NeighborState.STALE and now >= entry.next_probe:
            entry.next_probe = now + self.timers.retrans_time
            return True
        return False

    def resolve(self, segment: int, ip: bytes, item: Any, now: float) -> tuple[ResolveResult, Any]:
        """Queue ``item`` until ``ip`` resolves. Returns the result and a dropped item (or None)."""
        key = _key(segment, ip)
        entry = self._entries.get(key)
        if entry is None:
            entry = Neighbor(segment, ip, now, self.stamps)
            entry.probes = 1
            entry.next_probe = now + self.timers.retrans_time
            entry.queue.append(item)
            if not self._entries.put(key, entry):
                self.stamps.release(entry.detach())
                return ResolveResult.FULL, item
            return ResolveResult.PROBE, None
        dropped = None
        if len(entry.queue) >= self.timers.queue_len:
            dropped = entry.queue.popleft()
            self.overflow_drops += 1
        entry.queue.append(item)
        return (ResolveResult.OVERFLOW if dropped is not None else ResolveResult.QUEUED), dropped

    def confirm(self, segment: int, ip: bytes, mac: bytes, now: float,
                create: bool = True) -> list[Any]:
        """Record that ``ip`` is at ``mac``; returns the packets that were waiting for it."""
        key = _key(segment, ip)
        entry = self._entries.get(key)
        if entry is None:
            if not create:
                return []
            entry = Neighbor(segment, ip, now, self.stamps)
            if not self._entries.put(key, entry):
                self.stamps.release(entry.detach())
                return []
        if entry.mac is not None and entry.mac != mac:
            self.generation += 1
        entry.mac = mac
        entry.state = NeighborState.REACHABLE
        entry.confirmed = now
        entry.probes = 0
        entry.next_probe = now
        released = list(entry.queue)
        entry.queue.clear()
        return released

    def handle_timer(self, now: float) -> tuple[list[Neighbor], list[tuple[Neighbor, list[Any]]]]:
        """Returns (entries to send another broadcast request for, failed entries with their queues)."""
        probes: list[Neighbor] = []
        failed: list[tuple[Neighbor, list[Any]]] = []
        for entry in list(self._entries.values()):
            key = _key(entry.segment, entry.ip)
            if entry.state is NeighborState.INCOMPLETE:
                if now < entry.next_probe:
                    continue
                if entry.probes >= self.timers.max_probes:
                    self._remove(key, entry)
                    failed.append((entry, list(entry.queue)))
                    continue
                entry.probes += 1
                entry.next_probe = now + self.timers.retrans_time
                probes.append(entry)
            elif now - entry.confirmed >= self.timers.stale_time:
                self._remove(key, entry)
                self.generation += 1
            elif (entry.state is NeighborState.REACHABLE
                  and now - entry.confirmed >= self.timers.reachable_time):
                entry.state = NeighborState.STALE
        return probes, failed

    def next_deadline(self) -> float | None:
        times = []
        for entry in self._entries.values():
            if entry.state is NeighborState.INCOMPLETE:
                times.append(entry.next_probe)
            else:
                times.append(entry.confirmed + self.timers.stale_time)
        return min(times) if times else None

    def flush_segment(self, segment: int) -> int:
        gone = [e for e in self._entries.values() if e.segment == segment]
        for entry in gone:
            self._remove(_key(entry.segment, entry.ip), entry)
        if gone:
            self.generation += 1
        return len(gone)

    def entries(self) -> list[Neighbor]:
        return list(self._entries.values())

    def _remove(self, key: bytes, entry: Neighbor) -> None:
        self._entries.pop(key)
        self.stamps.release(entry.detach())

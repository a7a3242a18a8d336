"""The forwarding database of the L2 switch: which port a MAC address was last seen on.

Theory of operation
-------------------
* Each segment is its own broadcast domain, so entries are keyed by (segment, MAC): the same MAC
  may legitimately appear in two segments. The key is 8 bytes (segment, MAC) in the native
  exact-match table; a full table refuses new MACs like the per-port limit does.
* A frame's source MAC is learned on the port it arrived on (``learn``). Learning the same MAC on
  another port is a *move*: the entry follows the station.
* An entry unused for ``aging`` seconds is forgotten. ``lookup`` treats an aged entry as absent at
  once, so correctness never waits for the timer; ``expire`` only reclaims memory.
* A port may hold at most ``mac_limit`` learned MACs; a frame that would exceed it is not learned
  and the caller drops it (a flooding attack must not evict everyone else's entries).
* Aging runs off a ``DeadlineHeap``, which is lazy about refreshes: learning an existing MAC only
  moves ``last_seen`` forward, so a heap item can only be early, never late. When an early item
  reaches the top it is moved to the entry's real deadline. ``expire`` and ``next_expiry``
  cost O(log n) per entry that ages or is refreshed, not a scan of the table every tick.
* ``generation`` changes whenever an existing decision could change: a move, an expiry, a flush.
  The flow cache keys its entries to it. Learning a brand-new MAC does not bump it: no cached
  decision ever depended on that MAC being unknown, because floods are not cached.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from types import ModuleType

from vswitch.accel import pure as _pure
from vswitch.tables.deadlines import DeadlineHeap
from vswitch.tables.object_table import ObjectTable
from vswitch.tables.shared_slots import StampSlots


class LearnResult(enum.Enum):
    NEW = "new"
    REFRESHED = "refreshed"
    MOVED = "moved"
    LIMIT = "limit"


class FdbEntry:
    """A learned MAC. Its ``last_seen`` lives in the table's ``StampSlots`` (slot ``slot``), where
    the C datapath refreshes it on cache hits; an entry out of its table keeps the last value."""

    __slots__ = ("segment", "mac", "port", "slot", "_stamps", "_detached")

    def __init__(self, segment: int, mac: bytes, port: int, last_seen: float,
                 stamps: StampSlots | None = None):
        self.segment = segment
        self.mac = mac
        self.port = port
        self._stamps = stamps.stamps if stamps is not None else None
        self.slot = stamps.take() if stamps is not None else -1
        self._detached = last_seen
        if self.slot >= 0:
            self._stamps[self.slot] = last_seen

    @property
    def last_seen(self) -> float:
        return self._stamps[self.slot] if self.slot >= 0 else self._detached

    @last_seen.setter
    def last_seen(self, value: float) -> None:
        if self.slot >= 0:
            self._stamps[self.slot] = value
        else:
            self._detached = value

    def detach(self) -> int:
        """Take the entry out of the shared slots, keeping its last sighting; returns the slot."""
        slot, self._detached, self.slot = self.slot, self.last_seen, -1
        return slot


@dataclass(frozen=True)
class FdbStatistics:
    entries: int
    generation: int
    aging: float
    mac_limit: int


def _key(segment: int, mac: bytes) -> bytes:
    return segment.to_bytes(2, "big") + mac


class Fdb:
    def __init__(self, aging: float, mac_limit: int, accel: ModuleType = _pure,
                 capacity: int = 65536):
        self.aging = aging
        self.mac_limit = mac_limit
        self.generation = 0
        self._entries: ObjectTable[FdbEntry] = ObjectTable(accel, 8, capacity)
        # Each entry's last sighting, shared with the C datapath (see ``shared_slots``).
        self.stamps = StampSlots(capacity)
        self._per_port: dict[int, int] = {}
        self._deadlines: DeadlineHeap[FdbEntry] = DeadlineHeap(
            lambda entry: entry.last_seen + self.aging)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, segment: int, mac: bytes, now: float) -> FdbEntry | None:
        entry = self._entries.get(_key(segment, mac))
        if entry is None or now - entry.last_seen >= self.aging:
            return None
        return entry

    def learn(self, segment: int, mac: bytes, port: int,
              now: float) -> tuple[LearnResult, FdbEntry | None]:
        entry = self._entries.get(_key(segment, mac))
        if entry is not None and now - entry.last_seen >= self.aging:
            self._remove(entry)
            entry = None
        if entry is None:
            if self._per_port.get(port, 0) >= self.mac_limit:
                return LearnResult.LIMIT, None
            entry = FdbEntry(segment, mac, port, now, self.stamps)
            if not self._entries.put(_key(segment, mac), entry):
                self.stamps.release(entry.detach())
                return LearnResult.LIMIT, None
            self._per_port[port] = self._per_port.get(port, 0) + 1
            self._deadlines.schedule(entry, now + self.aging)
            return LearnResult.NEW, entry
        if entry.port != port:
            if self._per_port.get(port, 0) >= self.mac_limit:
                return LearnResult.LIMIT, None
            self._per_port[entry.port] -= 1
            self._per_port[port] = self._per_port.get(port, 0) + 1
            entry.port = port
            entry.last_seen = now
            self.generation += 1
            return LearnResult.MOVED, entry
        entry.last_seen = now
        return LearnResult.REFRESHED, entry

    def would_learn(self, segment: int, mac: bytes, port: int, now: float) -> LearnResult:
        """What ``learn`` would do, without doing it (for dry-run traces)."""
        entry = self.lookup(segment, mac, now)
        if entry is not None and entry.port == port:
            return LearnResult.REFRESHED
        if self._per_port.get(port, 0) >= self.mac_limit:
            return LearnResult.LIMIT
        return LearnResult.MOVED if entry is not None else LearnResult.NEW

    def expire(self, now: float) -> int:
        removed = 0
        for entry in self._deadlines.pop_due(now):
            if now - entry.last_seen < self.aging:
                # ``last_seen + aging <= now`` and yet ``lookup`` still finds it: float rounding.
                # ``lookup`` decides; the entry goes at the next tick.
                self._deadlines.schedule(entry, entry.last_seen + self.aging)
                continue
            self._remove(entry)
            removed += 1
        return removed

    def flush_port(self, port: int) -> int:
        gone = [e for e in self._entries.values() if e.port == port]
        for entry in gone:
            self._remove(entry)
        return len(gone)

    def next_expiry(self) -> float | None:
        return self._deadlines.next_deadline()

    def entries(self) -> list[FdbEntry]:
        return list(self._entries.values())

    def count_on_port(self, port: int) -> int:
        return self._per_port.get(port, 0)

    def statistics(self) -> FdbStatistics:
        return FdbStatistics(len(self._entries), self.generation, self.aging, self.mac_limit)

    def _remove(self, entry: FdbEntry) -> None:
        self._entries.pop(_key(entry.segment, entry.mac))
        self._per_port[entry.port] -= 1
        self.generation += 1
        self._deadlines.discard(entry)
        self.stamps.release(entry.detach())

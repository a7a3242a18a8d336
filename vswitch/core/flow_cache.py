"""The flow cache: the pipeline's decisions memoised per flow, as in Open vSwitch.

Theory of operation
-------------------
* Routed decisions are cached too: the entry then carries the Ethernet rewrite, and each hit
  decrements TTL and updates the header checksum itself. A hit goes back to the slow path when the
  packet's TTL would expire, when it does not fit the egress MTU, or when the neighbour's
  confirmation has grown old (so the pipeline re-probes it): the pipeline owns every exception.
* Translated connections (services, masquerade) are cached per connection: under the flow key a
  marker says "per connection", and a second key adds the protocol and the L4 ports (for ICMP
  echo, the type and identifier). A hit runs the stateful steps itself — the conntrack update and
  the NAT rewrite with its checksums — but only for the plain case: TCP in ESTABLISHED carrying
  just ACK (no SYN, FIN or RST), UDP, echo. Every state change goes through the pipeline.
* Packets to another node's pods are cached too (routed, or translated and routed): the entry keeps
  the encapsulation, and a hit wraps the routed packet in VXLAN with the function vxlan-encap uses.
  GSO super-frames, which cannot cross the tunnel, always go to the pipeline. What arrives through
  the tunnel is cached in two steps: under the outer key a marker says "VXLAN for us from a known
  node"; a hit checks the outer headers as vxlan-decap would (declining anything unusual: a
  UDP checksum to verify, an ECN mark to carry, a GSO header) and looks the inner frame up under
  its own key, where the inner packet's routed decision is cached as any other.
* The key is the ingress port plus the flow key (destination and source MAC, ethertype, IPv4 source
  and destination) taken by the hand-written extractor in ``vswitch.accel``. The extractor returns
  no key for anything that is not a well-formed, unfragmented IPv4 frame, so everything the
  pipeline might drop for its shape still goes through the pipeline.
* An entry records the output port, the FDB entries the decision rested on, and the generation of
  the tables at the time. Any change that could alter a decision (a MAC move or expiry, a port added
  or removed) bumps the generation, and an entry of an older generation counts as a miss. Nobody
  hunts for entries to delete.
* A hit refreshes the source MAC's FDB entry, exactly as l2-learn would, so a MAC never ages out
  while its traffic flows through the cache; a hit whose destination entry has aged is a miss, as
  the FDB lookup would be.
* The cache is bounded, and never emptied at once because it is full: that would send every
  running flow back to the pipeline together, and a pod opening connections as fast as it can
  (a SYN flood at a ClusterIP, a scan) would keep doing it. Instead the entries of flows that
  ended go, as in Open vSwitch's revalidators, in two ways:

  - a sweep every ``FLOW_IDLE`` seconds (``expire``, from the switch's timer, with the time
    passed in) removes the entries nobody looked up since the sweep before (counted ``swept``)
    and marks the others idle: a flow that stopped is forgotten after one to two periods; an
    entry of an old generation, which no lookup marks, goes at the next;
  - a full cache makes room for a new entry by evicting one (counted ``evictions``), chosen by a
    clock (second chance): a hand goes round the slots, marking an entry looked up since its
    last pass idle and passing on, and evicts the first entry it finds idle. A flow in use is
    only evicted when every entry was used since the hand last passed.

  A lookup marks an entry used whether the fast path then replays it or declines the packet: the
  flow is alive either way. The C datapath (native/datapath.c) keeps the same slots, free list
  and hand, and ``NativeFlowCache.expire`` sweeps it on the same schedule. This class is its
  twin slot for slot, but not entry for entry: C installs a marker and an entry where this dict
  may already hold them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vswitch.tables.fdb import FdbEntry
from vswitch.tables.neighbors import Neighbor


class CacheEntry:
    """A memoised decision. ``rewrite`` is None for a switched frame; for a routed one it holds the
    new Ethernet destination and source, and the entry also remembers the neighbour it relied on
    and the egress MTU, which the fast path checks per packet (sizes and TTLs vary within a flow)."""

    __slots__ = ("generation", "out_port", "src", "dst", "rewrite", "neighbor", "mtu",
                 "per_connection", "ct", "direction", "target", "encap", "decap", "slot", "used")

    def __init__(self, generation: int, out_port: int, src: FdbEntry | None,
                 dst: FdbEntry | None, rewrite: bytes | None = None,
                 neighbor: Neighbor | None = None, mtu: int = 0, per_connection: bool = False,
                 ct: Any = None, direction: Any = None, target: Any = None, encap: Any = None,
                 decap: Any = None):
        self.generation = generation
        self.out_port = out_port
        self.src = src
        self.dst = dst
        self.rewrite = rewrite
        self.neighbor = neighbor
        self.mtu = mtu
        # A marker under a flow key: the flow belongs to translated connections, look up the
        # connection key instead. Under a connection key: the conntrack entry and its direction,
        # and the tuple the packet must leave with.
        self.per_connection = per_connection
        self.ct = ct
        self.direction = direction
        self.target = target
        # For a packet to another node: its ``pipeline.tunnel.Encapsulation``; ``rewrite`` is then
        # the outer Ethernet destination and source.
        self.encap = encap
        # A marker under the key of VXLAN from another node (``fast_path.TunnelEnd``): open the
        # packet and look its inner frame up under ``fast_path.INNER_PREFIX`` + its own key.
        self.decap = decap
        # Where the cache keeps it, and whether it was looked up since the sweep or the clock's
        # hand last passed it (see the module's docstring).
        self.slot = -1
        self.used = True


@dataclass(frozen=True)
class FlowCacheStatistics:
    entries: int
    capacity: int
    hits: int
    misses: int
    installs: int
    flushes: int
    evictions: int
    swept: int


# Seconds between two sweeps: an entry nobody looks up for 10 to 20 s is removed (Open vSwitch's
# default max-idle is 10 s).
FLOW_IDLE = 10.0


class SweepSchedule:
    """When the next sweep is due: ``FLOW_IDLE`` seconds after the timer first looks, then
    every ``FLOW_IDLE`` seconds (counted from when the last one ran: a timer that was late does
    not sweep twice in a row)."""

    def __init__(self) -> None:
        self.next_sweep: float | None = None

    def due(self, now: float) -> bool:
        if self.next_sweep is None or now < self.next_sweep:
            if self.next_sweep is None:
                self.next_sweep = now + FLOW_IDLE
            return False
        self.next_sweep = now + FLOW_IDLE
        return True


class FlowCache:
    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self.entries: dict[bytes, CacheEntry] = {}
        self.hits = 0
        self.misses = 0
        self.installs = 0
        self.flushes = 0
        self.evictions = 0
        self.swept = 0
        self._keys: list[bytes | None] = []  # by slot, the slots taken since the last flush
        self._free: list[int] = []  # slots the sweep freed, taken again first (last freed first)
        self._hand = 0
        self._schedule = SweepSchedule()

    def install(self, key: bytes, entry: CacheEntry) -> None:
        """``entry`` under ``key``, replacing the entry there in its slot; in a full cache, in
        the slot of an entry it evicts. A cache of capacity 0 holds nothing."""
        if self.capacity <= 0:
            return
        old = self.entries.get(key)
        if old is not None:
            slot = old.slot
        elif self._free:
            slot = self._free.pop()
        elif len(self._keys) < self.capacity:
            slot = len(self._keys)
            self._keys.append(None)
        else:
            slot = self._evict()
        self._keys[slot] = key
        entry.slot = slot
        entry.used = True
        self.entries[key] = entry
        self.installs += 1

    def _evict(self) -> int:
        """The slot of the first idle entry the clock's hand reaches, emptied (every slot is
        taken: the cache is full)."""
        while True:
            slot = self._hand
            self._hand = (slot + 1) % self.capacity
            key = self._keys[slot]
            assert key is not None, "a full cache has no free slot"
            entry = self.entries[key]
            if entry.used:
                entry.used = False
                continue
            del self.entries[key]
            self.evictions += 1
            return slot

    def sweep(self) -> int:
        """Removes the entries not looked up since the sweep before, marks the others idle: the
        number removed. Due every ``FLOW_IDLE`` seconds."""
        swept = 0
        for slot, key in enumerate(self._keys):
            if key is None:
                continue
            entry = self.entries[key]
            if entry.used:
                entry.used = False
                continue
            del self.entries[key]
            self._keys[slot] = None
            self._free.append(slot)
            swept += 1
        self.swept += swept
        return swept

    def expire(self, now: float) -> int:
        """The timer's call: a sweep when one is due (see ``SweepSchedule``), the number of
        entries it removed."""
        return self.sweep() if self._schedule.due(now) else 0

    @property
    def next_sweep(self) -> float | None:
        """When the next sweep is due (None until the timer first looked)."""
        return self._schedule.next_sweep

    def clear(self) -> None:
        """Every entry, at once (counted in ``flushes``)."""
        self.entries.clear()
        self._keys.clear()
        self._free.clear()
        self._hand = 0
        self.flushes += 1

    def statistics(self) -> FlowCacheStatistics:
        return FlowCacheStatistics(len(self.entries), self.capacity, self.hits, self.misses,
                                   self.installs, self.flushes, self.evictions, self.swept)

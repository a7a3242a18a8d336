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
* The cache is bounded. When full it is emptied at once (counted): entries are cheap to rebuild and
  a full cache means the traffic mix changed.
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
                 "per_connection", "ct", "direction", "target", "encap", "decap")

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


@dataclass(frozen=True)
class FlowCacheStatistics:
    entries: int
    capacity: int
    hits: int
    misses: int
    installs: int
    flushes: int


class FlowCache:
    def __init__(self, capacity: int = 65536):
        self.capacity = capacity
        self.entries: dict[bytes, CacheEntry] = {}
        self.hits = 0
        self.misses = 0
        self.installs = 0
        self.flushes = 0

    def install(self, key: bytes, entry: CacheEntry) -> None:
        if len(self.entries) >= self.capacity and key not in self.entries:
            self.entries.clear()
            self.flushes += 1
        self.entries[key] = entry
        self.installs += 1

    def clear(self) -> None:
        self.entries.clear()

    def statistics(self) -> FlowCacheStatistics:
        return FlowCacheStatistics(len(self.entries), self.capacity, self.hits, self.misses,
                                   self.installs, self.flushes)

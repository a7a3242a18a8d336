"""The routing table (FIB): IPv4 prefixes to an egress segment and next hop, by longest prefix.

Theory of operation
-------------------
* Routes live in a Python list; the longest-prefix-match structure (``accel.Lpm4``, C or its pure
  twin) maps an address to the index of the winning route. Deleting a route frees its slot for
  reuse, and the LPM structure restores the next less specific route by itself.
* A *connected* route says "the destination is on this segment": its next hop is the destination
  itself. A *static* route names a gateway (``via``) on a connected segment; it is resolved to that
  segment when it is added, so a lookup is one LPM step.
* An *overlay* route sends a remote node's pod CIDR through the VXLAN tunnel: ``via`` is the node's
  underlay address, the outer destination; ``segment`` is the uplink's, which carries the outer
  packet (see ``tables.overlay``).
* Adding a route with the prefix of an existing one replaces it (the last writer wins, as with
  ``ip route replace``). Every change bumps ``generation`` so cached forwarding decisions expire.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import ModuleType


class RouteKind(enum.Enum):
    CONNECTED = "connected"
    STATIC = "static"
    OVERLAY = "overlay"  # a remote node's pod CIDR: encapsulated to ``via``, its underlay address


@dataclass(frozen=True)
class Route:
    prefix: IPv4Network
    kind: RouteKind
    segment: int  # egress segment
    via: IPv4Address | None = None  # next hop; None: the destination is on the segment
    origin: str = ""  # where the route came from, for `vswitchctl routes` and traces

    def next_hop(self, dst: IPv4Address) -> IPv4Address:
        return self.via if self.via is not None else dst

    def describe(self) -> str:
        how = f" via {self.via}" if self.via is not None else ""
        return f"{self.prefix} {self.kind.value}{how}"


class RouteError(ValueError):
    pass


class Fib:
    def __init__(self, accel: ModuleType, max_routes: int = 131072):
        self._lpm = accel.Lpm4(max_routes)
        self._routes: list[Route | None] = []
        self._index: dict[IPv4Network, int] = {}
        self._free: list[int] = []
        self.generation = 0

    def __len__(self) -> int:
        return len(self._index)

    def add(self, route: Route) -> None:
        slot = self._index.get(route.prefix)
        if slot is None:
            slot = self._free.pop() if self._free else len(self._routes)
            if slot == len(self._routes):
                self._routes.append(None)
        self._routes[slot] = route
        self._index[route.prefix] = slot
        self._lpm.add(int(route.prefix.network_address), route.prefix.prefixlen, slot)
        self.generation += 1

    def delete(self, prefix: IPv4Network) -> bool:
        slot = self._index.pop(prefix, None)
        if slot is None:
            return False
        self._lpm.delete(int(prefix.network_address), prefix.prefixlen)
        self._routes[slot] = None
        self._free.append(slot)
        self.generation += 1
        return True

    def lookup(self, addr: int) -> Route | None:
        slot = self._lpm.lookup(addr)
        return None if slot is None else self._routes[slot]

    def get(self, prefix: IPv4Network) -> Route | None:
        slot = self._index.get(prefix)
        return None if slot is None else self._routes[slot]

    def routes(self) -> list[Route]:
        return sorted((r for r in self._routes if r is not None),
                      key=lambda r: (-r.prefix.prefixlen, int(r.prefix.network_address)))

    def matches(self, addr: int) -> list[Route]:
        """Every route containing ``addr``, most specific first: what a trace shows to explain
        why the longest prefix won. A linear scan, for traces only."""
        found = [r for r in self._routes
                 if r is not None and (addr & int(r.prefix.netmask)) == int(r.prefix.network_address)]
        return sorted(found, key=lambda r: -r.prefix.prefixlen)

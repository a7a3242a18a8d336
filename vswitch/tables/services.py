"""The service table: which destinations are service frontends, their ready backends, and the
choice of a backend for a new connection.

Theory of operation
-------------------
* A *frontend* is a (protocol, address, port) a client may send to (a cluster IP, an external IP
  or a node address with its port); a *service port* is (service key, protocol, port) with its
  ready backends, sorted by (ip, port). How the desired state becomes those is
  ``service_programming.py``; the values handed out are in ``service_types.py``. All frontends of
  every service live in one dict, so ``match`` costs the same with ten services as with ten
  thousand (kube-proxy's iptables mode walks a chain per service).
* ``program`` rebuilds everything from the desired state and reports, per service port, the
  backends that went away and those that appeared: the connection tracker must flush the entries
  that point at a vanished backend at once, or a UDP client with a fixed source port keeps talking
  to a dead pod. Frontends that disappeared are reported too, because entries made through them are
  just as stale. ``generation`` changes only when something did, so the caller can run ``program``
  on every pod or service event and let cached decisions live when nothing moved.
* Traffic policy narrows the candidates to local backends: ``internal_traffic_policy`` Local for
  the cluster IP, ``external_traffic_policy`` Local for node ports and external IPs reached from
  outside. Traffic from inside the cluster to a node port or external IP may use any backend, as in
  kube-proxy, because the client's source address is not at stake there.
* Session affinity ClientIP pins a (service port, client IP) to a backend until
  ``affinity_timeout`` seconds pass without a new connection. An entry whose backend is no longer a
  candidate is ignored and replaced, so a client never sticks to a backend that is gone or that the
  traffic policy forbids. Entries are dropped when their backend goes away or the service stops
  using affinity, so switching affinity off spreads clients again at once.
* The choice is ``rng.choice`` for "random" and a Maglev table (see ``maglev.py``) indexed by the
  flow hash for "maglev". Maglev tables are built on the first connection that needs one and kept
  until the candidates change: building one per service port on every ``program`` would make
  endpoint churn cost time proportional to the number of services.
* A service port's Maglev table size is sticky. Maglev only moves few flows when a backend comes
  or goes if the table keeps its size: a new prime size reshuffles every slot. So the size is
  chosen once for twice the current backends and changes only when the backends outgrow it
  (more than one per 100 slots); a shrinking set keeps the larger table, which only improves
  balance. The local-only table of a service port uses the same size.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address

from vswitch.model import Pod, Service
from vswitch.tables import maglev
from vswitch.tables.deadlines import DeadlineHeap
from vswitch.tables.service_programming import (
    NODE_PORT_TYPES,
    PROTOCOL_NUMBERS,
    BackendChange,
    PortState,
    backend_changes,
    build,
)
from vswitch.tables.service_types import (
    Backend,
    FrontendKey,
    FrontendKind,
    NoBackend,
    PortKey,
    ProgramResult,
    ServiceMatch,
    port_key,
)

# The table and the values it hands out (defined in service_types and service_programming), so
# that callers import all of them from one place.
__all__ = ["NODE_PORT_TYPES", "PROTOCOL_NUMBERS", "Backend", "FrontendKey", "FrontendKind",
           "NoBackend", "PortKey", "ProgramResult", "ServiceMatch", "ServiceTable", "port_key"]


def _is(value: str, expected: str) -> bool:
    return value.lower() == expected


class _Affinity:
    """A client pinned to a backend of one service port by ClientIP affinity."""

    __slots__ = ("backend", "expires", "last_used")

    def __init__(self, backend: Backend, expires: float, last_used: float):
        self.backend = backend
        self.expires = expires
        self.last_used = last_used


class ServiceTable:
    def __init__(self, rng: random.Random, node_addresses: Sequence[bytes] = ()):
        self.rng = rng
        # The node's addresses on which node ports listen.
        self.node_addresses: tuple[bytes, ...] = tuple(node_addresses)
        self.generation = 0
        self._services: dict[str, Service] = {}
        self._ports: dict[PortKey, PortState] = {}
        self._frontends: dict[FrontendKey, ServiceMatch] = {}
        # (protocol, address) of every frontend: what a fragment without ports can be matched on.
        self._frontend_addresses: frozenset[tuple[int, bytes]] = frozenset()
        # (protocol, address, port) of every ready backend: who may send a connection's replies.
        self._backend_endpoints: frozenset[FrontendKey] = frozenset()
        # Affinity entries are grouped per service port, so that dropping a service's entries, or
        # those of one removed backend, never scans other services' clients.
        self._affinity: dict[PortKey, dict[bytes, _Affinity]] = {}
        # When each (port key, client) entry expires; a refresh only moves ``expires`` later.
        self._deadlines: DeadlineHeap[tuple[PortKey, bytes]] = DeadlineHeap(
            lambda pinned: self._affinity[pinned[0]][pinned[1]].expires)
        # (port key, local only) -> (candidates the table was built for, table).
        self._maglev: dict[tuple[PortKey, bool], tuple[tuple[Backend, ...], list[int]]] = {}
        self._maglev_size: dict[PortKey, int] = {}

    def __len__(self) -> int:
        return len(self._frontends)

    # -- programming -------------------------------------------------------------------------

    def set_node_addresses(self, addresses: Iterable[bytes]) -> None:
        """Takes effect on the next ``program``, which reports the node-port frontends it moves."""
        self.node_addresses = tuple(addresses)

    def program(self, services: Sequence[Service], pods: Sequence[Pod]) -> ProgramResult:
        """Rebuilds the table from the desired state (``pods``: every pod of this node, ready or
        not) and reports what moved. Match objects of unchanged service ports are kept, so that a
        call that changes nothing costs one pass and leaves callers' references valid."""
        built = build(services, pods, self._ports, self.node_addresses)
        new_services, new_ports, frontends = built.services, built.ports, built.frontends
        removed, added = backend_changes(self._ports, new_ports)
        removed_frontends = [k for k in self._frontends if k not in frontends]
        added_frontends = [k for k in frontends if k not in self._frontends]
        changed = bool(removed or added or removed_frontends or added_frontends
                       or new_services != self._services or frontends != self._frontends)

        self._forget_affinity(new_ports, removed)
        for cache_key in [k for k in self._maglev if k[0] not in new_ports]:
            del self._maglev[cache_key]
        for key in [k for k in self._maglev_size if k not in new_ports]:
            del self._maglev_size[key]
        self._services = new_services
        self._ports = new_ports
        self._frontends = frontends
        self._frontend_addresses = frozenset((proto, ip) for proto, ip, _ in frontends)
        self._backend_endpoints = frozenset(
            (PROTOCOL_NUMBERS.get(key[1], -1), backend.ip, backend.port)
            for key, state in new_ports.items() for backend in state.backends)
        if changed:
            self.generation += 1
        return ProgramResult(removed, added, self.generation, removed_frontends, added_frontends,
                             built.conflicts, changed)

    def _forget_affinity(self, new_ports: dict[PortKey, PortState],
                         removed: list[BackendChange]) -> None:
        gone_backends: dict[PortKey, set[Backend]] = {}
        for service_key, port, backend in removed:
            gone_backends.setdefault((service_key, port.protocol.lower(), port.port),
                                     set()).add(backend)
        for key in list(self._affinity):
            state = new_ports.get(key)
            if state is None or not _is(state.service.session_affinity, "clientip"):
                for client in self._affinity.pop(key):
                    self._deadlines.discard((key, client))
                continue
            entries = self._affinity[key]
            gone = gone_backends.get(key)
            if gone:
                for client in [c for c, e in entries.items() if e.backend in gone]:
                    del entries[client]
                    self._deadlines.discard((key, client))
            old = self._ports.get(key)
            if old is not None and old.service.affinity_timeout != state.service.affinity_timeout:
                # A shorter timeout applies to existing entries at once: it is measured from the
                # entry's last use, as it would have been had it always been the setting.
                timeout = state.service.affinity_timeout
                for client, entry in entries.items():
                    entry.expires = entry.last_used + timeout
                    self._deadlines.schedule((key, client), entry.expires)
            if not entries:
                del self._affinity[key]

    # -- the per-connection path -------------------------------------------------------------

    def match(self, proto: int, dst_ip: bytes, dst_port: int) -> ServiceMatch | None:
        return self._frontends.get((proto, dst_ip, dst_port))

    def is_frontend_address(self, proto: int, dst_ip: bytes) -> bool:
        """Whether some service listens on ``dst_ip`` for ``proto``, on any port: a later
        fragment carries no port, and this is all that can be known about it."""
        return (proto, dst_ip) in self._frontend_addresses

    def is_backend(self, proto: int, ip: bytes, port: int) -> bool:
        """Whether ``ip:port`` is a ready backend of some service port of ``proto``: a segment
        it sends may be the reply of a translated connection."""
        return (proto, ip, port) in self._backend_endpoints

    @staticmethod
    def local_only(match: ServiceMatch, from_outside: bool) -> bool:
        """Whether the traffic policy confines this connection to backends on this node."""
        return match.local_always or (from_outside and match.local_from_outside)

    def candidates(self, match: ServiceMatch, from_outside: bool) -> tuple[Backend, ...]:
        if match.local_always or (from_outside and match.local_from_outside):
            return match.local_backends
        return match.backends

    def why_none(self, match: ServiceMatch, from_outside: bool) -> NoBackend | None:
        """Why ``choose`` would find no backend; None when there are candidates."""
        if not match.backends:
            return NoBackend.NO_ENDPOINTS
        if not self.candidates(match, from_outside):
            return NoBackend.NO_LOCAL_ENDPOINTS
        return None

    def pinned(self, match: ServiceMatch, client_ip: bytes, now: float,
               from_outside: bool) -> Backend | None:
        """The backend ClientIP affinity holds for this client, if any; changes nothing (a
        trace says so when affinity made the choice)."""
        if not match.affinity:
            return None
        held = self._held(port_key(match.service, match.port), client_ip, now,
                          self.candidates(match, from_outside))
        return held.backend if held is not None else None

    def _held(self, key: PortKey, client_ip: bytes, now: float,
              candidates: tuple[Backend, ...]) -> _Affinity | None:
        """The client's live affinity entry, if its backend is still a candidate."""
        entries = self._affinity.get(key)
        entry = entries.get(client_ip) if entries is not None else None
        if entry is None or now >= entry.expires or entry.backend not in candidates:
            return None
        return entry

    @staticmethod
    def uses_flow_hash(match: ServiceMatch) -> bool:
        """Whether ``choose`` may read ``flow_hash`` for this match (Maglev among several
        backends): the caller can skip hashing the flow otherwise."""
        return match.maglev and len(match.backends) > 1

    def choose(self, match: ServiceMatch, *, client_ip: bytes, flow_hash: int, now: float,
               from_outside: bool, commit: bool = True) -> Backend | None:
        """The backend of a new connection. Without ``commit`` (a dry-run trace) the answer is
        the one a real packet would get now, but nothing changes: no affinity is pinned or
        refreshed, the random generator does not advance, no Maglev table is kept."""
        local_only = match.local_always or (from_outside and match.local_from_outside)
        candidates = match.local_backends if local_only else match.backends
        if not candidates:
            return None
        if not match.affinity:
            return self._pick(match, candidates, flow_hash, local_only, commit)
        service = match.service
        key = port_key(service, match.port)
        entry = self._held(key, client_ip, now, candidates)
        expires = now + service.affinity_timeout
        if entry is not None:
            if commit:
                entry.expires = expires  # later: the deadline heap needs no word of it
                entry.last_used = now
            return entry.backend
        backend = self._pick(match, candidates, flow_hash, local_only, commit)
        # A match from before the last ``program`` may name a port that is gone; pinning a client
        # to it would only leave an entry nobody can reach.
        if commit and key in self._ports:
            entries = self._affinity.get(key)
            if entries is None:
                entries = self._affinity[key] = {}
            entries[client_ip] = _Affinity(backend, expires, now)
            self._deadlines.schedule((key, client_ip), expires)
        return backend

    def _pick(self, match: ServiceMatch, candidates: tuple[Backend, ...], flow_hash: int,
              local_only: bool, commit: bool) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        if not match.maglev:
            if commit:
                return self.rng.choice(candidates)
            state = self.rng.getstate()
            try:
                return self.rng.choice(candidates)
            finally:
                self.rng.setstate(state)
        key = port_key(match.service, match.port)
        cached = self._maglev.get((key, local_only))
        if cached is None or cached[0] != candidates:
            cached = (candidates, maglev.build_table([b.name for b in candidates],
                                                     self._table_size(key, match, commit)))
            # A match from before the last ``program`` may name a port that is gone; its table
            # would never be dropped.
            if commit and key in self._ports:
                self._maglev[(key, local_only)] = cached
        table = cached[1]
        return candidates[table[flow_hash % len(table)]]

    def _table_size(self, key: PortKey, match: ServiceMatch, commit: bool) -> int:
        size = self._maglev_size.get(key)
        if size is None or maglev.table_size(len(match.backends)) > size:
            size = maglev.table_size(2 * len(match.backends))
            if commit and key in self._ports:
                self._maglev_size[key] = size
        return size

    # -- timers --------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Drops affinity entries that expired; ``choose`` already ignores them, this reclaims."""
        due = self._deadlines.pop_due(now)
        for key, client in due:
            entries = self._affinity[key]
            del entries[client]
            if not entries:
                del self._affinity[key]
        return len(due)

    def next_deadline(self) -> float | None:
        return self._deadlines.next_deadline()

    def affinity_count(self) -> int:
        return sum(len(entries) for entries in self._affinity.values())

    def affinity_entries(self, now: float) -> list[tuple[PortKey, bytes, Backend, float, float]]:
        """Every live affinity entry as (port key, client, backend, seconds left, seconds since
        its last use): what a restart must carry over (``conntrack_snapshot``)."""
        return [(key, client, entry.backend, entry.expires - now, now - entry.last_used)
                for key, entries in self._affinity.items()
                for client, entry in entries.items() if now < entry.expires]

    def restore_affinity(self, key: PortKey, client_ip: bytes, ip: bytes, port: int,
                         expires: float, last_used: float) -> bool:
        """Pin ``client_ip`` again as an earlier run had it, if the service port still uses
        ClientIP affinity and ``ip:port`` is still one of its ready backends; False otherwise."""
        state = self._ports.get(key)
        if state is None or not _is(state.service.session_affinity, "clientip"):
            return False
        backend = next((b for b in state.backends if b.ip == ip and b.port == port), None)
        if backend is None:
            return False
        self._affinity.setdefault(key, {})[client_ip] = _Affinity(backend, expires, last_used)
        self._deadlines.schedule((key, client_ip), expires)
        return True

    # -- introspection -------------------------------------------------------------------------

    def services_info(self) -> list[dict]:
        rows = []
        for service in self._services.values():
            endpoint_ips: set[bytes] = set()
            ports = []
            for port in service.ports:
                state = self._ports.get(port_key(service, port))
                backends = state.backends if state is not None and state.port == port else ()
                endpoint_ips.update(b.ip for b in backends)
                ports.append({
                    "name": port.name,
                    "protocol": port.protocol,
                    "port": port.port,
                    "target_port": port.target_port,
                    "node_port": port.node_port,
                    "endpoints": len(backends),
                })
            rows.append({
                "name": service.name,
                "namespace": service.namespace,
                "type": service.type,
                "cluster_ip": str(service.cluster_ip) if service.cluster_ip else None,
                "programmed": not service.headless,
                "ports": ports,
                "external_ips": [str(a) for a in service.external_ips],
                "affinity": {"mode": service.session_affinity,
                             "timeout": service.affinity_timeout},
                "policies": {"internal": service.internal_traffic_policy,
                             "external": service.external_traffic_policy},
                "load_balancer": service.load_balancer,
                "endpoints": len(endpoint_ips),
            })
        return rows

    def endpoints_info(self) -> list[dict]:
        rows = []
        for (service_key, protocol, number), state in self._ports.items():
            for backend in state.backends:
                rows.append({
                    "service": service_key,
                    "port": state.port.name,
                    "protocol": protocol,
                    "service_port": number,
                    "backend": backend.name,
                    "pod": backend.pod,
                    "local": backend.local,
                })
        return rows

    def affinity_info(self, now: float) -> list[dict]:
        rows = []
        for (service_key, protocol, number), entries in self._affinity.items():
            for client, entry in entries.items():
                if entry.expires <= now:
                    continue
                rows.append({
                    "service": service_key,
                    "protocol": protocol,
                    "port": number,
                    "client": str(IPv4Address(client)),
                    "backend": entry.backend.name,
                    "pod": entry.backend.pod,
                    "expires_in": round(entry.expires - now, 3),
                })
        return rows

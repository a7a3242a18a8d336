"""Table programming: the desired state and the operator's commands, applied to the NAT tables.

Theory of operation
-------------------
* ``program`` hands the desired pods and services to the service table, which reports what
  changed. Connections to backends that went away are flushed at once, through the connection
  table's index by endpoint (a fixed-port UDP client then reaches a live backend on its next
  datagram instead of a black hole until its entry times out); connections made through a
  frontend that went away are found by a scan, since frontends vanish far more rarely than
  endpoints churn. The external IPs inside the uplink network become the addresses the node
  answers ARP for.
* ``conntrack_flush`` is ``vswitchctl conntrack flush``: it removes the connections that match
  the operator's filters.
* ``generation`` grows when either may have changed a decision the flow cache remembers: the
  switch adds it to the other tables' generations. Everything else about the tables' consistency
  (reply pairs, indexes, deadlines) the tables keep themselves.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vswitch.model import Pod, Service, Uplink
from vswitch.pipeline.context import NatContext
from vswitch.tables.conntrack import Entry

# What turns ``vswitchctl conntrack`` filters into a test of one entry.
ConnectionFilter = Callable[[dict[str, str]], Callable[[Entry], bool]]


class TableProgramming:
    def __init__(self, nat: NatContext, uplink: Uplink | None,
                 connection_filter: ConnectionFilter):
        self._nat = nat
        self._services = nat.services
        self._conntrack = nat.conntrack
        self._uplink = uplink
        self._connection_filter = connection_filter
        self.generation = 0

    def program(self, pods: Sequence[Pod], services: Sequence[Service],
                now: float) -> dict[str, Any]:
        """Re-program services from the desired state; flush the connections it made stale."""
        result = self._services.program(services, pods)
        if self._uplink is not None:
            network = self._uplink.address.network
            self._nat.announced = frozenset(
                ip.packed for service in services if not service.headless
                for ip in service.external_ips if ip in network)
        flushed = 0
        for key, port, backend in result.removed:
            # Only this service port's connections: another service may share the backend.
            proto = 6 if port.protocol.lower() == "tcp" else 17
            flushed += self._conntrack.flush_endpoint(
                backend.ip, backend.port, proto,
                where=lambda e: e.labels.get("service") == key
                and e.labels.get("port") == port.name)
        for proto, ip, number in result.removed_frontends:
            flushed += self._conntrack.flush(
                lambda e: e.dnat is not None and e.original.proto == proto
                and e.original.dst == ip and e.original.dport == number)
        if result.changed:
            self.generation += 1
        return {"generation": result.generation, "changed": result.changed,
                "removed_endpoints": len(result.removed), "added_endpoints": len(result.added),
                "flushed_connections": flushed, "conflicts": list(result.conflicts)}

    def conntrack_flush(self, filters: dict[str, str] | None = None) -> int:
        """Remove the connections that match every filter (all of them without filters)."""
        count = self._conntrack.flush(self._connection_filter(filters or {}))
        self.generation += 1
        return count

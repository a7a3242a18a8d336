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
* ``program_policies`` compiles the network policies against the pods (the node's own, which it
  enforces, and other nodes', which selectors may match) and the namespaces' labels, installs
  them (their generation retakes every cached decision) and cuts the tracked connections the new
  policies no longer allow: each is judged again, on the tuple its first packet was judged on,
  and removed when denied, counted for each policy that denies it. ``cut_denied`` does the
  same for the connections a start restores from the previous run's snapshot.
* ``conntrack_flush`` is ``vswitchctl conntrack flush``: it removes the connections that match
  the operator's filters.
* ``generation`` grows when either may have changed a decision the flow cache remembers: the
  switch adds it to the other tables' generations. Everything else about the tables' consistency
  (reply pairs, indexes, deadlines) the tables keep themselves.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vswitch.model import NetworkPolicy, Pod, RemotePod, Service, Topology, Uplink
from vswitch.pipeline.context import NatContext
from vswitch.policy.engine import CompiledPolicies
from vswitch.tables.conntrack import Entry
from vswitch.tables.policies import judged_tuple

# What turns ``vswitchctl conntrack`` filters into a test of one entry.
ConnectionFilter = Callable[[dict[str, str]], Callable[[Entry], bool]]


class TableProgramming:
    def __init__(self, nat: NatContext, uplink: Uplink | None,
                 connection_filter: ConnectionFilter, node_addresses: Iterable[bytes] = ()):
        self._nat = nat
        self._node_addresses = tuple(node_addresses)
        # What the policies in force were compiled from (see ``program_policies``).
        self._policy_inputs: tuple[Any, ...] | None = None
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

    def program_policies(self, policies: Sequence[NetworkPolicy],
                         namespaces: Mapping[str, Mapping[str, str]],
                         pods: Sequence[Pod | RemotePod], now: float) -> dict[str, Any]:
        """Enforce ``policies`` from now on; cut the connections they no longer allow. Without
        policies nothing is compiled; when the policies, namespaces and pods are those of the
        last call, nothing changes at all (the cached decisions stay valid)."""
        inputs = (tuple(policies), dict(namespaces), tuple(pods))
        table = self._nat.policies
        if inputs == self._policy_inputs:
            return {"policies": len(policies), "generation": table.generation,
                    "cut_connections": 0}
        compiled = (CompiledPolicies.build(policies, namespaces, pods, self._node_addresses)
                    if policies else None)
        result = {"policies": len(policies), **self.enforce(compiled, now)}
        self._policy_inputs = inputs
        return result

    def enforce(self, compiled: CompiledPolicies | None, now: float) -> dict[str, Any]:
        """Install compiled policies (None: none) and cut the connections they deny; a test may
        hand in any object with the contract of ``CompiledPolicies``."""
        table = self._nat.policies
        table.install(compiled)
        self._policy_inputs = None
        return {"generation": table.generation, "cut_connections": self.cut_denied(now)}

    def cut_denied(self, now: float) -> int:
        """Judge every tracked connection again by the policies in force and cut those they deny;
        how many. Besides a policy change, a start calls it after restoring the connections saved
        by the previous run, which were judged by the policies of that run."""
        table = self._nat.policies
        if table.active is None:
            return 0
        cut = 0
        hairpin = self._nat.hairpin_address
        for entry in self._conntrack.entries():
            src, dst, proto, dport = judged_tuple(entry, hairpin)
            if not entry.alive(now) or not table.involves(src, dst):
                continue
            decision = table.check(src, dst, proto, dport)
            if not decision.allowed:
                self._conntrack.remove(entry)
                table.count_cut(decision)
                cut += 1
        return cut


def policy_namespaces(topology: Topology,
                      pods: Iterable[Pod | RemotePod]) -> dict[str, Mapping[str, str]]:
    """The labels of every namespace the policies may meet: the declared ones and those of the
    pods (ours and other nodes'), which have only their name label unless declared."""
    names = {namespace.name for namespace in topology.namespaces}
    names.update(pod.namespace for pod in pods)
    names.update(policy.namespace for policy in topology.network_policies)
    return {name: topology.namespace_labels(name) for name in sorted(names)}

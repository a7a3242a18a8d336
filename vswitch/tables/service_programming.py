"""From the desired state (services and this node's pods) to programmed service ports and their
frontends: what ``ServiceTable.program`` installs.

Theory of operation
-------------------
* A *service port* is identified by (service key, protocol, port), as Kubernetes requires those to
  be unique within a service. Its backends are the ready pods of the service's namespace whose
  labels include every pair of the selector, each at the target port; a named target port is looked up per pod among its
  containers' named ports, and a pod that lacks the name (or has it for another protocol) is not a
  backend of that port. A service without a selector (an empty one counts as none, as it does once
  Kubernetes has stored it) uses its explicit endpoints instead, which are
  always considered ready: whoever declared them vouches for them, as for a Kubernetes Endpoints
  object written by hand. Backends are sorted by (ip, port), so that the order is the same whatever
  order pods arrive in, which makes seeded random choices reproducible.
* A *frontend* is a (protocol, address, port) a client may send to: a service's cluster IP and
  port, each of its external IPs with the same port, and, for NodePort services, each node address
  with the node port. A frontend, a service key or a service port declared twice is a conflict,
  reported in one sentence; the first declaration wins.
* A service port whose service, port and backends are unchanged keeps its previous
  ``ServiceMatch`` objects, so that callers' references stay valid and comparing the old and new
  frontends finds nothing to report.
* Nothing here keeps state: the functions take the previous ports and return new ones.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from vswitch.model import Pod, RemotePod, Service, ServicePort
from vswitch.tables.service_types import (
    Backend,
    FrontendKey,
    FrontendKind,
    PortKey,
    ServiceMatch,
    port_key,
)

PROTOCOL_NUMBERS: Mapping[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
NODE_PORT_TYPES = ("nodeport", "loadbalancer")

# (service key, service port, backend) of each backend that went away or appeared.
BackendChange = tuple[str, ServicePort, Backend]


class PortState:
    """One programmed service port: what ``program`` compares against on the next call."""

    __slots__ = ("service", "port", "backends", "matches")

    def __init__(self, service: Service, port: ServicePort, backends: tuple[Backend, ...],
                 matches: dict[FrontendKind, ServiceMatch]):
        self.service = service
        self.port = port
        self.backends = backends
        self.matches = matches


@dataclass(frozen=True)
class Programmed:
    """The desired state, as the table holds it."""

    services: dict[str, Service]
    ports: dict[PortKey, PortState]
    frontends: dict[FrontendKey, ServiceMatch]
    conflicts: list[str]


def build(services: Sequence[Service], pods: Sequence[Pod | RemotePod], old_ports: Mapping[PortKey, PortState],
          node_addresses: Sequence[bytes]) -> Programmed:
    """The service ports and frontends of ``services`` (``pods``: every pod of this node, ready or
    not, and the ready pods of other nodes as ``RemotePod``s). ``old_ports`` are the ones programmed before, whose match objects are kept when
    nothing about their service port changed."""
    conflicts: list[str] = []
    # A selector picks pods of its service's namespace only, as in Kubernetes.
    ready_by_label: dict[tuple[str, str, str], list[Pod | RemotePod]] = {}
    pods_by_ip: dict[bytes, Pod | RemotePod] = {}
    for pod in pods:
        pods_by_ip.setdefault(pod.ip.packed, pod)
        if pod.ready:
            for label, value in pod.labels.items():
                ready_by_label.setdefault((pod.namespace, label, value), []).append(pod)
    named_ports: dict[bytes, Mapping[str, tuple[str, int]]] = {}

    def pod_named_ports(pod: Pod | RemotePod) -> Mapping[str, tuple[str, int]]:
        found = named_ports.get(pod.ip.packed)
        if found is None:
            found = named_ports[pod.ip.packed] = pod.named_ports()
        return found

    def resolve(port: ServicePort, pod: Pod | RemotePod) -> int | None:
        if isinstance(port.target_port, int):
            return port.target_port
        binding = pod_named_ports(pod).get(port.target_port)
        if binding is None or binding[0].lower() != port.protocol.lower():
            return None
        return binding[1]

    new_services: dict[str, Service] = {}
    new_ports: dict[PortKey, PortState] = {}
    frontends: dict[FrontendKey, ServiceMatch] = {}

    for service in services:
        if service.key in new_services:
            conflicts.append(f"service {service.key} is defined twice; the first one is kept")
            continue
        new_services[service.key] = service
        if service.headless:
            continue
        endpoints: list[tuple[bytes, Pod | RemotePod | None, str | None]]
        if service.selector:
            members = _select(service.namespace, service.selector, ready_by_label)
            endpoints = [(pod.ip.packed, pod, pod.key) for pod in members]
        else:
            endpoints = []
            for address in dict.fromkeys(service.endpoints):
                pod = pods_by_ip.get(address.packed)
                endpoints.append((address.packed, pod, None))
        for port in service.ports:
            key = port_key(service, port)
            if key in new_ports:
                conflicts.append(f"service {service.key} declares {key[1]} port {key[2]} "
                                 "twice; the first one is kept")
                continue
            backends = _backends(port, endpoints, resolve)
            old = old_ports.get(key)
            if (old is not None and (old.service is service or old.service == service)
                    and old.port == port and old.backends == backends):
                matches = old.matches
                backends = old.backends
            else:
                matches = {}
            state = PortState(service, port, backends, matches)
            new_ports[key] = state
            _add_frontends(state, node_addresses, frontends, conflicts)
    return Programmed(new_services, new_ports, frontends, conflicts)


def backend_changes(old_ports: Mapping[PortKey, PortState], new_ports: Mapping[PortKey, PortState]
                    ) -> tuple[list[BackendChange], list[BackendChange]]:
    """The backends that went away and those that appeared, with the service port they belong to
    (the old ServicePort for removals, the new one for additions)."""
    removed: list[BackendChange] = []
    added: list[BackendChange] = []
    for key, state in new_ports.items():
        old = old_ports.get(key)
        if old is None:
            added.extend((key[0], state.port, b) for b in state.backends)
        elif old.backends != state.backends:
            before, after = set(old.backends), set(state.backends)
            removed.extend((key[0], old.port, b) for b in old.backends if b not in after)
            added.extend((key[0], state.port, b) for b in state.backends if b not in before)
    for key, old in old_ports.items():
        if key not in new_ports:
            removed.extend((key[0], old.port, b) for b in old.backends)
    return removed, added


def _select(namespace: str, selector: Mapping[str, str],
            ready_by_label: dict[tuple[str, str, str], list[Pod | RemotePod]]
            ) -> list[Pod | RemotePod]:
    """Ready pods of ``namespace`` whose labels include every selector pair, starting from the
    rarest pair so that a service costs what it matches, not what the node holds."""
    smallest: list[Pod | RemotePod] = []
    for index, (label, value) in enumerate(selector.items()):
        candidates = ready_by_label.get((namespace, label, value))
        if not candidates:
            return []
        if index == 0 or len(candidates) < len(smallest):
            smallest = candidates
    if len(selector) == 1:
        return smallest
    pairs = selector.items()
    return [pod for pod in smallest if all(pod.labels.get(k) == v for k, v in pairs)]


def _backends(port: ServicePort,
              endpoints: list[tuple[bytes, Pod | RemotePod | None, str | None]],
              resolve: Callable[[ServicePort, Pod | RemotePod], int | None]
              ) -> tuple[Backend, ...]:
    found: dict[tuple[bytes, int], Backend] = {}
    for ip, pod, name in endpoints:
        if pod is None:
            # An explicit endpoint outside this node: only a numeric target port makes sense.
            if not isinstance(port.target_port, int):
                continue
            number = port.target_port
        else:
            number = resolve(port, pod)
            if number is None:
                continue
        local = isinstance(pod, Pod)
        if isinstance(pod, RemotePod):
            name = f"{pod.node}/{pod.key}"
        found.setdefault((ip, number), Backend(ip, number, name, local))
    return tuple(found[k] for k in sorted(found))


def _add_frontends(state: PortState, node_addresses: Sequence[bytes],
                   frontends: dict[FrontendKey, ServiceMatch], conflicts: list[str]) -> None:
    service, port = state.service, state.port
    proto = PROTOCOL_NUMBERS.get(port.protocol.lower())
    if proto is None:
        conflicts.append(f"service {service.key}: unknown protocol {port.protocol!r}")
        return
    assert service.cluster_ip is not None
    wanted: list[tuple[FrontendKind, bytes, int]] = [
        (FrontendKind.CLUSTER_IP, service.cluster_ip.packed, port.port)]
    wanted.extend((FrontendKind.EXTERNAL_IP, address.packed, port.port)
                  for address in service.external_ips)
    if port.node_port is not None and service.type.lower() in NODE_PORT_TYPES:
        wanted.extend((FrontendKind.NODE_PORT, address, port.node_port)
                      for address in node_addresses)
    for kind, address, number in wanted:
        key = (proto, address, number)
        holder = frontends.get(key)
        if holder is not None:
            if holder.service.key != service.key or holder.port != port:
                conflicts.append(
                    f"service {service.key}: {port.protocol} {IPv4Address(address)}:{number} "
                    f"is already the frontend of {holder.service.key}; the first one is kept")
            continue
        match = state.matches.get(kind)
        if match is None:
            match = state.matches[kind] = ServiceMatch(service, port, kind, state.backends)
        frontends[key] = match

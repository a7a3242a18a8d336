"""The cluster zone: every name the Kubernetes DNS specification gives the node's services and
pods, with its records.

Theory of operation
-------------------
A ``ZoneView`` is a snapshot: a dict from owner name to its records by type, the names that
exist without records of their own (the "empty non-terminals" between the domain and an owner,
such as ``default.svc.cluster.local``, which answer NODATA, not NXDOMAIN), and the zones the
node is authoritative for: the cluster domain and the reverse zones of the service and cluster
CIDRs. It is built in one pass from the desired state and never changed: a change of services,
endpoints or pods builds a new view (``ViewCache`` builds it lazily, when the next query
arrives after the change), so answers always follow the tables and nothing is patched by hand.

The records, from https://github.com/kubernetes/dns/blob/master/docs/specification.md:

* ``<service>.<ns>.svc.<domain>`` A: the cluster IP; for a headless service the address of
  each ready endpoint, and ``<a-b-c-d>.<service>.<ns>.svc.<domain>`` A for each of them (the
  endpoint's hostname: pods here have none of their own, so the dashed address stands in).
* ``_<port>._<proto>.<service>.<ns>.svc.<domain>`` SRV for each named port: the service name
  and the service port; for a headless service one record per ready endpoint, naming its
  hostname and its target port.
* PTR for every cluster IP (the service name), for headless endpoints (their hostname) and for
  every other pod address (its pod name).
* ``<a-b-c-d>.<ns>.pod.<domain>`` A for every pod, of this node and of the others.
* ``dns-version.<domain>`` TXT: the version of the specification followed.

Every record carries ``TTL`` seconds, CoreDNS's default for its kubernetes plugin (5): a client
that cached a service's address sees a change within seconds. The SOA's minimum is the same, so
a name that does not exist yet is asked again as soon.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from vswitch.model import Pod, RemotePod, Service

TTL = 5
SPEC_VERSION = "1.1.0"  # the schema version of the Kubernetes DNS specification followed
# SOA fields after the names: serial, refresh, retry, expire, minimum (the negative TTL).
SOA_TIMERS = (1, 7200, 1800, 86400, TTL)

Records = dict[dns.name.Name, dict[int, list[dns.rdata.Rdata]]]


def dashed(ip: IPv4Address) -> str:
    """``10.244.1.5`` as the label ``10-244-1-5``, the spec's name for an address."""
    return str(ip).replace(".", "-")


def reverse_zone(network: IPv4Network) -> dns.name.Name:
    """The in-addr.arpa zone holding every address of ``network``: its whole octets only, so a
    /20 is served by the zone of its /16."""
    octets = network.network_address.packed[: network.prefixlen // 8]
    return dns.name.from_text(".".join(str(b) for b in reversed(octets)) + ".in-addr.arpa.")


@dataclass(frozen=True)
class Zone:
    """One zone the node answers for: its apex and its SOA."""

    apex: dns.name.Name
    soa: dns.rrset.RRset


def _soa(apex: dns.name.Name, domain: dns.name.Name) -> dns.rrset.RRset:
    serial, refresh, retry, expire, minimum = SOA_TIMERS
    text = (f"ns.dns.{domain} hostmaster.{domain} {serial} {refresh} {retry} {expire} "
            f"{minimum}")
    return dns.rrset.from_text(apex, TTL, "IN", "SOA", text)


def ready_endpoints(service: Service, pods: Sequence[Pod | RemotePod]
                    ) -> list[tuple[IPv4Address, Pod | RemotePod | None]]:
    """A service's ready endpoints, each with its pod (None for an explicit endpoint): the
    ready pods of its namespace its selector picks, or its explicit endpoints without one."""
    if not service.selector:
        return [(address, None) for address in dict.fromkeys(service.endpoints)]
    pairs = service.selector.items()
    found: dict[IPv4Address, Pod | RemotePod] = {}
    for pod in pods:
        if (pod.ready and pod.namespace == service.namespace
                and all(pod.labels.get(k) == v for k, v in pairs)):
            found.setdefault(pod.ip, pod)
    return sorted(found.items())


def endpoint_port(target: int | str, protocol: str, pod: Pod | RemotePod | None) -> int | None:
    """The port a service port's target names on one endpoint; None when the pod lacks it."""
    if isinstance(target, int):
        return target
    if pod is None:
        return None
    binding = pod.named_ports().get(target)
    if binding is None or binding[0].lower() != protocol.lower():
        return None
    return binding[1]


class ZoneView:
    """The records of the cluster zone and of its reverse zones; see the module docstring."""

    def __init__(self, domain: str, services: Iterable[Service],
                 pods: Sequence[Pod | RemotePod],
                 reverse_networks: Sequence[IPv4Network] = ()) -> None:
        self.domain = dns.name.from_text(domain)
        self.zones = [Zone(self.domain, _soa(self.domain, self.domain))]
        for network in reverse_networks:
            apex = reverse_zone(network)
            if all(zone.apex != apex for zone in self.zones):
                self.zones.append(Zone(apex, _soa(apex, self.domain)))
        self.records: Records = {}
        self.names: set[dns.name.Name] = set()
        self._add(dns.name.from_text("dns-version", self.domain), "TXT", f'"{SPEC_VERSION}"')
        pointers: dict[IPv4Address, str] = {}
        for service in services:
            self._add_service(service, pods, pointers)
        for pod in pods:
            name = f"{dashed(pod.ip)}.{pod.namespace}.pod.{self.domain}"
            self._add(dns.name.from_text(name), "A", str(pod.ip))
            pointers.setdefault(pod.ip, name)
        for ip, target in pointers.items():
            reverse = dns.reversename.from_address(str(ip))
            if self.zone_of(reverse) is not None:
                self._add(reverse, "PTR", target)

    def _add(self, owner: dns.name.Name, rdtype: str, text: str) -> None:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        entries = self.records.setdefault(owner, {}).setdefault(rdata.rdtype, [])
        if rdata not in entries:
            entries.append(rdata)
        zone = self.zone_of(owner)
        name = owner
        while zone is not None and name != zone.apex and name not in self.names:
            self.names.add(name)
            name = name.parent()

    def _add_service(self, service: Service, pods: Sequence[Pod | RemotePod],
                     pointers: dict[IPv4Address, str]) -> None:
        base = f"{service.name}.{service.namespace}.svc.{self.domain}"
        owner = dns.name.from_text(base)
        if not service.headless:
            assert service.cluster_ip is not None
            self._add(owner, "A", str(service.cluster_ip))
            pointers.setdefault(service.cluster_ip, base)
            for port in service.ports:
                if port.name:
                    self._add(dns.name.from_text(f"_{port.name}._{port.protocol.lower()}.{base}"),
                              "SRV", f"0 100 {port.port} {base}")
            return
        for ip, pod in ready_endpoints(service, pods):
            host = f"{dashed(ip)}.{base}"
            self._add(owner, "A", str(ip))
            self._add(dns.name.from_text(host), "A", str(ip))
            pointers.setdefault(ip, host)
            for port in service.ports:
                number = endpoint_port(port.target_port, port.protocol, pod)
                if port.name and number is not None:
                    self._add(dns.name.from_text(f"_{port.name}._{port.protocol.lower()}.{base}"),
                              "SRV", f"0 100 {number} {host}")

    def zone_of(self, name: dns.name.Name) -> Zone | None:
        """The zone the node answers ``name`` from, or None: the name is someone else's."""
        for zone in self.zones:
            if name.is_subdomain(zone.apex):
                return zone
        return None

    def lookup(self, name: dns.name.Name) -> Mapping[int, list[dns.rdata.Rdata]] | None:
        """The records of ``name`` by type: empty for a name that exists without records of its
        own, None for a name that does not exist."""
        found = self.records.get(name)
        if found is not None:
            return found
        zone = self.zone_of(name)
        if name in self.names or (zone is not None and name == zone.apex):
            return {}
        return None


def _same(old: object, new: object) -> bool:
    """Numbers (generations) are the same when equal; anything else only when it is the same
    object, which costs nothing to check however many services it holds."""
    if isinstance(old, int) and isinstance(new, int):
        return old == new
    return old is new


class ViewCache:
    """The view of the current desired state, built when first asked for after a change.

    ``key`` returns the objects the view depends on (tuples of services and pods, which the
    runtime replaces rather than mutates, and the service table's generation); the view is kept
    while every one of them is the same object as when it was built.
    """

    def __init__(self, key: Callable[[], tuple[object, ...]],
                 build: Callable[[], ZoneView]) -> None:
        self._key = key
        self._build = build
        self._built_for: tuple[object, ...] | None = None
        self._view: ZoneView | None = None
        self.builds = 0

    def current(self) -> ZoneView:
        key = self._key()
        built_for = self._built_for
        if (self._view is None or built_for is None or len(built_for) != len(key)
                or not all(_same(a, b) for a, b in zip(built_for, key))):
            self._view = self._build()
            self._built_for = key
            self.builds += 1
        return self._view

"""``[[services]]``: Kubernetes-style services, read as drafts and built after allocation.

A service is read in two steps, like a pod. ``read_service`` checks what its table says by itself
and against the ``ServiceContext`` (the cluster, the uplink and the node's own addresses) and
returns a ``ServiceDraft``. ``check_services`` then looks at all drafts together: names must be
unique per namespace, cluster IPs and node ports are allocated (see ``allocation``), and only
drafts without a mistake become ``model.Service`` objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.addresses import address_problem
from vswitch.config.allocation import allocate_cluster_ips, allocate_node_ports
from vswitch.config.containers import PROTOCOLS
from vswitch.config.namespaces import namespace_problem
from vswitch.config.names import (
    DNS_LABEL_MAX,
    dns_label_problem,
    label_key_problem,
    label_value_problem,
    port_name_problem,
)
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader, key_path, type_name
from vswitch.config.service_context import ServiceContext

SERVICE_KEYS = ("name", "namespace", "cluster_ip", "type", "ports", "selector", "endpoints",
                "session_affinity", "affinity_timeout", "external_traffic_policy",
                "internal_traffic_policy", "external_ips", "load_balancer")
SERVICE_PORT_KEYS = ("name", "protocol", "port", "target_port", "node_port")
AFFINITY_TIMEOUT_MAX = 86400  # one day, Kubernetes' upper bound for ClientIP affinity
SERVICE_TYPES = ("ClusterIP", "NodePort")
SESSION_AFFINITIES = ("None", "ClientIP")
TRAFFIC_POLICIES = ("Cluster", "Local")
LOAD_BALANCERS = ("random", "maglev")
HEADLESS = "None"  # cluster_ip = "None": a headless service, as Kubernetes writes it


@dataclass(frozen=True)
class ServicePortDraft:
    """A service port without a mistake; ``node_port`` None: none, or one to allocate."""

    path: str
    name: str
    protocol: str
    number: int
    target_port: int | str
    node_port: int | None


@dataclass(frozen=True)
class ServiceDraft:
    """A service as written; fields are INVALID where they are wrong. ``cluster_ip`` is None when
    it is to be allocated, or when the service is ``headless``."""

    path: str
    name: str | Marker
    namespace: str | Marker
    cluster_ip: IPv4Address | None | Marker
    headless: bool
    type: str | Marker
    ports: tuple[ServicePortDraft, ...] | Marker
    selector: Mapping[str, str] | None | Marker
    endpoints: tuple[IPv4Address, ...] | Marker
    session_affinity: str | Marker
    affinity_timeout: int | Marker
    external_traffic_policy: str | Marker
    internal_traffic_policy: str | Marker
    external_ips: tuple[IPv4Address, ...] | Marker
    load_balancer: str | Marker

    @property
    def key(self) -> str | None:
        if isinstance(self.name, str) and isinstance(self.namespace, str):
            return f"{self.namespace}/{self.name}"
        return None

    @property
    def valid(self) -> bool:
        return INVALID not in (self.name, self.namespace, self.cluster_ip, self.type, self.ports,
                               self.selector, self.endpoints, self.session_affinity,
                               self.affinity_timeout, self.external_traffic_policy,
                               self.internal_traffic_policy, self.external_ips,
                               self.load_balancer)

    def build(self, cluster_ip: IPv4Address | None,
              ports: tuple[model.ServicePort, ...]) -> model.Service:
        """The service of a ``valid`` draft, with its allocated cluster IP and node ports."""
        # The asserts only narrow types: ``valid`` has checked every field.
        assert isinstance(self.name, str) and isinstance(self.namespace, str)
        assert isinstance(self.type, str) and isinstance(self.session_affinity, str)
        assert isinstance(self.external_traffic_policy, str)
        assert isinstance(self.internal_traffic_policy, str)
        assert isinstance(self.load_balancer, str) and isinstance(self.affinity_timeout, int)
        assert isinstance(self.endpoints, tuple) and isinstance(self.external_ips, tuple)
        assert not isinstance(self.selector, Marker)
        return model.Service(
            name=self.name, namespace=self.namespace, cluster_ip=cluster_ip,
            type=self.type, ports=ports,
            selector=(MappingProxyType(dict(self.selector))
                      if self.selector is not None else None),
            endpoints=self.endpoints, session_affinity=self.session_affinity,
            affinity_timeout=self.affinity_timeout,
            external_traffic_policy=self.external_traffic_policy,
            internal_traffic_policy=self.internal_traffic_policy,
            external_ips=self.external_ips, load_balancer=self.load_balancer)


def read_services(reader: Reader, document: Mapping[str, Any], context: ServiceContext,
                  namespaces: tuple[model.Namespace, ...] = ()) -> list[ServiceDraft]:
    return [read_service(reader, entry, path, context, namespaces)
            for path, entry in reader.entries(document, "", "services")]


def read_service(reader: Reader, table: Mapping[str, Any], path: str,
                 context: ServiceContext,
                 namespaces: tuple[model.Namespace, ...] = ()) -> ServiceDraft:
    """One ``[[services]]`` entry; ``namespaces`` are the declared ones (none: any name goes)."""
    reader.check_keys(table, path, SERVICE_KEYS)
    name = reader.take(table, path, "name", "a string", REQUIRED)
    if isinstance(name, str) and (problem := dns_label_problem(name, DNS_LABEL_MAX)):
        name = reader.fail(key_path(path, "name"), problem)
    namespace = reader.take(table, path, "namespace", "a string", "default")
    if isinstance(namespace, str):
        problem = dns_label_problem(namespace, DNS_LABEL_MAX)
        if problem is None and namespaces:
            problem = namespace_problem(namespace, namespaces)
        if problem:
            namespace = reader.fail(key_path(path, "namespace"), problem)

    type_ = reader.take_choice(table, path, "type", SERVICE_TYPES, "ClusterIP")
    cluster = context.cluster
    cluster_ip: Any = reader.take(table, path, "cluster_ip", "a string", None)
    headless = cluster_ip == HEADLESS
    if headless:
        cluster_ip = None
    elif isinstance(cluster_ip, str):
        cluster_ip = reader.take_address(table, path, "cluster_ip")
        if isinstance(cluster_ip, IPv4Address) and cluster is not None:
            where = f"cluster.service_cidr {cluster.service_cidr}"
            if problem := address_problem(cluster_ip, cluster.service_cidr, where):
                cluster_ip = reader.fail(key_path(path, "cluster_ip"), problem)
    if headless and type_ == "NodePort":
        type_ = reader.fail(key_path(path, "type"), "a headless service (cluster_ip = \"None\") "
                                                    "must be of type ClusterIP")
    if type_ == "NodePort" and context.uplink is None:
        type_ = reader.fail(key_path(path, "type"), "type NodePort needs an [uplink] section: "
                                                    "node ports listen on the uplink address")

    ports = read_service_ports(reader, table, path, type_, headless)

    selector: Any = None
    if "selector" in table:
        selector = reader.take_str_map(table, path, "selector")
        if isinstance(selector, dict):
            selector_path = key_path(path, "selector")
            problems = [(key_path(selector_path, key), problem) for key, value in selector.items()
                        if (problem := label_key_problem(key) or label_value_problem(value))]
            if not table["selector"]:
                selector = reader.fail(selector_path, "an empty selector would select every "
                                                      "pod; leave it out for a service "
                                                      "without endpoints")
            for problem_path, problem in problems:
                selector = reader.fail(problem_path, problem)
    endpoints = reader.take_addresses(table, path, "endpoints")
    if "selector" in table and "endpoints" in table:
        endpoints = reader.fail(key_path(path, "endpoints"), "give either a selector or explicit "
                                                             "endpoints, not both")
    elif isinstance(endpoints, list):
        for item_path, address in endpoints:
            if problem := context.endpoint_problem(address):
                endpoints = reader.fail(item_path, problem)
                break

    affinity = reader.take_choice(table, path, "session_affinity", SESSION_AFFINITIES, "None")
    timeout = reader.take_int(table, path, "affinity_timeout", model.DEFAULT_AFFINITY_TIMEOUT,
                              1, AFFINITY_TIMEOUT_MAX)
    external_policy = reader.take_choice(table, path, "external_traffic_policy",
                                         TRAFFIC_POLICIES, "Cluster")
    internal_policy = reader.take_choice(table, path, "internal_traffic_policy",
                                         TRAFFIC_POLICIES, "Cluster")
    external_ips = reader.take_addresses(table, path, "external_ips")
    if isinstance(external_ips, list):
        for item_path, address in external_ips:
            if problem := context.external_ip_problem(address):
                external_ips = reader.fail(item_path, problem)
                break
    load_balancer = reader.take_choice(table, path, "load_balancer", LOAD_BALANCERS, "random")
    return ServiceDraft(
        path=path, name=name, namespace=namespace, cluster_ip=cluster_ip, headless=headless,
        type=type_, ports=ports, selector=selector,
        endpoints=tuple(a for _, a in endpoints) if isinstance(endpoints, list) else INVALID,
        session_affinity=affinity, affinity_timeout=timeout,
        external_traffic_policy=external_policy, internal_traffic_policy=internal_policy,
        external_ips=(tuple(a for _, a in external_ips) if isinstance(external_ips, list)
                      else INVALID),
        load_balancer=load_balancer,
    )


def read_service_ports(reader: Reader, table: Mapping[str, Any], path: str, type_: str | Marker,
                       headless: bool) -> tuple[ServicePortDraft, ...] | Marker:
    raw = reader.take(table, path, "ports", "an array of tables", [])
    if raw is INVALID:
        return INVALID
    ports_path = key_path(path, "ports")
    if not raw and not headless:
        return reader.fail(ports_path, "a service with a cluster IP needs at least one port")
    drafts: list[ServicePortDraft] = []
    names: dict[str, str] = {}
    bindings: dict[tuple[str, int], str] = {}
    valid = True
    for index, entry in enumerate(raw):
        port_path = f"{ports_path}[{index}]"
        if not isinstance(entry, dict):
            reader.fail(port_path, f"expected a table, got {type_name(entry)}")
            valid = False
            continue
        errors_before = len(reader.errors)
        reader.check_keys(entry, port_path, SERVICE_PORT_KEYS)
        name = reader.take(entry, port_path, "name", "a string", REQUIRED if len(raw) > 1 else "")
        if isinstance(name, str) and name:
            if problem := dns_label_problem(name, DNS_LABEL_MAX):
                reader.fail(key_path(port_path, "name"), problem)
            elif name in names:
                reader.fail(key_path(port_path, "name"), f"duplicate port name {name!r} in this "
                                                         f"service (first used at {names[name]})")
            else:
                names[name] = key_path(port_path, "name")
        elif name == "" and "name" in entry:
            reader.fail(key_path(port_path, "name"), "must not be empty")
        protocol = reader.take_choice(entry, port_path, "protocol", PROTOCOLS, "tcp")
        number = reader.take_int(entry, port_path, "port", REQUIRED, 1, 65535)
        if isinstance(number, int) and isinstance(protocol, str):
            if (protocol, number) in bindings:
                reader.fail(key_path(port_path, "port"),
                            f"{protocol} port {number} is already declared at "
                            f"{bindings[protocol, number]}")
            else:
                bindings[protocol, number] = key_path(port_path, "port")
        target: Any = entry.get("target_port", number)
        target_path = key_path(port_path, "target_port")
        if target is INVALID:
            pass  # defaults to a port that is itself wrong; its error says so
        elif isinstance(target, bool) or not isinstance(target, (int, str)):
            reader.fail(target_path, f"expected a port number or a container port name, got "
                                     f"{type_name(target)}")
        elif isinstance(target, int) and not 1 <= target <= 65535:
            reader.fail(target_path, f"must be between 1 and 65535, got {target}")
        elif isinstance(target, str) and (problem := port_name_problem(target)):
            reader.fail(target_path, problem)
        node_port = reader.take_int(entry, port_path, "node_port", None, *model.NODE_PORT_RANGE)
        if "node_port" in entry and type_ == "ClusterIP":
            reader.fail(key_path(port_path, "node_port"), "only a service of type NodePort has "
                                                          "node ports")
        if len(reader.errors) != errors_before:
            valid = False
            continue
        assert isinstance(protocol, str) and isinstance(number, int)
        assert node_port is None or isinstance(node_port, int)
        drafts.append(ServicePortDraft(port_path, name, protocol, number, target, node_port))
    return tuple(drafts) if valid else INVALID


def check_services(reader: Reader, drafts: Sequence[ServiceDraft], context: ServiceContext,
                   kept: Sequence[model.Service] = (),
                   previous: Mapping[str, model.Service] | None = None,
                   replace: bool = True) -> list[model.Service]:
    """Check what concerns services together, allocate cluster IPs and node ports, build.

    ``kept`` are the services of a running node that stay as they are: their names, cluster
    IPs and node ports are taken. ``previous`` maps the key of a service being replaced to its
    running version, whose allocated cluster IP and node ports it keeps where still free, so
    that re-applying the same file changes nothing. With ``replace`` False a draft may not
    name a kept service.
    """
    previous = previous or {}
    kept_keys = {service.key: service for service in kept}
    seen: dict[str, str] = {}
    for draft in drafts:
        key = draft.key
        if key is None:
            continue
        if key in seen:
            reader.fail(key_path(draft.path, "name"),
                        f"duplicate service {key} (first at {seen[key]})")
        elif key in kept_keys and not replace:
            reader.fail(key_path(draft.path, "name"), f"service {key} already exists; change it "
                                                      "with `vswitchctl service set` or `apply`")
        seen.setdefault(key, draft.path)

    service_cidr = context.cluster.service_cidr if context.cluster is not None else None
    dns_ip = context.cluster.dns_ip if context.cluster is not None else None
    cluster_ips = allocate_cluster_ips(reader, drafts, service_cidr, kept, previous, dns_ip)
    node_ports = allocate_node_ports(reader, drafts, kept, previous)
    services: list[model.Service] = []
    for draft, cluster_ip, ports in zip(drafts, cluster_ips, node_ports):
        if draft.valid and not isinstance(cluster_ip, Marker) and not isinstance(ports, Marker):
            services.append(draft.build(cluster_ip, ports))
    return services

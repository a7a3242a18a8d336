"""``[cluster]``: the cluster's pod CIDR, service CIDR, hairpin address and conntrack size, how
this node learns of the others (``store``: static ``[[peers]]`` alone, or etcd), and cluster DNS
(``dns``, ``domain``, ``dns_ip``, ``dns_upstreams``).

Every value has a default, so a file without the section still gets cluster settings: the
cluster CIDR defaults to the smallest network holding every segment (``node.pod_cidr`` itself
on a node with only the default segment). Cluster IPs must never be pod addresses, and the
hairpin address must be one no pod or service has. The DNS address is a cluster IP that no
service of the file may have (the allocator skips it); ``dns = false`` leaves it unset.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from vswitch import model
from vswitch.config.reader import (
    INVALID,
    PREFIX_MAX,
    PREFIX_MIN,
    REQUIRED,
    Marker,
    Reader,
    type_name,
)
from vswitch.config.addresses import address_problem
from vswitch.config.names import DNS_LABEL_MAX, dns_label_problem
from vswitch.config.segments import SegmentDraft
from vswitch.model import Topology

CLUSTER_KEYS = ("cidr", "service_cidr", "hairpin_address", "conntrack_max", "store",
                "etcd_endpoints", "lease_ttl", "node_prefix_length", "dns", "domain", "dns_ip",
                "dns_upstreams")
STORES = (model.STORE_STATIC, model.STORE_ETCD)
# A lease shorter than 2 s leaves no room for a keep-alive (sent at a third of the TTL) to
# arrive before it expires, and the node would flap.
LEASE_TTL_MIN = 2
CONNTRACK_MAX_MIN = 1024
CONNTRACK_MAX_MAX = 4194304
# Names under the domain get up to four labels of their own (_port._proto.service.namespace.svc).
DOMAIN_MAX = 100
DNS_IP_OFFSET = 10  # the default cluster DNS address: the tenth address of the service CIDR


def covering_network(networks: Sequence[IPv4Network]) -> IPv4Network | Marker:
    """The smallest network that contains every one of ``networks``."""
    if not networks:
        return INVALID
    covering = networks[0]
    while not all(network.subnet_of(covering) for network in networks):
        covering = covering.supernet()
    return covering


def runtime_cluster(topology: Topology) -> model.Cluster:
    """The topology's cluster settings; a topology built without them gets the loader's defaults."""
    if topology.cluster is not None:
        return topology.cluster
    networks = [segment.cidr for segment in topology.all_segments()]
    covering = covering_network(networks)
    assert isinstance(covering, IPv4Network)
    service_cidr = IPv4Network(model.DEFAULT_SERVICE_CIDR)
    return model.Cluster(cidr=covering, service_cidr=service_cidr,
                         dns_ip=default_dns_ip(service_cidr))


def default_dns_ip(service_cidr: IPv4Network) -> IPv4Address | None:
    """The tenth address of the service CIDR (Kubernetes' kube-dns convention); None when the
    CIDR is too small to have one."""
    if service_cidr.num_addresses - 2 < DNS_IP_OFFSET:
        return None
    return service_cidr.network_address + DNS_IP_OFFSET


def domain_problem(text: str) -> str | None:
    """Why ``text`` cannot be the cluster domain: it must be a DNS name of lowercase labels."""
    if len(text) > DOMAIN_MAX:
        return f"{text!r} is {len(text)} characters long; at most {DOMAIN_MAX} are allowed"
    problems = [label for label in text.split(".") if dns_label_problem(label, DNS_LABEL_MAX)]
    if problems:
        return (f"{text!r} is not a domain name like 'cluster.local': {problems[0]!r} is not "
                "a DNS-1123 label (lowercase letters, digits and '-')")
    return None


def read_dns(reader: Reader, table: Mapping[str, Any],
             service_cidr: IPv4Network | Marker) -> tuple[Any, Any, Any]:
    """``dns``, ``domain``, ``dns_ip`` and ``dns_upstreams``: the cluster DNS settings, as
    (domain, dns_ip, upstreams); dns_ip is None when ``dns = false``."""
    enabled = reader.take(table, "cluster", "dns", "a boolean", True)
    domain = reader.take(table, "cluster", "domain", "a string", model.DEFAULT_CLUSTER_DOMAIN)
    if isinstance(domain, str) and (problem := domain_problem(domain)):
        domain = reader.fail("cluster.domain", problem)
    dns_ip = reader.take_address(table, "cluster", "dns_ip")
    if isinstance(dns_ip, IPv4Address) and isinstance(service_cidr, IPv4Network):
        where = f"cluster.service_cidr {service_cidr}"
        if problem := address_problem(dns_ip, service_cidr, where):
            dns_ip = reader.fail("cluster.dns_ip", f"{problem}; the DNS address is a cluster IP")
    elif dns_ip is None and isinstance(service_cidr, IPv4Network) and enabled is True:
        dns_ip = default_dns_ip(service_cidr)
        if dns_ip is None:
            dns_ip = reader.fail("cluster.service_cidr",
                                 f"{service_cidr} has no tenth address for cluster DNS; set "
                                 "cluster.dns_ip or cluster.dns = false")
    upstreams: Any = None
    if "dns_upstreams" in table:
        listed = reader.take_addresses(table, "cluster", "dns_upstreams")
        upstreams = (tuple(address for _, address in listed) if isinstance(listed, list)
                     else INVALID)
    if enabled is False:
        dns_ip = None
    elif enabled is INVALID:
        dns_ip = INVALID
    return domain, dns_ip, upstreams


def endpoint_url_problem(text: str) -> str | None:
    """An etcd endpoint is ``http://HOST:PORT`` (or https), nothing more."""
    example = "expected a URL like http://192.0.2.10:2379"
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        return f"{text!r} is not a valid URL ({exc}); {example}"
    if url.scheme not in ("http", "https"):
        return f"{text!r} must start with http:// or https://; {example}"
    if not url.hostname:
        return f"{text!r} has no host; {example}"
    if port is None:
        return f"{text!r} has no port; {example}"
    if url.username is not None or url.path not in ("", "/") or url.query or url.fragment:
        return f"{text!r} must be only scheme, host and port; {example}"
    return None


def read_store(reader: Reader, table: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``store``, ``etcd_endpoints`` and ``lease_ttl``: how this node learns of the others."""
    store = reader.take_choice(table, "cluster", "store", STORES, model.STORE_STATIC)
    endpoints = reader.take(table, "cluster", "etcd_endpoints", "an array",
                            REQUIRED if store == model.STORE_ETCD else [])
    if isinstance(endpoints, list):
        if endpoints and store != model.STORE_ETCD:
            endpoints = reader.fail("cluster.etcd_endpoints", 'only used with store = "etcd"')
        elif store == model.STORE_ETCD and not endpoints:
            endpoints = reader.fail("cluster.etcd_endpoints", "needs at least one endpoint")
    if isinstance(endpoints, list):
        seen: set[str] = set()
        for index, item in enumerate(endpoints):
            path = f"cluster.etcd_endpoints[{index}]"
            if not isinstance(item, str):
                endpoints = reader.fail(path, f"expected a string, got {type_name(item)}")
            elif problem := endpoint_url_problem(item):
                endpoints = reader.fail(path, problem)
            elif item in seen:
                endpoints = reader.fail(path, f"{item} is listed twice")
            else:
                seen.add(item)
    lease_ttl = reader.take_int(table, "cluster", "lease_ttl", model.DEFAULT_LEASE_TTL,
                                LEASE_TTL_MIN)
    if "lease_ttl" in table and store != model.STORE_ETCD and lease_ttl is not INVALID:
        lease_ttl = reader.fail("cluster.lease_ttl", 'only used with store = "etcd"')
    return store, endpoints, lease_ttl


def read_cluster(reader: Reader, document: Mapping[str, Any],
                 segments: Sequence[SegmentDraft],
                 peer_networks: Sequence[tuple[str, IPv4Network]] = ()) -> model.Cluster | Marker:
    """``[cluster]``; the default CIDR also covers ``peer_networks`` (the peers' pod CIDRs),
    which the peers' own checks then compare with the rest (see ``peers``)."""
    table = reader.section(document, "cluster", required=False)
    if table is INVALID:
        return INVALID
    reader.check_keys(table, "cluster", CLUSTER_KEYS)
    networks = [(s.cidr_path, s.cidr) for s in segments if isinstance(s.cidr, IPv4Network)]
    all_known = len(networks) == len(segments) and bool(networks or peer_networks)

    cidr = reader.take(table, "cluster", "cidr", "a string", None)
    if isinstance(cidr, str):
        cidr = reader.parse_cidr(cidr, "cluster.cidr")
        if isinstance(cidr, IPv4Network):
            outside = next(((label, network) for label, network in networks
                            if not network.subnet_of(cidr)), None)
            if outside is not None:
                cidr = reader.fail(
                    "cluster.cidr",
                    f"{cidr} does not contain {outside[0]} {outside[1]}; the cluster "
                    "CIDR must hold every pod address of the node",
                )
    elif cidr is None:
        cidr = (covering_network([network for _, network in [*networks, *peer_networks]])
                if all_known else INVALID)
    # A default CIDR only promises to cover the segments; on a node whose segments lie far
    # apart it is wide, so the service CIDR and the hairpin address are checked against the
    # segments themselves then, not against the whole default.
    explicit = cidr if "cidr" in table else None

    service_cidr = reader.take(table, "cluster", "service_cidr", "a string", None)
    if service_cidr is None:
        service_cidr = IPv4Network(model.DEFAULT_SERVICE_CIDR)
    elif isinstance(service_cidr, str):
        service_cidr = reader.parse_cidr(service_cidr, "cluster.service_cidr")
    if isinstance(service_cidr, IPv4Network):
        clash = next(((label, network) for label, network in networks
                      if network.overlaps(service_cidr)), None)
        if clash is not None:
            service_cidr = reader.fail(
                "cluster.service_cidr",
                f"{service_cidr} overlaps {clash[0]} {clash[1]}; cluster IPs must "
                "not be pod addresses",
            )
        elif isinstance(explicit, IPv4Network) and explicit.overlaps(service_cidr):
            service_cidr = reader.fail(
                "cluster.service_cidr",
                f"{service_cidr} overlaps cluster.cidr {explicit}; cluster IPs must not be "
                "pod addresses",
            )

    hairpin = reader.take_address(table, "cluster", "hairpin_address")
    if hairpin is None:
        # The model's default is the only copy.
        default = model.Cluster.__dataclass_fields__["hairpin_address"].default
        assert isinstance(default, IPv4Address)
        hairpin = default
    if isinstance(hairpin, IPv4Address):
        checks = [(explicit, "cluster.cidr"), (service_cidr, "cluster.service_cidr")]
        checks += [(network, label) for label, network in networks]
        for network, label in checks:
            if isinstance(network, IPv4Network) and hairpin in network:
                hairpin = reader.fail(
                    "cluster.hairpin_address",
                    f"{hairpin} is inside {label} {network}; the hairpin address must be "
                    "one no pod or service has",
                )
                break

    conntrack_max = reader.take_int(table, "cluster", "conntrack_max",
                                    model.DEFAULT_CONNTRACK_MAX, CONNTRACK_MAX_MIN,
                                    CONNTRACK_MAX_MAX)
    store, endpoints, lease_ttl = read_store(reader, table)
    prefix = reader.take_int(table, "cluster", "node_prefix_length",
                             model.DEFAULT_NODE_PREFIX_LENGTH, PREFIX_MIN, PREFIX_MAX)
    domain, dns_ip, upstreams = read_dns(reader, table, service_cidr)
    values = (cidr, service_cidr, hairpin, conntrack_max, store, endpoints, lease_ttl, prefix,
              domain, dns_ip, upstreams)
    if INVALID in values:
        return INVALID
    assert isinstance(cidr, IPv4Network) and isinstance(service_cidr, IPv4Network)
    assert isinstance(hairpin, IPv4Address) and isinstance(conntrack_max, int)
    assert isinstance(store, str) and isinstance(endpoints, list)
    assert isinstance(lease_ttl, int) and isinstance(prefix, int) and isinstance(domain, str)
    return model.Cluster(cidr=cidr, service_cidr=service_cidr, hairpin_address=hairpin,
                         conntrack_max=conntrack_max, store=store,
                         etcd_endpoints=tuple(endpoints), lease_ttl=lease_ttl,
                         node_prefix_length=prefix, domain=domain, dns_ip=dns_ip,
                         dns_upstreams=upstreams)


def resolve_auto_cidr(reader: Reader, document: Mapping[str, Any],
                      cluster: model.Cluster | Marker,
                      peer_networks: Sequence[tuple[str, IPv4Network]],
                      assigned: IPv4Network | None,
                      previous: Topology | None) -> IPv4Network | Marker:
    """The subnet of ``node.pod_cidr = "auto"``: leased from ``cluster.cidr`` by the store.

    ``assigned`` is the lease the daemon got; on a reload the running one is kept. Without
    either (``vswitchd --check``, or before the lease) it is a stand-in of the leased size: the
    first subnet of the pool that no static peer has. Everything that depends on where the
    subnet lies is refused with "auto", so the stand-in validates exactly what a lease would.
    """
    table = document.get("cluster")
    if not (isinstance(table, dict) and "cidr" in table):
        return reader.fail("cluster.cidr", 'required with node.pod_cidr = "auto": the pool '
                                           "each node's subnet is leased from")
    if not isinstance(cluster, model.Cluster):
        return INVALID
    if cluster.store == model.STORE_STATIC:
        return reader.fail("node.pod_cidr", '"auto" needs a cluster store that leases the '
                                            'subnet: set [cluster] store = "etcd"')
    pool, prefix = cluster.cidr, cluster.node_prefix_length
    if prefix < pool.prefixlen:
        return reader.fail("cluster.node_prefix_length",
                           f"/{prefix} is larger than cluster.cidr {pool}")
    if assigned is None and previous is not None and previous.node.pod_cidr_auto:
        assigned = previous.node.pod_cidr
    if assigned is not None:
        if assigned.prefixlen != prefix or not assigned.subnet_of(pool):
            return reader.fail("node.pod_cidr", f"the leased subnet {assigned} is not a /{prefix} "
                                                f"inside cluster.cidr {pool}")
        return assigned
    taken = [network for _, network in peer_networks] + [cluster.service_cidr]
    free = next((subnet for subnet in pool.subnets(new_prefix=prefix)
                 if not any(subnet.overlaps(network) for network in taken)), None)
    if free is None:
        return reader.fail("node.pod_cidr", f'"auto": no /{prefix} of cluster.cidr {pool} is '
                                            "left besides the peers' pod CIDRs")
    return free

"""``[cluster]``: the cluster's pod CIDR, service CIDR, hairpin address and conntrack size.

Every value has a default, so a file without the section still gets cluster settings: the
cluster CIDR defaults to the smallest network holding every segment (``node.pod_cidr`` itself
on a node with only the default segment). Cluster IPs must never be pod addresses, and the
hairpin address must be one no pod or service has.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.reader import INVALID, Marker, Reader
from vswitch.config.segments import SegmentDraft
from vswitch.model import Topology

CLUSTER_KEYS = ("cidr", "service_cidr", "hairpin_address", "conntrack_max")
CONNTRACK_MAX_MIN = 1024
CONNTRACK_MAX_MAX = 4194304


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
    return model.Cluster(cidr=covering, service_cidr=IPv4Network(model.DEFAULT_SERVICE_CIDR))


def read_cluster(reader: Reader, document: Mapping[str, Any],
                 segments: Sequence[SegmentDraft]) -> model.Cluster | Marker:
    table = reader.section(document, "cluster", required=False)
    if table is INVALID:
        return INVALID
    reader.check_keys(table, "cluster", CLUSTER_KEYS)
    networks = [(s.cidr_path, s.cidr) for s in segments if isinstance(s.cidr, IPv4Network)]
    all_known = len(networks) == len(segments)

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
        cidr = covering_network([network for _, network in networks]) if all_known else INVALID
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
    values = (cidr, service_cidr, hairpin, conntrack_max)
    if INVALID in values:
        return INVALID
    assert isinstance(cidr, IPv4Network) and isinstance(service_cidr, IPv4Network)
    assert isinstance(hairpin, IPv4Address) and isinstance(conntrack_max, int)
    return model.Cluster(cidr=cidr, service_cidr=service_cidr, hairpin_address=hairpin,
                         conntrack_max=conntrack_max)

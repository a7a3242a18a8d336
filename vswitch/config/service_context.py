"""What a service is checked against: the cluster, the uplink, the segments, the node's addresses.

A context is made either from the sections of the file being read (``of``) or from a running
topology (``of_topology``), so that a service reads the same way in a whole file, in ``vswitchctl
apply`` and in ``vswitchctl service set``.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Mapping, Sequence

from vswitch import model
from vswitch.config.cluster import runtime_cluster
from vswitch.config.reader import Marker
from vswitch.config.segments import SegmentDraft, running_segments
from vswitch.model import Topology


@dataclass(frozen=True)
class ServiceContext:
    """``cluster`` is None when ``[cluster]`` is itself wrong (its error explains it, and checks
    against it are skipped); ``uplink`` is INVALID likewise."""

    cluster: model.Cluster | None
    uplink: model.Uplink | None | Marker
    segments: tuple[tuple[str, IPv4Network], ...]
    node_addresses: Mapping[IPv4Address, str]
    # The pod CIDRs of the static peers, with the key that gives each (or the peer's name).
    peers: tuple[tuple[str, IPv4Network], ...] = ()

    @classmethod
    def of(cls, cluster: model.Cluster | Marker, uplink: model.Uplink | None | Marker,
           segments: Sequence[SegmentDraft],
           host_address: IPv4Address | Marker,
           peers: Sequence[tuple[str, IPv4Network]] = ()) -> ServiceContext:
        addresses: dict[IPv4Address, str] = {}
        if isinstance(host_address, IPv4Address):
            addresses[host_address] = "host_port.address"
        if isinstance(uplink, model.Uplink):
            addresses[uplink.address.ip] = "uplink.address (the node address)"
            addresses[uplink.gateway] = "uplink.gateway"
        return cls(cluster=cluster if isinstance(cluster, model.Cluster) else None,
                   uplink=uplink,
                   segments=tuple((s.cidr_path, s.cidr) for s in segments
                                  if isinstance(s.cidr, IPv4Network)),
                   node_addresses=MappingProxyType(addresses), peers=tuple(peers))

    @classmethod
    def of_topology(cls, topology: Topology) -> ServiceContext:
        return cls.of(runtime_cluster(topology), topology.uplink, running_segments(topology),
                      topology.host_port.address.ip,
                      [(f"peer {peer.name}", peer.pod_cidr) for peer in topology.peers])

    def endpoint_problem(self, address: IPv4Address) -> str | None:
        """Why ``address`` cannot be an explicit endpoint, or None.

        With peers, a pod address (inside the cluster CIDR) must belong to some node: a local
        segment or a peer's pod CIDR; the overlay has nowhere to send any other. Addresses
        outside the cluster (hosts) stay allowed, as without peers.
        """
        cluster = self.cluster
        if cluster is None:
            return None
        if address in cluster.service_cidr:
            return (f"{address} is inside cluster.service_cidr {cluster.service_cidr}; an "
                    "endpoint is a pod or host address")
        if not self.peers or address not in cluster.cidr:
            return None
        if any(address in cidr for _, cidr in (*self.segments, *self.peers)):
            return None
        return (f"{address} is inside cluster.cidr {cluster.cidr} but in no node's pod CIDR "
                "(neither a segment of this node nor a peer's pod_cidr)")

    def external_ip_problem(self, address: IPv4Address) -> str | None:
        """Why ``address`` cannot be an external IP, or None.

        External IPs are addresses outside clients use; a pod's or the node's would be hijacked.
        """
        if address in self.node_addresses:
            return f"{address} is {self.node_addresses[address]}"
        for label, cidr in self.segments:
            if address in cidr:
                return f"{address} is inside {label} {cidr}: a pod or gateway address"
        cluster = self.cluster
        if cluster is not None:
            if address in cluster.cidr:
                return f"{address} is inside cluster.cidr {cluster.cidr}: a pod address"
            if address in cluster.service_cidr:
                return (f"{address} is inside cluster.service_cidr {cluster.service_cidr}; "
                        "an external IP is an address outside the cluster")
            if address == cluster.hairpin_address:
                return f"{address} is cluster.hairpin_address"
        return None

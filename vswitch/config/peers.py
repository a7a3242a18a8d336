"""``[[peers]]``: the other nodes of the cluster, written down (static membership).

Theory of operation: a peer is reached through the overlay, so peers need ``[overlay]``. Its pod
CIDR is routed to it, so no address may belong to two nodes: the pod CIDRs of the peers, this
node's segments and the service CIDR are disjoint, and each peer's lies inside the cluster CIDR
(whose default covers them; see ``cluster``). Its ``address`` is an underlay host address, outside
the cluster, never this node's own. Names and addresses are unique across the cluster, this node
included, and so are VTEP MACs, which the forwarding entries are keyed on.

Peers are read in two steps: ``read_peers`` checks each entry by itself before ``[cluster]`` is
read (the default cluster CIDR covers the peers' pod CIDRs), and ``check_peers`` checks them
against the cluster, the uplink and the overlay afterwards. A later entry carries the error of a
clash with an earlier one, as segments do.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.names import dns_label_problem
from vswitch.config.node import NODE_NAME_MAX
from vswitch.config.overlay import take_mac
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader, key_path
from vswitch.config.segments import SegmentDraft

PEER_KEYS = ("name", "address", "pod_cidr", "vtep_mac")


@dataclass(frozen=True)
class PeerDraft:
    """A peer as written; fields are INVALID where they are wrong, ``vtep_mac`` None: derived."""

    path: str
    name: str | Marker
    address: IPv4Address | Marker
    pod_cidr: IPv4Network | Marker
    vtep_mac: str | None | Marker

    @property
    def valid(self) -> bool:
        return INVALID not in (self.name, self.address, self.pod_cidr, self.vtep_mac)

    def build(self) -> model.Peer:
        assert isinstance(self.name, str) and isinstance(self.address, IPv4Address)
        assert isinstance(self.pod_cidr, IPv4Network) and not isinstance(self.vtep_mac, Marker)
        return model.Peer(name=self.name, address=self.address, pod_cidr=self.pod_cidr,
                          vtep_mac=self.vtep_mac or model.mac_for_ip(self.address))


def host_address_problem(address: IPv4Address) -> str | None:
    """Why ``address`` cannot be a node's underlay address (a unicast host), or None."""
    for test, what in ((address.is_unspecified, "the unspecified address"),
                       (address.is_loopback, "a loopback address"),
                       (address.is_multicast, "a multicast address"),
                       (address == IPv4Address("255.255.255.255"), "the broadcast address"),
                       (address.is_reserved, "a reserved address (240.0.0.0/4)"),
                       (address.is_link_local, "a link-local address")):
        if test:
            return f"{address} is {what}, not a node's underlay address"
    return None


def read_peers(reader: Reader, document: Mapping[str, Any],
               node_name: str | Marker) -> list[PeerDraft]:
    drafts: list[PeerDraft] = []
    names: dict[str, str] = {}
    addresses: dict[IPv4Address, str] = {}
    for path, entry in reader.entries(document, "", "peers"):
        reader.check_keys(entry, path, PEER_KEYS)
        name = reader.take(entry, path, "name", "a string", REQUIRED)
        name_path = key_path(path, "name")
        if isinstance(name, str):
            if problem := dns_label_problem(name, NODE_NAME_MAX):
                name = reader.fail(name_path, problem)
            elif name == node_name:
                name = reader.fail(name_path, f"{name!r} is node.name, this node itself")
            elif name in names:
                name = reader.fail(name_path, f"duplicate peer name {name!r} (first used at "
                                              f"{names[name]})")
            else:
                names[name] = name_path

        address = reader.take(entry, path, "address", "a string", REQUIRED)
        address_path = key_path(path, "address")
        if isinstance(address, str):
            if "/" in address:
                address = reader.fail(address_path, f"{address!r} is not a host address; give "
                                                    "the peer's underlay address without a "
                                                    "prefix length")
            else:
                address = reader.take_address(entry, path, "address")
        if isinstance(address, IPv4Address):
            if problem := host_address_problem(address):
                address = reader.fail(address_path, problem)
            elif address in addresses:
                address = reader.fail(address_path, f"{address} is already the address of "
                                                    f"{addresses[address]}")
            else:
                addresses[address] = path

        pod_cidr = reader.take(entry, path, "pod_cidr", "a string", REQUIRED)
        if isinstance(pod_cidr, str):
            pod_cidr = reader.parse_cidr(pod_cidr, key_path(path, "pod_cidr"))
        vtep_mac = take_mac(reader, entry, path)
        drafts.append(PeerDraft(path, name, address, pod_cidr, vtep_mac))
    return drafts


def check_pod_cidrs(reader: Reader, peers: Sequence[PeerDraft],
                    segments: Sequence[SegmentDraft]) -> list[PeerDraft]:
    """A peer's pod CIDR overlaps no segment of this node and no earlier peer's."""
    taken = [(s.cidr_path, s.cidr) for s in segments if isinstance(s.cidr, IPv4Network)]
    checked = []
    for peer in peers:
        if isinstance(peer.pod_cidr, IPv4Network):
            clash = next(((label, cidr) for label, cidr in taken
                          if cidr.overlaps(peer.pod_cidr)), None)
            if clash is not None:
                reader.fail(key_path(peer.path, "pod_cidr"),
                            f"{peer.pod_cidr} overlaps {clash[0]} {clash[1]}; every pod address "
                            "belongs to one node")
                peer = dataclasses.replace(peer, pod_cidr=INVALID)
            else:
                taken.append((key_path(peer.path, "pod_cidr"), peer.pod_cidr))
        checked.append(peer)
    return checked


def peer_networks(peers: Sequence[PeerDraft]) -> list[tuple[str, IPv4Network]]:
    return [(key_path(p.path, "pod_cidr"), p.pod_cidr) for p in peers
            if isinstance(p.pod_cidr, IPv4Network)]


def check_peers(reader: Reader, document: Mapping[str, Any], peers: Sequence[PeerDraft],
                segments: Sequence[SegmentDraft], cluster: model.Cluster | Marker,
                uplink: model.Uplink | None | Marker,
                overlay: model.Overlay | None | Marker) -> tuple[model.Peer, ...] | Marker:
    """The peers checked against the cluster, the uplink and the overlay, then built."""
    if not peers:
        return ()
    if overlay is None:
        return reader.fail("peers", "peers are reached through the overlay; add an [overlay] "
                                    "section (and an [uplink] it rides on)")
    cluster_table = document.get("cluster")
    explicit = isinstance(cluster_table, dict) and "cidr" in cluster_table
    segment_networks = [(s.cidr_path, s.cidr) for s in segments
                        if isinstance(s.cidr, IPv4Network)]
    all_pods = segment_networks + peer_networks(peers)
    macs: dict[str, str] = {}
    if isinstance(overlay, model.Overlay):
        macs[overlay.vtep_mac] = "overlay.vtep_mac (this node's VTEP)"
    valid = True
    for peer in peers:
        errors_before = len(reader.errors)
        cidr_path = key_path(peer.path, "pod_cidr")
        if isinstance(peer.pod_cidr, IPv4Network) and isinstance(cluster, model.Cluster):
            if explicit and not peer.pod_cidr.subnet_of(cluster.cidr):
                reader.fail(cidr_path, f"{peer.pod_cidr} is outside cluster.cidr {cluster.cidr}; "
                                       "the cluster CIDR holds every pod address of the cluster")
            elif peer.pod_cidr.overlaps(cluster.service_cidr):
                reader.fail(cidr_path, f"{peer.pod_cidr} overlaps cluster.service_cidr "
                                       f"{cluster.service_cidr}; cluster IPs must not be pod "
                                       "addresses")
            elif cluster.hairpin_address in peer.pod_cidr:
                reader.fail(cidr_path, f"{peer.pod_cidr} contains cluster.hairpin_address "
                                       f"{cluster.hairpin_address}")
        address_ok = isinstance(peer.address, IPv4Address)
        if isinstance(peer.address, IPv4Address):
            if problem := underlay_problem(peer.address, uplink, cluster, all_pods):
                reader.fail(key_path(peer.path, "address"), problem)
                address_ok = False
        if (address_ok and isinstance(peer.address, IPv4Address)
                and not isinstance(peer.vtep_mac, Marker)):
            mac = peer.vtep_mac or model.mac_for_ip(peer.address)
            if mac in macs:
                reader.fail(key_path(peer.path, "vtep_mac"),
                            f"{mac} is already the VTEP MAC of {macs[mac]}"
                            + ("" if peer.vtep_mac else " (derived from address; set vtep_mac)"))
            else:
                macs[mac] = peer.path
        if len(reader.errors) != errors_before or not peer.valid:
            valid = False
    if not valid or not isinstance(overlay, model.Overlay):
        return INVALID
    return tuple(peer.build() for peer in peers)


def underlay_problem(address: IPv4Address, uplink: model.Uplink | None | Marker,
                     cluster: model.Cluster | Marker,
                     pod_networks: Sequence[tuple[str, IPv4Network]]) -> str | None:
    """Why ``address`` cannot be another node's underlay address here, or None."""
    if isinstance(uplink, model.Uplink):
        network = uplink.address.network
        if address == uplink.address.ip:
            return f"{address} is uplink.address, this node's own underlay address"
        if address == uplink.gateway:
            return f"{address} is uplink.gateway, the far side of this node's uplink"
        if address in (network.network_address, network.broadcast_address):
            return f"{address} is the network or broadcast address of the uplink network {network}"
    for label, network in pod_networks:
        if address in network:
            return f"{address} is inside {label} {network}; an underlay address is outside the " \
                   "cluster"
    if isinstance(cluster, model.Cluster):
        if address in cluster.service_cidr:
            return f"{address} is inside cluster.service_cidr {cluster.service_cidr}"
        if address in cluster.cidr:
            return f"{address} is inside cluster.cidr {cluster.cidr}; an underlay address is " \
                   "outside the cluster"
        if address == cluster.hairpin_address:
            return f"{address} is cluster.hairpin_address"
    return None

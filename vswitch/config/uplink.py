"""``[uplink]``: the node's link to the outside world, with its address, gateway and far side.

The uplink network is the outside world: no pod, service or hairpin address may lie in it. The
far side may live in a named network namespace, which must not look like a pod's, and may be a
port of a Linux bridge there (``bridge``), which makes several nodes on one host share one L2
underlay.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.addresses import address_problem
from vswitch.config.names import interface_name_problem, netns_name_problem
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader
from vswitch.config.segments import SegmentDraft

UPLINK_KEYS = ("address", "gateway", "netns", "mtu", "bridge")


def read_uplink(reader: Reader, document: Mapping[str, Any], node_name: str | Marker,
                node_mtu: int | Marker, cluster: model.Cluster | Marker,
                segments: Sequence[SegmentDraft]) -> model.Uplink | None | Marker:
    if "uplink" not in document:
        return None
    table = reader.section(document, "uplink", required=False)
    if table is INVALID:
        return INVALID
    reader.check_keys(table, "uplink", UPLINK_KEYS)

    address = reader.take(table, "uplink", "address", "a string", REQUIRED)
    if isinstance(address, str):
        address = reader.parse_interface(address, "uplink.address")
    if isinstance(address, IPv4Interface):
        cluster_table = document.get("cluster")
        cluster_explicit = isinstance(cluster_table, dict) and "cidr" in cluster_table
        address = check_uplink_network(reader, address, cluster, segments, cluster_explicit)

    gateway = reader.take(table, "uplink", "gateway", "a string", REQUIRED)
    if isinstance(gateway, str):
        gateway = reader.take_address(table, "uplink", "gateway")
    if isinstance(gateway, IPv4Address) and isinstance(address, IPv4Interface):
        network = address.network
        if problem := address_problem(gateway, network, f"uplink.address's network {network}"):
            gateway = reader.fail("uplink.gateway", problem)
        elif gateway == address.ip:
            gateway = reader.fail("uplink.gateway", f"{gateway} is uplink.address itself; the "
                                                    "gateway is the far side's address")

    netns = reader.take(table, "uplink", "netns", "a string", None)
    if isinstance(netns, str) and (problem := netns_name_problem(netns)):
        netns = reader.fail("uplink.netns", problem)

    bridge = reader.take(table, "uplink", "bridge", "a string", None)
    if isinstance(bridge, str) and (problem := interface_name_problem(bridge)):
        bridge = reader.fail("uplink.bridge", problem)

    mtu = reader.take_mtu(table, "uplink", node_mtu)
    if INVALID in (address, gateway, netns, mtu, bridge) or not isinstance(node_name, str):
        return INVALID
    assert isinstance(address, IPv4Interface) and isinstance(gateway, IPv4Address)
    assert isinstance(mtu, int)
    return model.Uplink(address=address, gateway=gateway, netns=netns,
                        name=model.kernel_name("vsu", node_name),
                        mac=model.mac_for_ip(address.ip), far_mac=model.mac_for_ip(gateway),
                        mtu=mtu, bridge=bridge)


def check_uplink_network(reader: Reader, address: IPv4Interface, cluster: model.Cluster | Marker,
                         segments: Sequence[SegmentDraft],
                         cluster_explicit: bool) -> IPv4Interface | Marker:
    """The uplink network is the outside world: no pod, service or hairpin address in it."""
    network = address.network
    clash = next((s for s in segments
                  if isinstance(s.cidr, IPv4Network) and s.cidr.overlaps(network)), None)
    if clash is not None:
        return reader.fail("uplink.address", f"{network} overlaps {clash.cidr_path} {clash.cidr}; "
                                             "the uplink network must be outside the node's "
                                             "segments")
    if isinstance(cluster, model.Cluster):
        for other, label in ((cluster.cidr, "cluster.cidr"),
                             (cluster.service_cidr, "cluster.service_cidr")):
            if other.overlaps(network):
                if label == "cluster.cidr" and not cluster_explicit:
                    label = "the default cluster CIDR (the smallest network holding every " \
                            "segment; set [cluster] cidr)"
                return reader.fail("uplink.address", f"{network} overlaps {label} {other}; "
                                                     "the uplink network must be outside the "
                                                     "cluster")
        if cluster.hairpin_address in network:
            return reader.fail("uplink.address", f"{network} contains cluster.hairpin_address "
                                                 f"{cluster.hairpin_address}")
    return address

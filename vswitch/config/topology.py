"""A whole topology file: every section read in dependency order, then the frozen ``Topology``.

Sections are read in the order their checks need one another (the node before its segments,
the segments before routes, pods and cluster, the cluster before the uplink, the uplink before
the overlay, which sets the MTUs of the segments and precedes the peers' checks, all of them
before services), and each one is read even when an earlier one is wrong, so that one run
reports every mistake. Only when the error list is empty are the drafts turned into model
objects. With ``node.pod_cidr = "auto"`` the cluster comes first: its CIDR is the pool the
node's subnet is leased from.
"""
from __future__ import annotations

import dataclasses
import os
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.allocation import allocate_pod_addresses
from vswitch.config.cluster import read_cluster, resolve_auto_cidr
from vswitch.config.control import read_control
from vswitch.config.dataplane import read_dataplane
from vswitch.config.errors import ConfigError
from vswitch.config.namespaces import read_namespaces
from vswitch.config.node import AUTO_FIXED, read_host_port, read_node, with_cidr
from vswitch.config.overlay import fit_to_overlay, read_overlay
from vswitch.config.pods import PodDraft, build_pod, check_kernel_names, read_pods
from vswitch.config.policies import read_network_policies
from vswitch.config.peers import check_peers, check_pod_cidrs, peer_networks, read_peers
from vswitch.config.reader import INVALID, Marker, Reader, key_path, load_document
from vswitch.config.routes import read_routes
from vswitch.config.segments import check_segment_overlaps, default_segment, read_segments
from vswitch.config.service_context import ServiceContext
from vswitch.config.services import check_services, read_services
from vswitch.config.uplink import read_uplink
from vswitch.model import Control, Dataplane, Topology

TOP_LEVEL_KEYS = ("node", "host_port", "dataplane", "control", "segments", "routes", "pods",
                  "cluster", "uplink", "overlay", "peers", "services", "namespaces",
                  "network_policies")


def load_topology(path: str | os.PathLike[str], previous: Topology | None = None, *,
                  pod_cidr: IPv4Network | None = None) -> Topology:
    """Read and validate a topology file; ``Topology.source`` is ``path`` as given.

    ``previous`` is the topology the node runs (on a reload), ``pod_cidr`` the subnet leased
    for ``node.pod_cidr = "auto"``: see ``parse_topology``.
    """
    source = os.fsdecode(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"the file is not valid UTF-8 (byte {exc.start})") from None
    return parse_topology(text, source, previous, pod_cidr=pod_cidr)


def parse_topology(text: str, source: str = "<string>",
                   previous: Topology | None = None, *,
                   pod_cidr: IPv4Network | None = None) -> Topology:
    """Validate a topology given as TOML text; ``source`` names it in messages and in the model.

    With ``previous`` (the topology the node runs), a pod, service or node port the file leaves
    without an explicit address keeps the one it has in ``previous`` while that is still valid
    and free, and only the rest are allocated. Kubernetes never renumbers a running pod or
    service, and a reload that did would delete and re-create pods merely because an earlier
    entry of the file went away. Without ``previous`` the file alone decides, as at start-up.

    ``pod_cidr`` is the subnet the cluster store leased to a node whose file says
    ``node.pod_cidr = "auto"``; without it a reload keeps the running one, and a first load
    validates with a stand-in (see ``cluster.resolve_auto_cidr``). It is ignored otherwise.
    """
    document = load_document(text, source)
    reader = Reader()
    topology = read_topology(reader, document, source, previous, pod_cidr)
    if reader.errors or topology is None:
        raise ConfigError.collected(source, reader.errors or [("", "invalid topology")])
    return topology


def read_topology(reader: Reader, document: Mapping[str, Any], source: str,
                  previous: Topology | None = None,
                  pod_cidr: IPv4Network | None = None) -> Topology | None:
    """The topology of ``document``, or None after reporting its mistakes to ``reader``."""
    reader.check_keys(document, "", TOP_LEVEL_KEYS)
    previous_pods = {pod.key: pod for pod in previous.pods} if previous else {}
    previous_services = {s.key: s for s in previous.services} if previous else {}

    node = read_node(reader, document)
    peers = read_peers(reader, document, node.name)
    cluster: model.Cluster | Marker = INVALID
    if node.cidr_auto:
        # The pool is the cluster CIDR, so [cluster] comes first; the node has no other segment.
        cluster = read_cluster(reader, document, [])
        node = with_cidr(node, resolve_auto_cidr(reader, document, cluster,
                                                 peer_networks(peers), pod_cidr, previous))
        refuse_fixed_segments(reader, document)
    host_port = read_host_port(reader, document, node)
    dataplane = read_dataplane(reader, document)
    control = read_control(reader, document, node.name)
    segment_drafts = check_segment_overlaps(
        reader, [default_segment(node, host_port), *read_segments(reader, document, node.mtu)]
    )
    peers = check_pod_cidrs(reader, peers, segment_drafts)
    routes = read_routes(reader, document, segment_drafts)
    namespaces = read_namespaces(reader, document)
    drafts = read_pods(reader, document, namespaces)
    if node.cidr_auto:
        drafts = refuse_pod_addresses(reader, drafts)
    pod_ips = allocate_pod_addresses(reader, drafts, segment_drafts, previous_pods)
    if not node.cidr_auto:
        cluster = read_cluster(reader, document, segment_drafts, peer_networks(peers))
    uplink = read_uplink(reader, document, node.name, node.mtu, cluster, segment_drafts)
    overlay = read_overlay(reader, document, uplink)
    node, segment_drafts = fit_to_overlay(reader, overlay, node, segment_drafts, drafts)
    built_peers = check_peers(reader, document, peers, segment_drafts, cluster, uplink, overlay)
    context = ServiceContext.of(cluster, uplink, segment_drafts, host_port.address,
                                peer_networks(peers))
    services = check_services(reader, read_services(reader, document, context, namespaces),
                              context, previous=previous_services)
    policies = read_network_policies(reader, document, namespaces)

    if reader.errors:
        return None
    # Past this point every value is valid; the asserts only narrow types for the reader.
    assert isinstance(dataplane, Dataplane) and isinstance(control, Control)
    if not isinstance(cluster, model.Cluster) or not isinstance(built_peers, tuple):
        return None  # not reached: an invalid section has reported why
    if isinstance(uplink, model.Uplink):
        uplink = dataclasses.replace(
            uplink, overlay=overlay if isinstance(overlay, model.Overlay) else None)
    built_node = node.build()
    pods = tuple(build_pod(built_node.name, draft, ip) for draft, ip in zip(drafts, pod_ips))
    check_kernel_names(reader, pods, drafts)
    if reader.errors:
        return None
    return Topology(
        source=source,
        node=built_node,
        pods=pods,
        host_port=host_port.build(built_node),
        dataplane=dataplane,
        control=control,
        segments=tuple(draft.build() for draft in segment_drafts),
        routes=tuple(routes),
        cluster=dataclasses.replace(cluster, peers=built_peers),
        uplink=uplink if isinstance(uplink, model.Uplink) else None,
        services=tuple(services),
        namespaces=namespaces,
        network_policies=policies,
    )


def refuse_fixed_segments(reader: Reader, document: Mapping[str, Any]) -> None:
    """With ``node.pod_cidr = "auto"`` nothing may depend on where the leased subnet lies."""
    if document.get("segments"):
        reader.fail("segments", 'not allowed with node.pod_cidr = "auto": such a node has one '
                                "segment, its leased subnet")
    if document.get("routes"):
        reader.fail("routes", 'not allowed with node.pod_cidr = "auto": a next hop lies in a '
                              "segment, and the leased subnet is known only at start-up")


def refuse_pod_addresses(reader: Reader, drafts: Sequence[PodDraft]) -> list[PodDraft]:
    """The pods of a ``node.pod_cidr = "auto"`` node; an explicit ``ip`` is an error there."""
    refused = []
    for draft in drafts:
        if isinstance(draft.ip, IPv4Address):
            draft = dataclasses.replace(draft, ip=reader.fail(key_path(draft.path, "ip"),
                                                              AUTO_FIXED))
        refused.append(draft)
    return refused

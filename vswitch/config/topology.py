"""A whole topology file: every section read in dependency order, then the frozen ``Topology``.

Sections are read in the order their checks need one another (the node before its segments,
the segments before routes, pods and cluster, the cluster before the uplink, all of them before
services), and each one is read even when an earlier one is wrong, so that one run reports every
mistake. Only when the error list is empty are the drafts turned into model objects.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from vswitch import model
from vswitch.config.allocation import allocate_pod_addresses
from vswitch.config.cluster import read_cluster
from vswitch.config.control import read_control
from vswitch.config.dataplane import read_dataplane
from vswitch.config.errors import ConfigError
from vswitch.config.node import read_host_port, read_node
from vswitch.config.pods import build_pod, check_kernel_names, read_pods
from vswitch.config.reader import Reader, load_document
from vswitch.config.routes import read_routes
from vswitch.config.segments import check_segment_overlaps, default_segment, read_segments
from vswitch.config.service_context import ServiceContext
from vswitch.config.services import check_services, read_services
from vswitch.config.uplink import read_uplink
from vswitch.model import Control, Dataplane, Topology

TOP_LEVEL_KEYS = ("node", "host_port", "dataplane", "control", "segments", "routes", "pods",
                  "cluster", "uplink", "services")


def load_topology(path: str | os.PathLike[str], previous: Topology | None = None) -> Topology:
    """Read and validate a topology file; ``Topology.source`` is ``path`` as given.

    ``previous`` is the topology the node runs (on a reload): see ``parse_topology``.
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
    return parse_topology(text, source, previous)


def parse_topology(text: str, source: str = "<string>",
                   previous: Topology | None = None) -> Topology:
    """Validate a topology given as TOML text; ``source`` names it in messages and in the model.

    With ``previous`` (the topology the node runs), a pod, service or node port the file leaves
    without an explicit address keeps the one it has in ``previous`` while that is still valid
    and free, and only the rest are allocated. Kubernetes never renumbers a running pod or
    service, and a reload that did would delete and re-create pods merely because an earlier
    entry of the file went away. Without ``previous`` the file alone decides, as at start-up.
    """
    document = load_document(text, source)
    reader = Reader()
    topology = read_topology(reader, document, source, previous)
    if reader.errors or topology is None:
        raise ConfigError.collected(source, reader.errors or [("", "invalid topology")])
    return topology


def read_topology(reader: Reader, document: Mapping[str, Any], source: str,
                  previous: Topology | None = None) -> Topology | None:
    """The topology of ``document``, or None after reporting its mistakes to ``reader``."""
    reader.check_keys(document, "", TOP_LEVEL_KEYS)
    previous_pods = {pod.name: pod for pod in previous.pods} if previous else {}
    previous_services = {s.key: s for s in previous.services} if previous else {}

    node = read_node(reader, document)
    host_port = read_host_port(reader, document, node)
    dataplane = read_dataplane(reader, document)
    control = read_control(reader, document, node.name)
    segment_drafts = check_segment_overlaps(
        reader, [default_segment(node, host_port), *read_segments(reader, document, node.mtu)]
    )
    routes = read_routes(reader, document, segment_drafts)
    drafts = read_pods(reader, document)
    pod_ips = allocate_pod_addresses(reader, drafts, segment_drafts, previous_pods)
    cluster = read_cluster(reader, document, segment_drafts)
    uplink = read_uplink(reader, document, node.name, node.mtu, cluster, segment_drafts)
    context = ServiceContext.of(cluster, uplink, segment_drafts, host_port.address)
    services = check_services(reader, read_services(reader, document, context), context,
                              previous=previous_services)

    if reader.errors:
        return None
    # Past this point every value is valid; the asserts only narrow types for the reader.
    assert isinstance(dataplane, Dataplane) and isinstance(control, Control)
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
        cluster=cluster if isinstance(cluster, model.Cluster) else None,
        uplink=uplink if isinstance(uplink, model.Uplink) else None,
        services=tuple(services),
    )

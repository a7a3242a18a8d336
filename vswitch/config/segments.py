"""``[[segments]]``: the node's pod networks besides the default one.

A node has one or more segments: ``default`` is made of ``[node] pod_cidr``, and each
``[[segments]]`` entry adds one. Their CIDRs never overlap, so an address belongs to at most one
segment and the router's connected routes are unambiguous. A segment's ``mtu`` defaults to the
node's. Each segment allocates its pods' addresses on its own (see ``allocation``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from vswitch import model
from vswitch.config.addresses import address_problem
from vswitch.config.names import dns_label_problem
from vswitch.config.node import HostPortDraft, NodeDraft
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader, key_path
from vswitch.model import Pod, Segment, Topology

SEGMENT_NAME_MAX = 20  # segment names show in tables and traces; short keeps them aligned
SEGMENT_KEYS = ("name", "cidr", "gateway", "mtu")


@dataclass(frozen=True)
class SegmentDraft:
    """A segment as written (or derived from ``[node]``); fields are INVALID where they are wrong.

    ``reserved`` maps the addresses no pod may take (the gateway, and for the default segment the
    host port) to the key that claims them, for messages.
    """

    path: str  # "node" for the default segment, "segments[i]" for the others
    name: str | Marker
    cidr: IPv4Network | Marker
    gateway: IPv4Address | Marker
    mtu: int | Marker
    reserved: Mapping[IPv4Address, str]
    mtu_given: bool = False  # the file sets this segment's mtu; otherwise it is inherited

    @property
    def valid(self) -> bool:
        return INVALID not in (self.name, self.cidr, self.gateway, self.mtu)

    @property
    def cidr_path(self) -> str:
        return "node.pod_cidr" if self.path == "node" else f"{self.path}.cidr"

    @property
    def gateway_path(self) -> str:
        return f"{self.path}.gateway"

    def build(self) -> Segment:
        assert isinstance(self.name, str) and isinstance(self.cidr, IPv4Network)
        assert isinstance(self.gateway, IPv4Address) and isinstance(self.mtu, int)
        return Segment(name=self.name, cidr=self.cidr, gateway=self.gateway,
                       gateway_mac=model.mac_for_ip(self.gateway), mtu=self.mtu)


def default_segment(node: NodeDraft, host_port: HostPortDraft) -> SegmentDraft:
    """The segment ``[node]`` makes; its gateway and the host port's address are reserved."""
    reserved = {address: what for address, what in
                ((node.gateway, "node.gateway"), (host_port.address, "host_port.address"))
                if isinstance(address, IPv4Address)}
    return SegmentDraft("node", model.DEFAULT_SEGMENT, node.cidr, node.gateway, node.mtu,
                        MappingProxyType(reserved), node.mtu_given)


def running_segments(topology: Topology, kept: Iterable[Pod] = ()) -> list[SegmentDraft]:
    """The segments of a running node as drafts, with the paths of the file they came from.

    Reserved are each gateway, the host port's address and the addresses of the ``kept`` pods.
    """
    kept = tuple(kept)
    segments = []
    for index, segment in enumerate(topology.all_segments()):
        path = "node" if index == 0 else f"segments[{index - 1}]"
        reserved = {segment.gateway: f"{path}.gateway"}
        if segment.name == model.DEFAULT_SEGMENT:
            reserved[topology.host_port.address.ip] = "host_port.address"
        reserved.update({pod.ip: f"pod {pod.name}" for pod in kept
                         if pod.segment == segment.name})
        segments.append(SegmentDraft(path, segment.name, segment.cidr, segment.gateway,
                                     segment.mtu, MappingProxyType(reserved)))
    return segments


def read_segments(reader: Reader, document: Mapping[str, Any],
                  node_mtu: int | Marker) -> list[SegmentDraft]:
    """The ``[[segments]]`` entries; the default segment is made by ``default_segment``."""
    drafts: list[SegmentDraft] = []
    names: dict[str, str] = {}
    for path, entry in reader.entries(document, "", "segments"):
        reader.check_keys(entry, path, SEGMENT_KEYS)
        name = reader.take(entry, path, "name", "a string", REQUIRED)
        name_path = key_path(path, "name")
        if isinstance(name, str):
            if problem := dns_label_problem(name, SEGMENT_NAME_MAX):
                name = reader.fail(name_path, problem)
            elif name == model.DEFAULT_SEGMENT:
                name = reader.fail(
                    name_path,
                    f"'{model.DEFAULT_SEGMENT}' is the segment made of node.pod_cidr; "
                    "choose another name",
                )
            elif name in names:
                name = reader.fail(
                    name_path, f"duplicate segment name {name!r} (first used at {names[name]})"
                )
            else:
                names[name] = name_path

        cidr = reader.take(entry, path, "cidr", "a string", REQUIRED)
        if isinstance(cidr, str):
            cidr = reader.parse_cidr(cidr, key_path(path, "cidr"))

        gateway = reader.take_address(entry, path, "gateway")
        if gateway is None:
            gateway = model.first_host(cidr) if isinstance(cidr, IPv4Network) else INVALID
        elif isinstance(gateway, IPv4Address) and isinstance(cidr, IPv4Network):
            if problem := address_problem(gateway, cidr, f"{path}.cidr {cidr}"):
                gateway = reader.fail(key_path(path, "gateway"), problem)

        # An absent mtu inherits node.mtu; if that one is wrong, its own error says so.
        mtu = reader.take_mtu(entry, path, node_mtu)
        assert mtu is not None
        reserved = {gateway: key_path(path, "gateway")} if isinstance(gateway, IPv4Address) else {}
        drafts.append(SegmentDraft(path, name, cidr, gateway, mtu, MappingProxyType(reserved),
                                   "mtu" in entry))
    return drafts


def check_segment_overlaps(reader: Reader, segments: Sequence[SegmentDraft]) -> list[SegmentDraft]:
    """Refuse overlapping CIDRs: an address must belong to exactly one segment.

    The later entry carries the error, and its CIDR counts as invalid from here on, so that
    its pods are not reported a second time.
    """
    checked: list[SegmentDraft] = []
    for draft in segments:
        if isinstance(draft.cidr, IPv4Network):
            for earlier in checked:
                if isinstance(earlier.cidr, IPv4Network) and draft.cidr.overlaps(earlier.cidr):
                    reader.fail(
                        draft.cidr_path,
                        f"{draft.cidr} overlaps {earlier.cidr_path} {earlier.cidr}; "
                        "the CIDRs of a node's segments must be disjoint",
                    )
                    draft = dataclasses.replace(draft, cidr=INVALID)
                    break
        checked.append(draft)
    return checked

"""The other nodes of the cluster, as the overlay reaches them: one route per remote pod CIDR.

Theory of operation
-------------------
* This is flannel's VXLAN backend in one table. Where flannel writes, per remote node, a route
  (its pod CIDR via the VXLAN device), a neighbour entry (the remote VTEP's MAC) and an FDB entry
  (that MAC behind the remote underlay address), we keep one ``RemoteNode`` and one FIB route of
  kind ``OVERLAY`` whose ``via`` is the node's underlay address. The encapsulating stage reads the
  rest (VTEP MAC) from here by that address; the decapsulating stage accepts VXLAN only from an
  address in this table (no learning from the data plane, as flannel's ``nolearning``).
* The desired set of remote nodes is handed over whole (``set_nodes``): from the static
  ``[[peers]]`` at start, and again whenever the cluster store's view changes. The table computes
  the difference, so a node whose record did not change keeps its route and the flow cache its
  entries; every real change bumps the FIB's generation (through ``Fib.add``/``delete``), which
  expires cached decisions.
* A node that would take traffic the node must keep is refused, with the reason, and not routed:
  its pod CIDR overlapping one of our own segments or another remote node's, or its underlay
  address being ours. The static peers were checked when the file was loaded; the store's records
  are only checked here, because another node's daemon wrote them.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable

from vswitch.tables.fib import Fib, Route, RouteKind
from vswitch.wire.addresses import mac_bytes
from vswitch.tables.shared_slots import shared_array


class NodeSource(enum.Enum):
    STATIC = "static"  # a [[peers]] entry of the topology file
    STORE = "store"  # a record in the cluster store (etcd)


@dataclass(frozen=True)
class RemoteNode:
    name: str
    address: IPv4Address  # underlay: the outer destination of its packets, the outer source of its
    pod_cidr: IPv4Network
    vtep_mac: str  # the inner destination MAC of frames for it
    source: NodeSource = NodeSource.STATIC

    def origin(self) -> str:
        return f"node {self.name} ({self.source.value})"


@dataclass(frozen=True)
class LocalVtep:
    """This node's end of the tunnels."""

    address: bytes  # our underlay (uplink) address: the outer source
    vtep_mac: bytes  # the inner source MAC
    vni: int
    port: int  # UDP destination port, ours and everyone's
    mtu: int  # the largest inner IPv4 packet
    source_port_seed: int = 0  # seeds the outer source port hash (see ``wire.vxlan``)


@dataclass(frozen=True)
class NodeChange:
    """What one ``set_nodes`` did, for logs and for the callers that follow membership."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (node name, reason)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.refused)


class OverlayTable:
    def __init__(self, fib: Fib, vtep: LocalVtep | None, uplink_segment: int | None,
                 local_networks: Iterable[IPv4Network] = ()):
        self.fib = fib
        self.vtep = vtep
        self.uplink_segment = uplink_segment
        self._local_networks = tuple(local_networks)
        self._nodes: dict[str, RemoteNode] = {}
        self._by_address: dict[bytes, RemoteNode] = {}
        self._vtep_macs: dict[bytes, bytes] = {}  # underlay address -> VTEP MAC bytes
        self.refused: dict[str, str] = {}  # node name -> why it is not routed
        # The outer IPv4 identification counter, shared with the C datapath (``shared_slots``).
        self.ident = shared_array("I", 1)

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> list[RemoteNode]:
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def by_address(self, address: bytes) -> RemoteNode | None:
        return self._by_address.get(address)

    def vtep_mac_of(self, address: bytes) -> bytes | None:
        return self._vtep_macs.get(address)

    def next_ident(self) -> int:
        """The outer IPv4 identification of the next encapsulated packet (DF is clear, so ids
        must differ between packets in flight; one counter for all destinations suffices)."""
        value = (self.ident[0] + 1) & 0xFFFFFFFF
        self.ident[0] = value
        return value & 0xFFFF

    def _refusal(self, node: RemoteNode, accepted: list[RemoteNode]) -> str | None:
        if self.vtep is None or self.uplink_segment is None:
            return "this node has no overlay (no [overlay] on its uplink)"
        if node.address.packed == self.vtep.address:
            return f"its address {node.address} is this node's own underlay address"
        for network in self._local_networks:
            if node.pod_cidr.overlaps(network):
                return f"its pod CIDR {node.pod_cidr} overlaps this node's {network}"
        for other in accepted:
            if node.pod_cidr.overlaps(other.pod_cidr):
                return f"its pod CIDR {node.pod_cidr} overlaps node {other.name}'s {other.pod_cidr}"
            if node.address == other.address:
                return f"its address {node.address} is node {other.name}'s too"
        return None

    def set_nodes(self, nodes: Iterable[RemoteNode]) -> NodeChange:
        """Make the remote nodes exactly ``nodes`` (by name; the first of a duplicated name
        wins): route the new ones, re-route the changed ones, withdraw the rest."""
        accepted: list[RemoteNode] = []
        refused: dict[str, str] = {}
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                continue
            seen.add(node.name)
            why = self._refusal(node, accepted)
            if why is None:
                accepted.append(node)
            else:
                refused[node.name] = why
        wanted = {node.name: node for node in accepted}
        added: list[str] = []
        changed: list[str] = []
        removed: list[str] = []
        for name, old in list(self._nodes.items()):
            new = wanted.get(name)
            if new == old:
                continue
            self._withdraw(old)
            (changed if new is not None else removed).append(name)
        for name, node in wanted.items():
            if self._nodes.get(name) != node:
                if name not in changed:
                    added.append(name)
                self._route(node)
        new_refusals = tuple((name, why) for name, why in refused.items()
                             if self.refused.get(name) != why)
        self.refused = refused
        return NodeChange(tuple(added), tuple(changed), tuple(removed), new_refusals)

    def _route(self, node: RemoteNode) -> None:
        self._nodes[node.name] = node
        self._by_address[node.address.packed] = node
        self._vtep_macs[node.address.packed] = mac_bytes(node.vtep_mac)
        assert self.uplink_segment is not None
        self.fib.add(Route(node.pod_cidr, RouteKind.OVERLAY, self.uplink_segment, node.address,
                           origin=node.origin()))

    def _withdraw(self, node: RemoteNode) -> None:
        del self._nodes[node.name]
        self._by_address.pop(node.address.packed, None)
        self._vtep_macs.pop(node.address.packed, None)
        route = self.fib.get(node.pod_cidr)
        if route is not None and route.kind is RouteKind.OVERLAY and route.via == node.address:
            self.fib.delete(node.pod_cidr)


def local_vtep(topology) -> LocalVtep | None:
    """This node's VTEP as the topology configures it, or None without an overlay. The outer
    source-port hash is seeded from the node's name: each node spreads flows its own way, and a
    flow keeps its port across restarts."""
    overlay, uplink = topology.overlay, topology.uplink
    if overlay is None or uplink is None:
        return None
    return LocalVtep(uplink.address.ip.packed, mac_bytes(overlay.vtep_mac), overlay.vni,
                     overlay.port, overlay.mtu,
                     source_port_seed=int.from_bytes(
                         hashlib.blake2b(topology.node.name.encode(), digest_size=8).digest(),
                         "big"))


def static_nodes(topology) -> list[RemoteNode]:
    """The ``[[peers]]`` of the topology as remote nodes."""
    return [RemoteNode(p.name, p.address, p.pod_cidr, p.vtep_mac, NodeSource.STATIC)
            for p in topology.peers]

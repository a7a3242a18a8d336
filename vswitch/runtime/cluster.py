"""The node in its cluster: membership from the store and the static peers, into the overlay.

Theory of operation
-------------------
The switch starts with the topology's static ``[[peers]]`` routed (``static_nodes``). With
``[cluster] store = "etcd"``, :meth:`ClusterRuntime.run` also runs a :class:`Membership`, which
publishes this node's record (pod CIDR, underlay address, VTEP MAC, ready pods) under a lease and
follows everyone else's. Every change of its view becomes one call of
``switch.overlay.set_nodes(static peers + store nodes)``: the overlay table computes what to
route, re-route and withdraw, and refuses records it must not route (with the reason). A store
record that has the name of a static peer is left out: the file wins, and the log says so once.

Changes reach routing as fast as the watch delivers them (well within a second). A node whose
lease runs out disappears from the view and is withdrawn. While etcd cannot be reached, the
membership keeps its last view and nothing changes here (fail static); when it catches up, the
difference is applied like any other change.

Services across nodes: the ready pods in the routed store nodes' records become ``RemotePod`` s,
which the node runtime programs together with its own pods (``NodeRuntime.set_remote_pods``). A
record's pod whose address is outside that node's pod CIDR is ignored: the overlay would not
deliver to it. In the other direction, whenever the node runtime programs (a reload, a
``vswitchctl`` change, readiness), this node's record is computed again from its desired state
and published if it differs. Only pods inside ``node.pod_cidr`` are published, the one network the
other nodes route to this node.

``pod_cidr = "auto"``: before the topology is finally loaded, :func:`lease_pod_cidr` takes a subnet
from the pool under a start-up lease. The membership's claim moves that key to the node's own
lease when it registers, and the start-up lease, then empty, is revoked (or, if the store went
away meanwhile, expires on its own after :data:`STARTUP_LEASE_TTL`).

The store keys of a cluster live under its name, ``cluster.cidr`` written as ``NETWORK-PREFIX``:
the nodes of one cluster share that pool, and different clusters may share one etcd.
"""
from __future__ import annotations

import logging
import random
from collections import OrderedDict
from ipaddress import IPv4Network
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import trio

from vswitch.membership.etcd import EtcdClient, StoreError, StoreUnavailable
from vswitch.membership.members import Backoff, Membership, MembershipChange
from vswitch.membership.records import EndpointRecord, NodeRecord
from vswitch.membership.subnets import allocate_pod_cidr, subnet_claim
from vswitch.model import STORE_ETCD, Cluster, RemotePod, Topology
from vswitch.runtime.switch_core import SwitchCore
from vswitch.tables.overlay import NodeChange, NodeSource, RemoteNode, static_nodes

STARTUP_LEASE_TTL = 60  # seconds the subnet of pod_cidr = "auto" waits for the node to register
CHANGES_BUFFER = 64  # membership changes in flight; the membership waits when it is full
WITHDRAWN_KEPT = 64  # withdrawn nodes still listed by ``vswitchctl nodes``, most recent first
LEASE_QUERY_TIMEOUT = 1.0  # seconds ``vswitchctl nodes`` waits for the store's lease times

ClientFactory = Callable[[Sequence[str]], EtcdClient]


def cluster_name(cluster: Cluster) -> str:
    """The name a cluster's keys live under in the store: its pod address pool."""
    return f"{cluster.cidr.network_address}-{cluster.cidr.prefixlen}"


def follows_store(topology: Topology) -> bool:
    return (topology.overlay is not None and topology.cluster is not None
            and topology.cluster.store == STORE_ETCD)


def own_record(topology: Topology) -> NodeRecord:
    """What this node publishes: its pod CIDR, underlay address, VTEP MAC and ready pods."""
    assert topology.uplink is not None and topology.overlay is not None
    network = topology.node.pod_cidr
    endpoints = tuple(
        EndpointRecord(pod.name, pod.ip, dict(pod.labels), dict(pod.named_ports()),
                       pod.namespace)
        for pod in topology.pods if pod.ready and pod.ip in network)
    return NodeRecord(topology.node.name, network, topology.uplink.address.ip,
                      topology.overlay.vtep_mac, endpoints)


def store_nodes(view: Mapping[str, NodeRecord],
                static_names: Iterable[str]) -> tuple[list[RemoteNode], list[str]]:
    """The store's records as remote nodes, by name, and the names left out because a static
    peer has them (the file wins)."""
    static = set(static_names)
    nodes, shadowed = [], []
    for name in sorted(view):
        if name in static:
            shadowed.append(name)
            continue
        record = view[name]
        nodes.append(RemoteNode(record.name, record.address, record.pod_cidr, record.vtep_mac,
                                NodeSource.STORE))
    return nodes, shadowed


def remote_pods(view: Mapping[str, NodeRecord], routed: Iterable[str]) -> tuple[RemotePod, ...]:
    """The ready pods of the routed nodes' records, those inside their node's pod CIDR."""
    pods = []
    for name in sorted(routed):
        record = view.get(name)
        if record is None:
            continue
        for endpoint in record.ready_endpoints:
            if endpoint.ip in record.pod_cidr:
                pods.append(RemotePod(record.name, endpoint.name, endpoint.ip,
                                      MappingProxyType(dict(endpoint.labels)),
                                      MappingProxyType(dict(endpoint.ports)),
                                      namespace=endpoint.namespace))
    return tuple(pods)


def node_row(name: str, pod_cidr: IPv4Network | None, address: Any, vtep_mac: str | None,
             source: str, state: str, lease_remaining: int | None = None) -> dict[str, Any]:
    """One line of ``vswitchctl nodes``; these JSON field names are an interface."""
    return {"name": name, "pod_cidr": str(pod_cidr) if pod_cidr is not None else None,
            "address": str(address) if address is not None else None, "vtep_mac": vtep_mac,
            "source": source, "lease_remaining": lease_remaining, "state": state}


async def lease_pod_cidr(topology: Topology, log: logging.Logger, *,
                         client_factory: ClientFactory = EtcdClient,
                         rng: random.Random | None = None) -> tuple[IPv4Network, int]:
    """A pod subnet for ``node.pod_cidr = "auto"`` and the start-up lease it is held under.

    Waits (with backoff) while the store cannot be reached: without a subnet the node cannot
    start. Raises ``PoolExhausted`` when every subnet is taken and ``StoreError`` when etcd
    refuses the requests.
    """
    cluster = topology.cluster
    assert cluster is not None
    backoff = Backoff(rng or random.Random())
    async with client_factory(cluster.etcd_endpoints) as client:
        while True:
            try:
                lease, _ = await client.grant_lease(STARTUP_LEASE_TTL)
                subnet = await allocate_pod_cidr(client, cluster_name(cluster),
                                                 topology.node.name, cluster.cidr,
                                                 cluster.node_prefix_length, lease)
            except StoreUnavailable as exc:
                delay = backoff.next_delay()
                log.warning("cluster: cannot lease a pod subnet yet (etcd unreachable), "
                            "retrying in %.1f s: %s", delay, exc)
                await trio.sleep(delay)
                continue
            log.info("cluster: leased pod subnet %s from %s", subnet, cluster.cidr)
            return subnet, lease


class ClusterRuntime:
    """Follows the cluster for one node: its membership, the overlay's nodes, remote pods.

    ``node`` is the node runtime (``vswitch.runtime.daemon.NodeRuntime``): its desired state is
    published, and it programs the remote pods. The parts of the topology read here (node,
    uplink, overlay, peers, cluster) cannot change while the node runs.
    """

    def __init__(self, node: Any, switch: SwitchCore, log: logging.Logger, *,
                 startup_lease: int = 0, client_factory: ClientFactory = EtcdClient,
                 rng: random.Random | None = None) -> None:
        self._node = node
        self._switch = switch
        self._topology: Topology = node.topology
        self._log = log
        self._startup_lease = startup_lease
        self._client_factory = client_factory
        self._rng = rng or random.Random()
        self._membership: Membership | None = None
        self._applied: dict[str, NodeRecord] = {}  # the store's view as last routed
        self._shadowed: set[str] = set()
        self._withdrawn: OrderedDict[str, RemoteNode] = OrderedDict()

    # -- following the store ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """With a store, follow it until cancelled; reports started once the first listing (or
        the first failure to get one) has been applied. Without one there is nothing to do."""
        topology = self._topology
        if not follows_store(topology):
            task_status.started()
            return
        cluster = topology.cluster
        assert cluster is not None
        name = cluster_name(cluster)
        claims = ([subnet_claim(name, topology.node.name, topology.node.pod_cidr)]
                  if topology.node.pod_cidr_auto else [])
        send, receive = trio.open_memory_channel[MembershipChange](CHANGES_BUFFER)
        async with self._client_factory(cluster.etcd_endpoints) as client:
            membership = Membership(client, name, own_record(self._node.topology), send,
                                    lease_ttl=cluster.lease_ttl, rng=self._rng, claims=claims)
            self._membership = membership
            async with trio.open_nursery() as nursery:
                await nursery.start(membership.run)
                connected = membership.statistics().connected
                self._log.info("cluster: %s etcd %s, %d other nodes in the store",
                               "joined" if connected else "cannot reach",
                               ", ".join(cluster.etcd_endpoints), len(membership.view))
                self.apply(membership.view)
                if self._startup_lease and connected:
                    await self._revoke_startup_lease(client)
                nursery.start_soon(self._follow, receive)
                nursery.start_soon(self._publish)
                task_status.started()

    async def _follow(self, changes: trio.MemoryReceiveChannel[MembershipChange]) -> None:
        """Apply the view after each burst of changes (the view already holds them)."""
        async for _ in changes:
            while True:
                try:
                    changes.receive_nowait()
                except trio.WouldBlock:
                    break
            assert self._membership is not None
            self.apply(self._membership.view)

    async def _publish(self) -> None:
        """Keep our record in step with the node's desired state."""
        assert self._membership is not None
        while True:
            self._membership.update(own_record(self._node.topology))
            await self._node.wait_programmed()

    async def _revoke_startup_lease(self, client: EtcdClient) -> None:
        """The subnet moved to the node's lease when it registered; the start-up one holds
        nothing now. Failing to revoke it costs nothing: it expires."""
        try:
            await client.revoke_lease(self._startup_lease)
        except (StoreUnavailable, StoreError) as exc:
            self._log.info("cluster: start-up lease %x left to expire: %s",
                           self._startup_lease, exc)
        self._startup_lease = 0

    def apply(self, view: Mapping[str, NodeRecord]) -> NodeChange:
        """Route the static peers and the store's nodes in ``view``; program their pods."""
        overlay = self._switch.overlay
        static = static_nodes(self._topology)
        nodes, shadowed = store_nodes(view, (peer.name for peer in static))
        for name in sorted(set(shadowed) - self._shadowed):
            self._log.warning("cluster: node %s is a static peer and also in the store; the "
                              "static peer from the file wins", name)
        self._shadowed = set(shadowed)
        before = {node.name: node for node in overlay.nodes()}
        change = overlay.set_nodes(static + nodes)
        self._applied = {name: record for name, record in view.items()
                         if name not in self._shadowed}
        routed = {node.name: node for node in overlay.nodes()}
        self._log_change(change, before, routed)
        for name in change.removed:
            if name not in overlay.refused and before[name].source is NodeSource.STORE:
                self._withdrawn[name] = before[name]
                self._withdrawn.move_to_end(name, last=False)
        for name in list(self._withdrawn):
            if name in self._applied:
                del self._withdrawn[name]
        while len(self._withdrawn) > WITHDRAWN_KEPT:
            self._withdrawn.popitem()
        store_routed = [name for name, node in routed.items() if node.source is NodeSource.STORE]
        self._node.set_remote_pods(remote_pods(self._applied, store_routed))
        return change

    def _log_change(self, change: NodeChange, before: Mapping[str, RemoteNode],
                    routed: Mapping[str, RemoteNode]) -> None:
        for name in change.added:
            node = routed[name]
            self._log.info("cluster: node %s routed (%s): pod CIDR %s via %s", name,
                           node.source.value, node.pod_cidr, node.address)
        for name in change.changed:
            node = routed[name]
            self._log.info("cluster: node %s changed: pod CIDR %s via %s, VTEP %s", name,
                           node.pod_cidr, node.address, node.vtep_mac)
        for name in change.removed:
            self._log.info("cluster: node %s withdrawn: pod CIDR %s no longer routed", name,
                           before[name].pod_cidr)
        for name, reason in change.refused:
            self._log.warning("cluster: node %s refused: %s", name, reason)

    # -- observing ------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any] | None:
        """The membership's state for ``stats``; None without a store."""
        if self._membership is None:
            return None
        s = self._membership.statistics()
        return {"connected": s.connected, "revision": s.synced_revision, "nodes": s.nodes,
                "sessions": s.sessions, "failures": s.failures, "last_error": s.last_error}

    async def rows(self) -> list[dict[str, Any]]:
        """Every node this one knows, itself first: ``vswitchctl nodes``."""
        topology = self._topology
        uplink, overlay = topology.uplink, topology.overlay
        rows = [node_row(topology.node.name, topology.node.pod_cidr,
                         uplink.address.ip if uplink is not None else None,
                         overlay.vtep_mac if overlay is not None else None, "self", "ready")]
        routed: dict[str, RemoteNode] = {}
        refused: Mapping[str, str] = {}
        if overlay is not None:
            routed = {node.name: node for node in self._switch.overlay.nodes()}
            refused = self._switch.overlay.refused

        def state(name: str) -> str:
            if name in routed:
                return "ready"
            if name in refused:
                return f"refused: {refused[name]}"
            return "withdrawn"

        others = [node_row(node.name, node.pod_cidr, node.address, node.vtep_mac,
                           NodeSource.STATIC.value, state(node.name))
                  for node in static_nodes(topology)]
        others += [node_row(name, record.pod_cidr, record.address, record.vtep_mac,
                            NodeSource.STORE.value, state(name))
                   for name, record in self._applied.items()]
        known = {row["name"] for row in others}
        others += [node_row(name, node.pod_cidr, node.address, node.vtep_mac,
                            NodeSource.STORE.value, "withdrawn")
                   for name, node in self._withdrawn.items() if name not in known]
        others.sort(key=lambda row: row["name"])
        rows += others
        await self._fill_leases([rows[0]] + [row for row in others
                                             if row["source"] == NodeSource.STORE.value
                                             and row["state"] != "withdrawn"])
        return rows

    async def _fill_leases(self, rows: list[dict[str, Any]]) -> None:
        """Ask the store how long each row's lease has left, all at once and briefly: an
        unanswered one stays null. Nothing is asked while the store is unreachable."""
        membership = self._membership
        if membership is None or not membership.statistics().connected:
            return

        async def ask(row: dict[str, Any]) -> None:
            remaining = await membership.lease_remaining(row["name"])
            # etcd answers -1 for a lease that is already gone.
            row["lease_remaining"] = remaining if remaining is not None and remaining >= 0 else None

        with trio.move_on_after(LEASE_QUERY_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for row in rows:
                    nursery.start_soon(ask, row)

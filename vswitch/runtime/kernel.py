"""The node's kernel objects: pod namespaces with their eth0 TAPs, the host TAP, host routes, the
uplink TAP and the underlay it may share with other nodes.

Theory of operation
-------------------
``NodeObjects`` holds the synchronous create/remove logic and the journal; it runs wherever a
``NetlinkSession`` lives: in the netlink worker thread for the daemon (through ``Kernel``), or in
the only thread of ``vswitchctl clean`` (through ``clean_node``). ``Kernel`` is the daemon's async
face: each method is one job on the worker thread, so a pod is created or removed as a whole.

A pod is built in this order, each step undone if a later one fails:

1. journal the namespace and the TAP's host-side name;
2. create the named namespace;
3. create the TAP in the root namespace, persistent (the daemon keeps its fd; the device lives
   until it is deleted, so the pod keeps its eth0 while the daemon restarts);
4. move the TAP into the namespace, rename it eth0, set MAC and MTU, add the pod IP with the
   prefix length of the pod's segment, bring eth0 and lo up, add the default route via that
   segment's gateway. The pod's MTU is its own if the topology sets one, else its segment's; the
   router relies on it to tell a too-big packet from a fitting one.

The uplink (the node's port to the outside world) is a TAP too. Its far side plays the
internet. Without ``uplink.netns`` and ``uplink.bridge`` it stays in the root namespace and is
given the gateway's MAC and address with the uplink network's prefix. Otherwise it joins a shared
underlay, under that underlay's lock (``UnderlayLock``, so that daemons starting or stopping
together take turns):

1. journal the use (namespace and TAP name) for this node, and the TAP as for any other;
2. create ``uplink.netns`` if it is missing (IPv4 only, lo up), noting in the underlay's record,
   before creating it, that the daemons own it;
3. with ``uplink.bridge``: create the bridge if it is missing (noted likewise first), with the
   gateway's MAC and the uplink MTU; give the bridge the gateway address (noted first when the
   bridge is not the daemons', so that it can be taken back) and bring it up;
4. open the TAP, move it into the namespace, and either make it a port of the bridge (MTU set,
   up; the bridge is the gateway) or, without a bridge, give it the gateway's MAC and address.

Several daemons pointed at one namespace and bridge are then nodes on one L2 underlay: their
TAPs are the bridge's ports, and they reach one another and the gateway by plain switching.
Leaving runs under the same lock: delete this node's TAP if it still exists, then remove what the
record says the daemons made and nobody uses any more. A bridge is in use while a TUN/TAP device
(a live node's far side) is its port, a namespace while one is in it; a gateway address added to a
bridge that was already there is taken back when the bridge has no such port left. A namespace or
bridge the record does not name was there before any daemon and is never removed. A node that was
killed keeps its (persistent) TAP in the bridge until a restart re-attaches it or leaving on its
behalf (``remove_leftovers``, ``clean_node``) deletes it, which never disturbs the nodes still
running. The far side gets no route beyond its connected network: the internet knows the node's
external address and nothing of the cluster behind it, which is what makes NodePort and
masquerade necessary. The TAP is persistent, like every TAP of the node, so leaving deletes it
explicitly wherever it lives.

Removal of a pod runs the other way: kill what runs in the namespace, delete eth0, unmount the
namespace, erase the journal entries. Every removal step treats "already gone" as success, which
is what makes ``teardown``, ``remove_leftovers`` and ``clean_node`` idempotent.

Restarts
--------
Every TAP is persistent, so what a daemon made outlives it when it is stopped with ``keep()``
(SIGTERM) or killed. The next start calls ``reclaim_leftovers`` instead of ``remove_leftovers``:
each object the journal names that the topology still describes, and that still is what the
topology says (a pod's eth0 is a TAP with the pod's MAC, address, MTU and default route; the host
port's TAP has its MAC, address and MTU; the uplink's far side is as ``create_uplink`` leaves it),
is kept; everything else is removed as after a crash. ``create_pod``, ``create_host_port`` and
``create_uplink`` then re-attach a kept object (``tap.attach_tap``: a pod's eth0 is opened from a
thread inside the pod's namespace) instead of creating it, and log which of the two they did; an
object that cannot be re-attached is removed and created anew. A re-attached host port loses the
routes a daemon added through it, which start-up adds again from the topology.

Rules:

* One ``Kernel`` (one daemon) per node at a time, enforced by the journal's ``NodeLock``.
* Leaving ``Kernel.open`` tears down whatever is still journalled, even on error or cancellation,
  unless ``keep()`` was called; so only a kept or killed node leaves objects behind, and the
  journal then names them.
* Host routes (``add_host_route``) go through the host TAP and disappear with it; they are not
  journalled because removing the TAP is what removes them. ``teardown`` still deletes them
  first, so that a host port that outlives a failed teardown does not keep routing into nothing.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, AsyncIterator

import trio
from pyroute2 import NetlinkError
from pyroute2 import netns as pyroute2_netns

from vswitch.model import HostPort, Pod, Segment, Topology, Uplink
from vswitch.runtime.connection_state import remove_saved_connections
from vswitch.runtime.journal import (Journal, NodeLock, UnderlayLock, UnderlayRecord,
                                     UnderlayUse, other_nodes_entries, remove_container_files)
from vswitch.runtime.netlink import (ROUTE_TABLE_MAIN, NetlinkSession, NetlinkWorker,
                                     add_address, bridge_ports, delete_address, delete_link_named,
                                     ensure_bridge, find_link, has_address, link_kind, tun_links)
from vswitch.runtime.netns import (call_in_netns, kill_netns_processes, netns_exists,
                                   remove_netns_mount, write_netns_sysctls)
from vswitch.core.port_spec import VNET_HDR_LEN, VNET_TUNNEL_HDR_LEN
from vswitch.runtime.tap import attach_tap, open_tap, udp_tunnel_gso_supported

# Namespace-local settings of every pod (the host's sysctls are never touched).
POD_SYSCTLS = {"net.ipv6.conf.default.disable_ipv6": "1"}
# And of an underlay namespace the daemons create: the uplink carries IPv4 only, so the bridge and
# the far sides send no router solicitations or MLD reports into the nodes.
UNDERLAY_SYSCTLS = {"net.ipv6.conf.default.disable_ipv6": "1"}

log = logging.getLogger(__name__)

POD_IFNAME = "eth0"
RTPROT_KERNEL = 2  # routes the kernel adds itself (the connected route of an address)
IFF_UP = 0x1


class KernelError(Exception):
    """A kernel object could not be created; the message says which and why."""


@dataclass(frozen=True)
class NodeNames:
    """Names a node's objects may have: the deterministic ones of a topology, plus the journal's."""

    netns: tuple[str, ...] = ()
    taps: tuple[str, ...] = ()
    underlays: tuple[UnderlayUse, ...] = ()

    @classmethod
    def of_topology(cls, topology: Topology) -> "NodeNames":
        # The uplink's namespace is not in ``netns``: it may be the user's or other nodes'. As an
        # underlay, leaving it removes only what its record says the daemons made and nobody uses.
        uplink = topology.uplink
        taps = (uplink.name,) if uplink is not None else ()
        underlays = ((underlay_use(uplink),) if uplink is not None and joins_underlay(uplink)
                     else ())
        return cls(netns=tuple(pod.netns for pod in topology.pods),
                   taps=(*(pod.tap for pod in topology.pods), topology.host_port.name, *taps),
                   underlays=underlays)

    def __or__(self, other: "NodeNames") -> "NodeNames":
        return NodeNames(netns=tuple(dict.fromkeys((*self.netns, *other.netns))),
                         taps=tuple(dict.fromkeys((*self.taps, *other.taps))),
                         underlays=tuple(dict.fromkeys((*self.underlays, *other.underlays))))

    def __sub__(self, other: "NodeNames") -> "NodeNames":
        return NodeNames(netns=tuple(n for n in self.netns if n not in other.netns),
                         taps=tuple(n for n in self.taps if n not in other.taps),
                         underlays=tuple(u for u in self.underlays if u not in other.underlays))


def joins_underlay(uplink: Uplink) -> bool:
    """Whether the uplink's far side lives in objects other nodes may share."""
    return uplink.netns is not None or uplink.bridge is not None


def underlay_use(uplink: Uplink) -> UnderlayUse:
    return UnderlayUse(netns=uplink.netns, tap=uplink.name)


class NodeObjects:
    """Creates and removes one node's kernel objects, journalling each before it exists.

    Synchronous and bound to the thread of the ``NetlinkSession`` passed to each method.
    """

    def __init__(self, node: str, state_dir: str, tso: bool = True,
                 vnet_hdr_len: int = VNET_HDR_LEN, uplink_tunnel_gso: bool = False) -> None:
        self.node = node
        self.state_dir = state_dir
        # On a node with an overlay: with UDP-tunnel GSO on the uplink, every TAP has the 24-byte
        # header and pods keep TSO (their super-frames cross the tunnel whole); without it (an
        # older kernel), pods and the host get no TSO, since a super-frame could not cross.
        self.tso = tso
        self.vnet_hdr_len = vnet_hdr_len
        self.uplink_tunnel_gso = uplink_tunnel_gso
        self.journal = Journal(state_dir, node)

    def create_pod(self, session: NetlinkSession, pod: Pod, segment: Segment, mtu: int,
                   vnet_hdr: bool) -> int:
        owner = self.other_nodes_claims().get(pod.netns)
        if owner is not None:
            # Not journalled: removing it later would take the other node's pod away.
            raise KernelError(
                f"pod {pod.key}: namespace {pod.netns} is node {owner}'s (its journal names "
                f"it): a pod of node {owner} has the same namespace name; rename the pod")
        self.journal.record_netns(pod.netns)
        if netns_exists(pod.netns):
            # Left journalled on purpose: it is a leftover, and the next cleanup should see it.
            raise KernelError(
                f"pod {pod.key}: namespace {pod.netns} already exists; an earlier run left it "
                f"behind (remove_leftovers or `vswitchctl clean {self.node}` removes it)")
        self.journal.record_tap(pod.tap)
        fd = -1
        try:
            pyroute2_netns.create(pod.netns)
            # Pods are IPv4-only: interfaces that arrive in the namespace (eth0) get no IPv6, so
            # no router solicitations or MLD reports reach the switch. lo keeps ::1.
            write_netns_sysctls(pod.netns, POD_SYSCTLS)
            fd = open_tap(pod.tap, vnet_hdr, tso=self.tso, hdr_len=self.vnet_hdr_len,
                          persist=True)
            session.move_link_to_netns(pod.tap, pod.netns)
            address = IPv4Interface(f"{pod.ip}/{segment.cidr.prefixlen}")
            session.configure_pod_link(pod.netns, pod.tap, pod.mac, address, mtu,
                                       segment.gateway)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self.remove_netns(session, pod.netns)
            session.delete_link(pod.tap)
            self.journal.erase_tap(pod.tap)
            raise
        log.info("pod %s created: namespace %s, %s (tap %s) %s/%d via %s mtu %d (segment %s)",
                 pod.key, pod.netns, POD_IFNAME, pod.tap, pod.ip, segment.cidr.prefixlen,
                 segment.gateway, mtu, segment.name)
        return fd

    # -- restarts: what an earlier run left, re-attached ----------------------------------------

    def find_reusable(self, session: NetlinkSession, topology: Topology) -> NodeNames:
        """The journalled objects ``topology`` describes that are still what it says, by name;
        the reason each other journalled object of the topology is not, logged."""
        entries = self.journal.entries()
        netns: list[str] = []
        taps: list[str] = []
        underlays: list[UnderlayUse] = []

        def judge(what: str, problem: str | None) -> bool:
            if problem is not None:
                log.info("%s: not re-attached (%s); it is created anew", what, problem)
            return problem is None

        for pod in topology.pods:
            if pod.netns in entries.netns and judge(f"pod {pod.key}", _pod_mismatch(
                    session, pod, topology.segment(pod.segment), topology.pod_mtu(pod))):
                netns.append(pod.netns)
                taps.append(pod.tap)
        host = topology.host_port
        if host.enabled and host.name in entries.taps and judge(
                f"host port {host.name}", _host_port_mismatch(session, host, topology.node.mtu)):
            taps.append(host.name)
        uplink = topology.uplink
        if uplink is not None and uplink.name in entries.taps:
            use = underlay_use(uplink)
            joined = not joins_underlay(uplink) or use in entries.underlays
            if joined and judge(f"uplink {uplink.name}", _uplink_mismatch(session, uplink)):
                taps.append(uplink.name)
                if joins_underlay(uplink):
                    underlays.append(use)
        return NodeNames(netns=tuple(netns), taps=tuple(taps), underlays=tuple(underlays))

    def reattach_pod(self, session: NetlinkSession, pod: Pod, vnet_hdr: bool) -> int:
        """Open the kept pod's eth0 again, from inside its namespace; the TAP's fd."""
        fd = call_in_netns(pod.netns, attach_tap, POD_IFNAME, vnet_hdr, False, self.tso,
                           self.vnet_hdr_len)
        log.info("pod %s re-attached: namespace %s, %s %s", pod.key, pod.netns, POD_IFNAME,
                 pod.ip)
        return fd

    def reattach_host_port(self, session: NetlinkSession, port: HostPort, vnet_hdr: bool) -> int:
        """Open the kept host TAP again and drop the routes an earlier run added through it."""
        fd = attach_tap(port.name, vnet_hdr, False, self.tso, self.vnet_hdr_len)
        index = session.link_index(port.name)
        for route in session.root.get_routes(family=2, table=ROUTE_TABLE_MAIN):
            if route.get("RTA_OIF") == index and route["proto"] != RTPROT_KERNEL:
                session.delete_route(IPv4Network(f"{route.get('RTA_DST') or '0.0.0.0'}/"
                                                 f"{route['dst_len']}"), port.name)
        log.info("host port %s re-attached: %s", port.name, port.address)
        return fd

    def reattach_uplink(self, session: NetlinkSession, uplink: Uplink, vnet_hdr: bool) -> int:
        """Open the kept uplink TAP again, in the namespace of its far side."""
        gso = vnet_hdr and self.uplink_tunnel_gso
        if uplink.netns is None:
            fd = attach_tap(uplink.name, vnet_hdr, gso)
        else:
            fd = call_in_netns(uplink.netns, attach_tap, uplink.name, vnet_hdr, gso)
        log.info("uplink %s re-attached: node address %s", uplink.name, uplink.address)
        return fd

    def delete_pod(self, session: NetlinkSession, pod: Pod) -> list[str]:
        removed = self.remove_netns(session, pod.netns)
        removed += self.remove_tap(session, pod.tap)
        return removed

    def create_host_port(self, session: NetlinkSession, port: HostPort, mtu: int,
                         vnet_hdr: bool) -> int:
        self.journal.record_tap(port.name)
        fd = -1
        try:
            fd = open_tap(port.name, vnet_hdr, tso=self.tso, hdr_len=self.vnet_hdr_len,
                          persist=True)
            session.configure_host_link(port.name, port.mac, port.address, mtu)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self.remove_tap(session, port.name)
            raise
        log.info("host port %s: %s mtu %d", port.name, port.address, mtu)
        return fd

    def create_uplink(self, session: NetlinkSession, uplink: Uplink, vnet_hdr: bool) -> int:
        if joins_underlay(uplink):
            with UnderlayLock(self.state_dir, uplink.netns):
                return self._join_underlay(session, uplink, vnet_hdr)
        self.journal.record_tap(uplink.name)
        fd = -1
        try:
            fd = open_tap(uplink.name, vnet_hdr,
                          udp_tunnel_gso=vnet_hdr and self.uplink_tunnel_gso, persist=True)
            _configure_far_side(session.root, uplink)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self.remove_tap(session, uplink.name)
            raise
        log.info("uplink %s: node address %s, far side %s/%d in the root namespace, mtu %d",
                 uplink.name, uplink.address, uplink.gateway, uplink.address.network.prefixlen,
                 uplink.mtu)
        return fd

    def _join_underlay(self, session: NetlinkSession, uplink: Uplink, vnet_hdr: bool) -> int:
        """Steps 1-4 of the module docstring; the caller holds the underlay's lock."""
        use = underlay_use(uplink)
        self.journal.record_underlay(use)
        self.journal.record_tap(uplink.name)
        record = UnderlayRecord.load(self.state_dir, uplink.netns)
        created: list[str] = []
        fd = -1
        try:
            if uplink.netns is not None and not netns_exists(uplink.netns):
                record.created_netns = True
                record.save()
                self._create_underlay_netns(session, uplink.netns)
                created.append(f"namespace {uplink.netns}")
            bridge = None
            if uplink.bridge is not None:
                with session.in_namespace(uplink.netns) as ipr:
                    bridge, made = _prepare_bridge(ipr, uplink, record)
                if made:
                    created.append(f"bridge {uplink.bridge}")
            fd = open_tap(uplink.name, vnet_hdr,
                          udp_tunnel_gso=vnet_hdr and self.uplink_tunnel_gso, persist=True)
            if uplink.netns is not None:
                session.move_link_to_netns(uplink.name, uplink.netns)
            with session.in_namespace(uplink.netns) as ipr:
                if bridge is None:
                    _configure_far_side(ipr, uplink)
                else:
                    _attach_far_side(ipr, uplink, bridge)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self.remove_tap(session, uplink.name)
            self._leave_underlay(session, use, record)
            raise
        where = (f"namespace {uplink.netns}" if uplink.netns is not None
                 else "the root namespace")
        holder = f"bridge {uplink.bridge}" if uplink.bridge is not None else "the far side"
        log.info("uplink %s: node address %s, far side in %s, gateway %s/%d on %s, mtu %d%s",
                 uplink.name, uplink.address, where, uplink.gateway,
                 uplink.address.network.prefixlen, holder, uplink.mtu,
                 f" (created {', '.join(created)})" if created else "")
        return fd

    def _create_underlay_netns(self, session: NetlinkSession, name: str) -> None:
        try:
            pyroute2_netns.create(name)
        except FileExistsError:
            # Made a moment ago by a daemon with another state directory, or by hand: either
            # way it is there now, which is all a joining node needs.
            return
        write_netns_sysctls(name, UNDERLAY_SYSCTLS)
        with session.in_netns(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def leave_underlay(self, session: NetlinkSession, use: UnderlayUse) -> list[str]:
        """Take this node's uplink out of a shared underlay, removing what nobody uses now."""
        with UnderlayLock(self.state_dir, use.netns):
            record = UnderlayRecord.load(self.state_dir, use.netns)
            return self._leave_underlay(session, use, record)

    def _leave_underlay(self, session: NetlinkSession, use: UnderlayUse,
                        record: UnderlayRecord) -> list[str]:
        """The caller holds the underlay's lock; ``record`` is what it read under it."""
        removed: list[str] = []
        in_use = False
        if use.netns is not None and not netns_exists(use.netns):
            # Gone with everything that was in it.
            record.bridges.clear()
            record.addresses.clear()
        else:
            where = f"namespace {use.netns}" if use.netns is not None else "the root namespace"
            with session.in_namespace(use.netns) as ipr:
                if delete_link_named(ipr, use.tap):
                    removed.append(f"link {use.tap} in {where}")
                removed += _release_bridges(ipr, record, where)
                in_use = bool(tun_links(ipr))
        if use.netns is not None and record.created_netns:
            if not in_use:
                removed += self.remove_netns(session, use.netns)
            if not netns_exists(use.netns):
                record.created_netns = False
        record.save()
        self.journal.erase_underlay(use)
        return removed

    def remove_tap(self, session: NetlinkSession, name: str) -> list[str]:
        """Delete a root-namespace TAP (which also drops routes through it) and its entry."""
        removed = [f"link {name}"] if session.delete_link(name) else []
        self.journal.erase_tap(name)
        return removed

    def remove_netns(self, session: NetlinkSession, name: str) -> list[str]:
        """Kill the namespace's processes, delete its eth0, unmount it, remove its containers'
        files, erase its entry."""
        removed: list[str] = []
        if netns_exists(name):
            removed += [f"process {pid} in {name}" for pid in kill_netns_processes(name)]
            # Deleting eth0 explicitly makes the TAP go now; the namespace itself is destroyed
            # asynchronously by the kernel once its last reference is dropped.
            session.delete_link_in_netns(name, POD_IFNAME)
            if remove_netns_mount(name):
                removed.append(f"netns {name}")
        # Its containers are gone with it, and so are their records and output files.
        remove_container_files(self.state_dir, name)
        self.journal.erase_netns(name)
        return removed

    def other_nodes_claims(self) -> dict[str, str]:
        """Namespace and TAP names that other nodes' journals (in our state directory) list, with
        the node of each. A journal says whose a name is."""
        claims: dict[str, str] = {}
        for other, entries in other_nodes_entries(self.state_dir, self.node).items():
            for name in (*entries.netns, *entries.taps):
                claims.setdefault(name, other)
        return claims

    def remove_all(self, session: NetlinkSession, names: NodeNames,
                   keep: NodeNames = NodeNames()) -> list[str]:
        """Remove the journalled objects and ``names``, except those of ``keep``; whatever is
        already gone is skipped, and so is a name of ``names`` that another node's journal lists
        (it is that node's)."""
        entries = self.journal.entries()
        claims = self.other_nodes_claims()
        for name in (*names.netns, *names.taps):
            if name in claims and name not in (*entries.netns, *entries.taps):
                log.warning("not removing %s: node %s's journal names it", name, claims[name])
        names = NodeNames(netns=tuple(n for n in names.netns if n not in claims),
                          taps=tuple(n for n in names.taps if n not in claims),
                          underlays=names.underlays)
        everything = (NodeNames(netns=entries.netns, taps=entries.taps,
                                underlays=entries.underlays) | names) - keep
        removed: list[str] = []
        for name in everything.netns:
            removed += self.remove_netns(session, name)
        for name in everything.taps:
            removed += self.remove_tap(session, name)
        for use in everything.underlays:
            removed += self.leave_underlay(session, use)
        return removed


class Kernel:
    """Creates and removes the node's kernel objects. Every method runs its netlink work in the
    worker thread."""

    def __init__(self, topology: Topology, worker: NetlinkWorker, objects: NodeObjects) -> None:
        self.topology = topology
        self._worker = worker
        self._objects = objects
        self._host_routes: list[IPv4Network] = []
        self._closed = False
        # What reclaim_leftovers kept for the create_* methods to re-attach; each is taken once.
        self._reusable = NodeNames()
        self._keep = False

    @property
    def vnet_hdr_len(self) -> int:
        """The virtio-net header size of the node's TAPs (see ``node_objects``)."""
        return self._objects.vnet_hdr_len

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, topology: Topology,
                   lock: NodeLock | None = None) -> AsyncIterator["Kernel"]:
        """Lock the node, start the netlink worker, and tear everything down on the way out.
        ``lock``: the node's lock, already held (a standby that took the node over); it is
        released on the way out as one taken here would be."""
        if lock is None:
            lock = NodeLock(topology.control.state_dir, topology.node.name)
            lock.acquire()
        try:
            worker = NetlinkWorker(name=f"netlink-{topology.node.name}")
            worker.start()
            try:
                objects = await worker.run(lambda _session: node_objects(topology))
                kernel = cls(topology, worker, objects)
                try:
                    yield kernel
                finally:
                    await kernel.teardown()
                    kernel._closed = True
            finally:
                await worker.stop()
        finally:
            lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Kernel is closed")

    async def remove_leftovers(self) -> list[str]:
        """Remove what an earlier run of this node left: journalled and deterministic names.

        Call it before creating anything: a pod created by this run has the same names and would
        be removed too.
        """
        self._check_open()
        names = NodeNames.of_topology(self.topology)
        removed = await self._worker.run(self._objects.remove_all, names)
        for item in removed:
            log.warning("removed leftover %s", item)
        return removed

    async def reclaim_leftovers(self) -> list[str]:
        """Keep what an earlier run of this node left that the topology still describes as it
        is, for the create_* methods to re-attach; remove the rest as ``remove_leftovers`` does.
        Call it before creating anything."""
        self._check_open()
        reusable = await self._worker.run(self._objects.find_reusable, self.topology)
        removed = await self._worker.run(self._objects.remove_all,
                                         NodeNames.of_topology(self.topology), reusable)
        for item in removed:
            log.warning("removed leftover %s", item)
        self._reusable = reusable
        return removed

    def keep(self) -> None:
        """Leave every object in place on the way out (a restart re-attaches them); only the
        fds close. Host routes stay too: they go through the persistent host TAP."""
        self._keep = True

    def _take_reusable(self, netns: str | None = None, tap: str | None = None) -> bool:
        """Whether the object is one ``reclaim_leftovers`` kept; it is then no longer listed."""
        names = NodeNames(netns=(netns,) if netns else (), taps=(tap,) if tap else ())
        found = all(n in self._reusable.netns for n in names.netns) and all(
            t in self._reusable.taps for t in names.taps)
        self._reusable -= names
        return found

    async def _reattach(self, what: str, reattach: Any, *args: Any) -> int | None:
        """The fd ``reattach`` gives, or None (logged) when the kept object cannot be used."""
        try:
            return await self._worker.run(reattach, *args)
        except OSError as exc:
            log.warning("%s: cannot re-attach (%s); it is created anew", what, exc)
            return None

    async def create_pod(self, pod: Pod) -> int:
        """Build the pod's namespace and eth0, or re-attach a kept pod; return the TAP fd,
        which the caller owns."""
        self._check_open()
        topology = self.topology
        offloads = topology.dataplane.offloads
        if self._take_reusable(netns=pod.netns, tap=pod.tap):
            fd = await self._reattach(f"pod {pod.key}", self._objects.reattach_pod, pod,
                                      offloads)
            if fd is not None:
                return fd
            await self._worker.run(self._objects.delete_pod, pod)
        return await self._worker.run(self._objects.create_pod, pod,
                                      topology.segment(pod.segment), topology.pod_mtu(pod),
                                      offloads)

    async def delete_pod(self, pod: Pod) -> None:
        self._check_open()
        removed = await self._worker.run(self._objects.delete_pod, pod)
        log.info("pod %s: removed %s", pod.key, ", ".join(removed) or "nothing (already gone)")

    async def create_host_port(self) -> int:
        self._check_open()
        port = self.topology.host_port
        if not port.enabled:
            raise KernelError("the host port is disabled in the topology")
        if self._take_reusable(tap=port.name):
            fd = await self._reattach(f"host port {port.name}", self._objects.reattach_host_port,
                                      port, self.topology.dataplane.offloads)
            if fd is not None:
                return fd
            await self._worker.run(self._objects.remove_tap, port.name)
        return await self._worker.run(self._objects.create_host_port, port,
                                      self.topology.node.mtu, self.topology.dataplane.offloads)

    async def create_uplink(self) -> int:
        """Build the uplink's TAP and far side; return the TAP fd, which the caller owns."""
        self._check_open()
        uplink = self.topology.uplink
        if uplink is None:
            raise KernelError("the topology has no uplink")
        if self._take_reusable(tap=uplink.name):
            fd = await self._reattach(f"uplink {uplink.name}", self._objects.reattach_uplink,
                                      uplink, self.topology.dataplane.offloads)
            if fd is not None:
                return fd
            await self._worker.run(self._objects.remove_all, NodeNames(
                taps=(uplink.name,),
                underlays=(underlay_use(uplink),) if joins_underlay(uplink) else ()))
        try:
            return await self._worker.run(self._objects.create_uplink, uplink,
                                          self.topology.dataplane.offloads)
        except NetlinkError as exc:
            raise KernelError(f"cannot create the uplink {uplink.name}: "
                              f"{os.strerror(exc.code) if exc.code else exc}") from None

    async def delete_host_port(self) -> None:
        self._check_open()
        await self._worker.run(self._objects.remove_tap, self.topology.host_port.name)
        self._host_routes.clear()

    async def add_host_route(self, dst: IPv4Network, via: IPv4Address | None) -> None:
        """Route ``dst`` in the root namespace through the host TAP (via ``via`` if given)."""
        self._check_open()
        device = self.topology.host_port.name
        try:
            await self._worker.run(_add_route, dst, device, via)
        except NetlinkError as exc:
            # EEXIST is the likely one: the host already routes this prefix elsewhere, and
            # replacing a route we did not make is not ours to do.
            raise KernelError(f"cannot route {dst} via {via} on {device} in the host: "
                              f"{os.strerror(exc.code) if exc.code else exc}") from None
        self._host_routes.append(dst)
        log.info("host route %s via %s dev %s", dst, via, device)

    async def teardown(self) -> None:
        """Remove every journalled object of this node, unless ``keep`` was called; safe to
        call again and when cancelled."""
        if self._closed:
            return
        if self._keep:
            log.info("kept the node's pods, TAPs and routes for the next start (journal %s)",
                     self._objects.journal.path)
            return
        with trio.CancelScope(shield=True):
            routes, self._host_routes = self._host_routes, []
            device = self.topology.host_port.name
            for dst in routes:
                await self._worker.run(_delete_route, dst, device)
            await self._worker.run(self._objects.remove_all, NodeNames())


def node_objects(topology: Topology) -> NodeObjects:
    """The node's kernel layer, with the TAP framing its overlay needs (``NodeObjects``)."""
    tunnel = (topology.overlay is not None and topology.dataplane.offloads
              and udp_tunnel_gso_supported())
    if tunnel:
        log.info("uplink with UDP-tunnel GSO: pods' TSO super-frames cross the overlay whole "
                 "(24-byte virtio-net headers on every TAP)")
    elif topology.overlay is not None and topology.dataplane.offloads:
        log.warning("the kernel offers no UDP-tunnel GSO on TAPs (Linux 6.17 or later): pods of "
                    "this node get no TSO, so that their packets fit the overlay")
    return NodeObjects(topology.node.name, topology.control.state_dir,
                       tso=topology.overlay is None or tunnel,
                       vnet_hdr_len=VNET_TUNNEL_HDR_LEN if tunnel else VNET_HDR_LEN,
                       uplink_tunnel_gso=tunnel)


def _tap_problem(ipr: Any, name: str, mac: str | None, mtu: int) -> tuple[int, str | None]:
    """The link's index, and why it is not an up TAP with ``mac`` (unless None) and ``mtu``."""
    index = find_link(ipr, name)
    if index is None:
        return -1, f"there is no link {name}"
    link = ipr.get_links(index)[0]
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "tun":
        return index, f"{name} is a {kind or 'plain'} link, not a TAP"
    if mac is not None and link.get("IFLA_ADDRESS") != mac.lower():
        return index, f"{name} has MAC {link.get('IFLA_ADDRESS')}, not {mac}"
    if link.get("IFLA_MTU") != mtu:
        return index, f"{name} has MTU {link.get('IFLA_MTU')}, not {mtu}"
    if not link["flags"] & IFF_UP:
        return index, f"{name} is down"
    return index, None


def _pod_mismatch(session: NetlinkSession, pod: Pod, segment: Segment, mtu: int) -> str | None:
    """Why the pod's namespace is not what ``create_pod`` would make of ``pod`` now, or None."""
    gone = f"namespace {pod.netns} is gone"
    if not netns_exists(pod.netns):
        return gone
    address = IPv4Interface(f"{pod.ip}/{segment.cidr.prefixlen}")
    try:
        with session.in_netns(pod.netns) as ipr:
            index, problem = _tap_problem(ipr, POD_IFNAME, pod.mac, mtu)
            if problem is not None:
                return problem
            if not has_address(ipr, index, address):
                return f"{POD_IFNAME} does not have {address}"
            if not any(route["dst_len"] == 0 and route.get("RTA_OIF") == index
                       and route.get("RTA_GATEWAY") == str(segment.gateway)
                       for route in ipr.get_routes(family=2, table=ROUTE_TABLE_MAIN)):
                return f"no default route via {segment.gateway}"
    except FileNotFoundError:
        return gone
    return None


def _host_port_mismatch(session: NetlinkSession, port: HostPort, mtu: int) -> str | None:
    index, problem = _tap_problem(session.root, port.name, port.mac, mtu)
    if problem is None and not has_address(session.root, index, port.address):
        problem = f"{port.name} does not have {port.address}"
    return problem


def _uplink_mismatch(session: NetlinkSession, uplink: Uplink) -> str | None:
    """Why the uplink's TAP and far side are not what ``create_uplink`` leaves, or None."""
    if uplink.netns is not None and not netns_exists(uplink.netns):
        return f"namespace {uplink.netns} is gone"
    with session.in_namespace(uplink.netns) as ipr:
        if uplink.bridge is not None:
            index, problem = _tap_problem(ipr, uplink.name, None, uplink.mtu)
            bridge = find_link(ipr, uplink.bridge)
            if problem is None and (bridge is None
                                    or ipr.get_links(index)[0].get("IFLA_MASTER") != bridge):
                problem = f"{uplink.name} is not a port of bridge {uplink.bridge}"
            return problem
        index, problem = _tap_problem(ipr, uplink.name, uplink.far_mac, uplink.mtu)
        gateway = IPv4Interface(f"{uplink.gateway}/{uplink.address.network.prefixlen}")
        if problem is None and not has_address(ipr, index, gateway):
            problem = f"{uplink.name} does not have {gateway}"
        return problem


def _configure_far_side(ipr: Any, uplink: Uplink) -> None:
    """The uplink TAP as the outside world's interface: gateway MAC and address, up, and no
    route but the connected one."""
    found = ipr.link_lookup(ifname=uplink.name)
    if not found:
        raise LookupError(f"link {uplink.name} vanished while it was being configured")
    index = found[0]
    ipr.link("set", index=index, address=uplink.far_mac, mtu=uplink.mtu)
    ipr.addr("add", index=index, address=str(uplink.gateway),
             prefixlen=uplink.address.network.prefixlen)
    ipr.link("set", index=index, state="up")


def _prepare_bridge(ipr: Any, uplink: Uplink, record: UnderlayRecord) -> tuple[int, bool]:
    """Step 3: the bridge exists, holds the gateway address and is up; its index, and whether
    this call created it. A bridge that was there before any daemon keeps its MAC and MTU."""
    assert uplink.bridge is not None
    name = uplink.bridge
    gateway = IPv4Interface(f"{uplink.gateway}/{uplink.address.network.prefixlen}")
    index = find_link(ipr, name)
    made = False
    if index is not None and (kind := link_kind(ipr, index)) != "bridge":
        raise KernelError(f"uplink.bridge: {name} exists and is not a bridge (it is a "
                          f"{kind or 'plain'} link)")
    if index is None:
        if name not in record.bridges:
            record.bridges.append(name)
            record.save()
        index, made = ensure_bridge(ipr, name)
        if made:
            # An explicit MAC stays put as ports come and go (a bridge otherwise takes its
            # lowest port's), so the gateway's MAC is what the config says.
            ipr.link("set", index=index, address=uplink.far_mac, mtu=uplink.mtu)
    elif name not in record.bridges and not has_address(ipr, index, gateway):
        record.addresses.append((name, str(gateway)))
        record.save()
    add_address(ipr, index, gateway)
    ipr.link("set", index=index, state="up")
    return index, made


def _attach_far_side(ipr: Any, uplink: Uplink, bridge: int) -> None:
    """Step 4 with a bridge: the moved TAP becomes one of its ports."""
    index = find_link(ipr, uplink.name)
    if index is None:
        raise LookupError(f"link {uplink.name} vanished while it was being configured")
    ipr.link("set", index=index, mtu=uplink.mtu, master=bridge)
    ipr.link("set", index=index, state="up")


def _release_bridges(ipr: Any, record: UnderlayRecord, where: str) -> list[str]:
    """Remove the record's bridges, and take back its addresses, where no far side is a port."""
    taps = set(tun_links(ipr))

    def unused(index: int | None) -> bool:
        return index is None or not taps.intersection(bridge_ports(ipr, index))

    removed: list[str] = []
    for name in list(record.bridges):
        index = find_link(ipr, name)
        if not unused(index):
            continue
        if delete_link_named(ipr, name):
            removed.append(f"bridge {name} in {where}")
        record.bridges.remove(name)
    for name, text in list(record.addresses):
        index = find_link(ipr, name)
        if not unused(index):
            continue
        if index is not None and delete_address(ipr, index, IPv4Interface(text)):
            removed.append(f"address {text} on {name} in {where}")
        record.addresses.remove((name, text))
    return removed


def _add_route(session: NetlinkSession, dst: IPv4Network, device: str,
               via: IPv4Address | None) -> None:
    session.add_route(dst, device, via)


def _delete_route(session: NetlinkSession, dst: IPv4Network, device: str) -> bool:
    return session.delete_route(dst, device)


def clean_node(node_name: str, state_dir: str = "/run/vswitch",
               topology: Topology | None = None) -> list[str]:
    """Remove what a crashed daemon of ``node_name`` left behind (Mininet's ``mn -c``).

    Also removes the node's saved connections. Synchronous: it uses netlink in the calling thread, so call it from a plain thread (or
    ``trio.to_thread.run_sync``), not from a trio task directly. Raises NodeBusyError while a
    daemon of the node is running, since its objects are in use, not left over.
    """
    if topology is not None and topology.node.name != node_name:
        raise ValueError(f"topology {topology.source} is for node {topology.node.name}, "
                         f"not {node_name}")
    names = NodeNames.of_topology(topology) if topology is not None else NodeNames()
    with NodeLock(state_dir, node_name), NetlinkSession() as session:
        objects = NodeObjects(node_name, state_dir)
        removed = objects.remove_all(session, names)
        # The pods' connections go with them: a later start must not restore them.
        remove_saved_connections(state_dir, node_name)
        return removed


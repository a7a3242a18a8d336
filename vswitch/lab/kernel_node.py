"""A Kubernetes node made of kernel parts only, built exactly as flannel's VXLAN backend builds one.

vswitch's overlay must interoperate with Linux on the wire, and its speed is judged against the
kernel's own path; both need a node that is nothing but Linux. This module builds one with
pyroute2 and removes it again.

Theory of operation. One node is a namespace (``netns``) plus one namespace per pod::

    underlay netns   bridge ─ port knu-XXXXXX ─┐ (veth)
    node netns       eth0      underlay address, MTU = underlay MTU
                     flannel.<vni>   vxlan: id VNI, dstport PORT, nolearning, local = eth0's
                                     address, dev eth0; MTU = underlay MTU - 50; the pod CIDR's
                                     first address /32; MAC = the VTEP MAC
                     cni0      bridge with the pod CIDR's gateway (.1), MTU as flannel.<vni>
                     veth<i>   port of cni0 ─┐ (veth)
                     net.ipv4.ip_forward = 1 (this namespace only)
    pod netns i      eth0      pod CIDR + 10 + i, default route via .1

For every remote node flannel installs three entries on ``flannel.<vni>``, and so does this::

    route  <remote pod CIDR> via <its first address> dev flannel.<vni> onlink
    neigh  <its first address> lladdr <remote VTEP MAC> permanent
    fdb    <remote VTEP MAC> dst <remote underlay address> self permanent

The route sends the remote pods' packets to a next hop that only exists by its neighbour entry;
the neighbour gives the inner destination MAC; the FDB entry maps that MAC to the outer
destination. With ``nolearning`` the device never adds entries from what it receives, so the
node talks to exactly the nodes it was told about. A packet between pods of two nodes crosses
two routers (each node's), so a reply arrives with its sender's TTL minus two.

The VTEP MAC defaults to ``mac_for_ip`` of the underlay address, the MAC vswitch derives for a
peer without ``vtep_mac``, so a vswitchd node can name a kernel node as a peer by its address
and pod CIDR alone. Namespace and underlay port names carry a random suffix; the context
manager removes the namespaces (and with them every device inside) on close, and whatever was
already made when building fails.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import ndmsg

from vswitch.lab.namespaces import create_netns, random_suffix, write_sysctl
from vswitch.model import VXLAN_OVERHEAD, mac_for_ip

POD_OFFSET = 10  # pod i gets the pod CIDR's address + POD_OFFSET + i, as the benchmark's pods
BRIDGE = "cni0"
UNDERLAY_IFNAME = "eth0"


@dataclass(frozen=True)
class RemoteNode:
    """What a node must know of another to reach its pods, as flannel reads it from a lease."""

    name: str
    address: IPv4Address  # the other node's underlay address: the outer destination
    pod_cidr: IPv4Network
    vtep_mac: str  # the other node's VTEP MAC: the inner destination

    @property
    def next_hop(self) -> IPv4Address:
        """The address flannel routes the remote pod CIDR through: its first address."""
        return self.pod_cidr.network_address


@dataclass(frozen=True)
class KernelNodeSpec:
    """One node to build. ``underlay_netns`` and ``underlay_bridge`` must exist already."""

    name: str
    underlay_netns: str
    underlay_bridge: str
    address: IPv4Interface  # the node's underlay address, with the underlay's prefix
    pod_cidr: IPv4Network
    pods: int = 1
    vni: int = 1
    port: int = 4789
    underlay_mtu: int = 1500
    vtep_mac: str | None = None  # None: mac_for_ip(address), as vswitch derives a peer's
    remotes: tuple[RemoteNode, ...] = ()  # known at start; add_remote adds more later

    @property
    def overlay_mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD

    @property
    def gateway(self) -> IPv4Address:
        """The pods' default gateway, held by cni0."""
        return self.pod_cidr.network_address + 1

    def pod_ip(self, index: int) -> IPv4Address:
        ip = self.pod_cidr.network_address + POD_OFFSET + index
        if ip not in self.pod_cidr or ip == self.pod_cidr.broadcast_address:
            raise ValueError(f"{self.pod_cidr} has no room for pod {index}")
        return ip


class KernelNode:
    """A built node: its namespaces, its pods' addresses, and its remote nodes, kept current."""

    def __init__(self, spec: KernelNodeSpec) -> None:
        suffix = random_suffix()
        self.spec = spec
        self.netns = f"kn-{spec.name}-{suffix}"
        self.pod_netns = tuple(f"kn-{spec.name}-{suffix}-pod{i}" for i in range(spec.pods))
        self.pod_ips = tuple(spec.pod_ip(i) for i in range(spec.pods))
        self.vtep_mac = spec.vtep_mac or mac_for_ip(spec.address.ip)
        self.vxlan = f"flannel.{spec.vni}"
        self.underlay_port = f"knu-{suffix}"  # in the underlay namespace, a port of its bridge
        self._suffix = suffix
        self._remotes: dict[str, RemoteNode] = {}
        self._stack = contextlib.ExitStack()

    def as_remote(self) -> RemoteNode:
        """This node as another node sees it."""
        return RemoteNode(self.spec.name, self.spec.address.ip, self.spec.pod_cidr, self.vtep_mac)

    @property
    def remotes(self) -> tuple[RemoteNode, ...]:
        return tuple(self._remotes.values())

    # ---- building and removing ----------------------------------------------------------------

    def __enter__(self) -> KernelNode:
        with contextlib.ExitStack() as stack:
            create_netns(stack, self.netns)
            for name in self.pod_netns:
                create_netns(stack, name)
            self._attach_underlay(stack)
            with IPRoute(netns=self.netns, flags=0) as ipr:
                self._configure_underlay(ipr)
                self._add_vxlan(ipr)
                self._add_bridge(ipr)
                for index in range(self.spec.pods):
                    self._add_pod_link(ipr, index)
            for index in range(self.spec.pods):
                self._configure_pod(index)
            write_sysctl(self.netns, "net.ipv4.ip_forward", "1")
            for remote in self.spec.remotes:
                self.add_remote(remote)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove the underlay port, the pods' namespaces and the node's namespace."""
        self._stack.close()
        self._remotes.clear()

    def _attach_underlay(self, stack: contextlib.ExitStack) -> None:
        """A veth from the underlay bridge into the node; its node end is renamed there."""
        spec = self.spec
        with IPRoute(netns=spec.underlay_netns, flags=0) as ipr:
            bridge = ipr.link_lookup(ifname=spec.underlay_bridge)
            if not bridge:
                raise LookupError(f"no bridge {spec.underlay_bridge} in namespace "
                                  f"{spec.underlay_netns}")
            ipr.link("add", ifname=self.underlay_port, kind="veth", mtu=spec.underlay_mtu,
                     peer={"ifname": f"knn-{self._suffix}", "net_ns_fd": self.netns,
                           "mtu": spec.underlay_mtu})
            stack.callback(self._detach_underlay)
            index = ipr.link_lookup(ifname=self.underlay_port)[0]
            ipr.link("set", index=index, master=bridge[0], state="up")

    def _detach_underlay(self) -> None:
        """Delete the underlay port; the node's namespace going takes it too, unless something
        still holds that namespace open, so it is not left to that."""
        with IPRoute(netns=self.spec.underlay_netns, flags=0) as ipr:
            for index in ipr.link_lookup(ifname=self.underlay_port):
                ipr.link("del", index=index)

    def _configure_underlay(self, ipr: IPRoute) -> None:
        address = self.spec.address
        index = ipr.link_lookup(ifname=f"knn-{self._suffix}")[0]
        ipr.link("set", index=index, ifname=UNDERLAY_IFNAME)
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _add_vxlan(self, ipr: IPRoute) -> None:
        spec = self.spec
        ipr.link("add", ifname=self.vxlan, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
                 vxlan_learning=0, vxlan_local=str(spec.address.ip),
                 vxlan_link=ipr.link_lookup(ifname=UNDERLAY_IFNAME)[0],
                 mtu=spec.overlay_mtu, address=self.vtep_mac)
        index = ipr.link_lookup(ifname=self.vxlan)[0]
        ipr.addr("add", index=index, address=str(spec.pod_cidr.network_address), prefixlen=32)
        ipr.link("set", index=index, state="up")

    def _add_bridge(self, ipr: IPRoute) -> None:
        spec = self.spec
        ipr.link("add", ifname=BRIDGE, kind="bridge", mtu=spec.overlay_mtu)
        index = ipr.link_lookup(ifname=BRIDGE)[0]
        ipr.addr("add", index=index, address=str(spec.gateway), prefixlen=spec.pod_cidr.prefixlen)
        ipr.link("set", index=index, state="up")

    def _add_pod_link(self, ipr: IPRoute, index: int) -> None:
        """veth<i> on cni0, its peer created in pod i's namespace (renamed to eth0 there)."""
        mtu = self.spec.overlay_mtu
        ipr.link("add", ifname=f"veth{index}", kind="veth", mtu=mtu,
                 peer={"ifname": f"knp{index}-{self._suffix}", "net_ns_fd": self.pod_netns[index],
                       "mtu": mtu})
        port = ipr.link_lookup(ifname=f"veth{index}")[0]
        ipr.link("set", index=port, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")

    def _configure_pod(self, index: int) -> None:
        ip = self.pod_ips[index]
        with IPRoute(netns=self.pod_netns[index], flags=0) as ipr:
            link = ipr.link_lookup(ifname=f"knp{index}-{self._suffix}")[0]
            ipr.link("set", index=link, ifname="eth0", address=mac_for_ip(ip))
            ipr.addr("add", index=link, address=str(ip), prefixlen=self.spec.pod_cidr.prefixlen)
            ipr.link("set", index=link, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(self.spec.gateway), oif=link)

    # ---- remote nodes ---------------------------------------------------------------------------

    def add_remote(self, remote: RemoteNode) -> None:
        """Route ``remote``'s pod CIDR through the overlay: neighbour, FDB entry and route."""
        if remote.name in self._remotes:
            raise ValueError(f"{self.spec.name} already knows a node {remote.name}")
        with IPRoute(netns=self.netns, flags=0) as ipr:
            vxlan = ipr.link_lookup(ifname=self.vxlan)[0]
            ipr.neigh("add", ifindex=vxlan, dst=str(remote.next_hop), lladdr=remote.vtep_mac,
                      state="permanent")
            ipr.fdb("append", ifindex=vxlan, lladdr=remote.vtep_mac, dst=str(remote.address),
                    state=ndmsg.NUD_PERMANENT, flags=ndmsg.NTF_SELF)
            ipr.route("add", dst=str(remote.pod_cidr), gateway=str(remote.next_hop), oif=vxlan,
                      flags="onlink")
        self._remotes[remote.name] = remote

    def remove_remote(self, name: str) -> RemoteNode:
        """Withdraw node ``name``: its route, neighbour and FDB entry; returns what it was."""
        remote = self._remotes.pop(name)
        with IPRoute(netns=self.netns, flags=0) as ipr:
            vxlan = ipr.link_lookup(ifname=self.vxlan)[0]
            ipr.route("del", dst=str(remote.pod_cidr), gateway=str(remote.next_hop), oif=vxlan)
            ipr.neigh("del", ifindex=vxlan, dst=str(remote.next_hop), lladdr=remote.vtep_mac)
            ipr.fdb("del", ifindex=vxlan, lladdr=remote.vtep_mac, dst=str(remote.address))
        return remote

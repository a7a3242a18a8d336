"""The benchmark's cross-node variants: a pod on one node to a pod on another, over VXLAN.

``kernel-vxlan``
    two nodes made of kernel parts only, as flannel's VXLAN backend builds them
    (``vswitch.lab.kernel_node``: a ``vxlan`` device with ``nolearning``, a bridge ``cni0``, static
    route, neighbour and FDB entries per remote node), on one bridge underlay. The reference.
``vswitch-overlay``
    two ``vswitchd`` nodes whose uplinks are ports of one bridge in one underlay namespace
    (``[uplink] netns`` and ``bridge``), each with an ``[overlay]`` and the other as a static
    ``[[peers]]`` entry (VTEP MACs derived from the underlay addresses, the default).

Both variants use the same addresses: the underlay is a /24 (the bridge holds .1, the nodes .2
and .3), and a /23 is the cluster, its two halves the nodes' pod CIDRs, so that the cluster CIDR
covers exactly the two nodes. The pods get the overlay MTU (underlay MTU - 50), as flannel gives
them, and each is the first pod of its node (address + 10). A packet crosses each node's router,
so the echo replies carry ``b``'s TTL minus two.

This module builds the two variants and names the ratios that compare them; measuring, checking
and cleanup are ``bench.py``'s, which hands in how it starts a daemon, so this module has no
process handling of its own and ``bench.py`` stays the one entry point.
"""
from __future__ import annotations

import contextlib
import textwrap
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Callable

from vswitch.lab.kernel_node import KernelNode, KernelNodeSpec
from vswitch.lab.namespaces import create_netns
from vswitch.lab.underlay import Underlay
from vswitch.model import Topology

KERNEL_VXLAN = "kernel-vxlan"
VSWITCH_OVERLAY = "vswitch-overlay"
VARIANTS = (KERNEL_VXLAN, VSWITCH_OVERLAY)
# An underlay /24 and a /23 whose halves are the two nodes' pod CIDRs.
PREFIX_LENGTHS = (24, 23)
HOPS = 2  # each node's router
UNDERLAY_MTU = 1500
# (variant, reference): ratios reported besides those to the bridge. The overlay against the same
# switch on one node is the cost of crossing nodes; against the kernel's VXLAN path, how far
# vswitch is from what flannel gives.
RATIO_PAIRS = ((VSWITCH_OVERLAY, "vswitch"), (VSWITCH_OVERLAY, KERNEL_VXLAN))
OVERLAY_HINT = (
    "vswitch-overlay needs vswitchd to run a node with [overlay], static [[peers]] naming the "
    "other node, and an uplink on a bridge shared through [uplink] netns and bridge. A vswitchd "
    "that does not forward across nodes yet refuses such a node (see its log above); leave the "
    "variant out with --variants until it does.")

# ``start_daemon(variant, node, render)`` starts vswitchd for node ``node`` on the topology that
# ``render(workdir)`` writes, waits until it is ready, and returns the loaded topology and the log.
StartDaemon = Callable[[str, str, Callable[[Path], str]], tuple[Topology, Path]]


@dataclass(frozen=True)
class Endpoints:
    """Pod ``a`` on node one and pod ``b`` on node two: namespaces and addresses."""

    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str
    hops: int = HOPS


@dataclass(frozen=True)
class Plan:
    """The addresses of a cross-node variant, from its underlay /24 and its cluster /23."""

    underlay: IPv4Network
    cluster: IPv4Network

    @property
    def gateway(self) -> IPv4Interface:
        return self.host(1)

    def host(self, offset: int) -> IPv4Interface:
        return IPv4Interface(f"{self.underlay.network_address + offset}/{self.underlay.prefixlen}")

    def node_address(self, index: int) -> IPv4Interface:
        """Node 0's underlay address is .2, node 1's .3."""
        return self.host(2 + index)

    def pod_cidr(self, index: int) -> IPv4Network:
        return list(self.cluster.subnets(new_prefix=24))[index]


def plan(networks: list[IPv4Network]) -> Plan:
    underlay, cluster = networks
    return Plan(underlay, cluster)


def build_kernel_vxlan(stack: contextlib.ExitStack, networks: list[IPv4Network]) -> Endpoints:
    """Two kernel-only nodes with one pod each, on one underlay; removed when ``stack`` closes."""
    addresses = plan(networks)
    underlay = stack.enter_context(Underlay(addresses.gateway, mtu=UNDERLAY_MTU))
    nodes = [
        stack.enter_context(KernelNode(KernelNodeSpec(
            name=f"n{index + 1}", underlay_netns=underlay.netns, underlay_bridge=underlay.bridge,
            address=addresses.node_address(index), pod_cidr=addresses.pod_cidr(index),
            underlay_mtu=UNDERLAY_MTU)))
        for index in range(2)
    ]
    nodes[0].add_remote(nodes[1].as_remote())
    nodes[1].add_remote(nodes[0].as_remote())
    return Endpoints(nodes[0].pod_netns[0], nodes[1].pod_netns[0], str(nodes[0].pod_ips[0]),
                     str(nodes[1].pod_ips[0]))


def overlay_topology(addresses: Plan, names: tuple[str, str], index: int, underlay_netns: str,
                     bridge: str, workdir: Path) -> str:
    """Node ``index`` of the two (pod ``a`` on node 0, ``b`` on node 1), the other its peer."""
    peer = 1 - index
    return textwrap.dedent(
        f"""\
        [node]
        name = "{names[index]}"
        pod_cidr = "{addresses.pod_cidr(index)}"

        [host_port]
        enabled = false

        [dataplane]
        offloads = true

        [control]
        socket = "{workdir / 'ctl.sock'}"
        state_dir = "{workdir / 'state'}"

        [cluster]
        cidr = "{addresses.cluster}"

        [uplink]
        address = "{addresses.node_address(index)}"
        gateway = "{addresses.gateway.ip}"
        netns = "{underlay_netns}"
        bridge = "{bridge}"
        mtu = {UNDERLAY_MTU}

        [overlay]

        [[peers]]
        name = "{names[peer]}"
        address = "{addresses.node_address(peer).ip}"
        pod_cidr = "{addresses.pod_cidr(peer)}"

        [[pods]]
        name = "{'ab'[index]}"
        """
    )


def build_vswitch_overlay(stack: contextlib.ExitStack, start_daemon: StartDaemon, suffix: str,
                          networks: list[IPv4Network]) -> tuple[Endpoints, list[Path]]:
    """Two vswitchd nodes on one underlay, each the other's peer; returns the pods and the logs.

    The underlay namespace is made here, before either daemon starts, so that both find it and
    leave it alone (a daemon removes only a namespace it created), and it is removed after both
    have stopped; the daemons create the bridge in it and remove it when the last one stops.
    """
    addresses = plan(networks)
    underlay_netns = create_netns(stack, f"vbu-{suffix}")
    bridge = f"vbubr-{suffix}"
    names = (f"b{suffix}o1", f"b{suffix}o2")
    topologies, logs = [], []
    for index in range(2):
        topology, log = start_daemon(
            VSWITCH_OVERLAY, names[index],
            lambda workdir: overlay_topology(addresses, names, index, underlay_netns, bridge,
                                             workdir))
        topologies.append(topology)
        logs.append(log)
    pod_a, pod_b = topologies[0].pod("a"), topologies[1].pod("b")
    return Endpoints(pod_a.netns, pod_b.netns, str(pod_a.ip), str(pod_b.ip)), logs


def ratios(medians: dict[str, dict[str, dict[str, float]]],
           figures: tuple[tuple[str, str], ...]) -> dict[str, dict[str, float | None]]:
    """``{"vswitch-overlay/vswitch": {"tcp.gbit_s": 0.83, ...}, ...}`` for the pairs measured."""
    result: dict[str, dict[str, float | None]] = {}
    for variant, reference in RATIO_PAIRS:
        if variant not in medians or reference not in medians:
            continue
        row: dict[str, float | None] = {}
        for measurement, key in figures:
            ours = medians[variant].get(measurement, {}).get(key)
            theirs = medians[reference].get(measurement, {}).get(key)
            row[f"{measurement}.{key}"] = ours / theirs if ours is not None and theirs else None
        result[f"{variant}/{reference}"] = row
    return result

"""Two nodes built from kernel parts only, as flannel builds them, on one bridge underlay.

These nodes are the reference vswitch's overlay must interoperate with, and the kernel path the
cross-node benchmark measures, so the reference itself is checked here: pods of two nodes reach
each other by their real addresses through two routers (TTL 62), carry TCP and UDP intact, a
withdrawn node is unreachable again, forwarding is on in the nodes' namespaces and nowhere else,
and nothing is left behind, also when building fails halfway.
"""
from __future__ import annotations

import json
import subprocess
import sys
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Iterator

import pytest
from pyroute2 import IPRoute, netns

from harness import program, random_pod_cidr, random_uplink_network, read_line, terminate
from vswitch.lab.kernel_node import KernelNode, KernelNodeSpec
from vswitch.lab.namespaces import read_sysctl
from vswitch.lab.underlay import Underlay

pytestmark = pytest.mark.integration

ICMP_PROBE = program("icmp_probe")
TCP_SINK, TCP_SOURCE = program("tcp_sink"), program("tcp_source")
UDP_SINK, UDP_SOURCE = program("udp_sink"), program("udp_source")
TRANSFER_BYTES = 10 * 1024 * 1024
HOST_FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
HOST_FORWARDING_AT_START = HOST_FORWARDING.read_text().strip()  # read before any node exists


def in_netns(name: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{name}", *cmd]


def run_json(name: str, *cmd: str, timeout: float = 60.0) -> dict:
    result = subprocess.run(in_netns(name, sys.executable, *cmd), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{cmd} in {name} failed:\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def probe(name: str, target: object, timeout: float = 2.0) -> dict:
    return run_json(name, ICMP_PROBE, str(timeout), str(target))


def underlay_host(underlay: Underlay, offset: int) -> IPv4Interface:
    """Host ``offset`` of the underlay network (the bridge holds host 1)."""
    assert underlay.address is not None
    network = underlay.address.network
    return IPv4Interface(f"{network.network_address + offset}/{network.prefixlen}")


def our_namespaces(*nodes: KernelNode) -> set[str]:
    """Namespaces of these nodes still present (the names carry each node's random suffix)."""
    prefixes = tuple(node.netns for node in nodes)
    return {name for name in netns.listnetns() if name.startswith(prefixes)}


@pytest.fixture
def underlay(netns_environment: None) -> Iterator[Underlay]:
    network = random_uplink_network()
    with Underlay(IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")) as lab:
        yield lab
    assert lab.netns not in netns.listnetns()


@pytest.fixture
def nodes(underlay: Underlay) -> Iterator[tuple[KernelNode, KernelNode]]:
    """Node one with two pods, node two with one, each knowing the other."""
    cidr_one = random_pod_cidr()
    cidr_two = random_pod_cidr(avoid=[cidr_one])
    spec_one = KernelNodeSpec("one", underlay.netns, underlay.bridge, underlay_host(underlay, 2),
                              cidr_one, pods=2)
    spec_two = KernelNodeSpec("two", underlay.netns, underlay.bridge, underlay_host(underlay, 3),
                              cidr_two)
    with KernelNode(spec_one) as one, KernelNode(spec_two) as two:
        one.add_remote(two.as_remote())
        two.add_remote(one.as_remote())
        yield one, two
    assert not our_namespaces(one, two)
    with IPRoute(netns=underlay.netns, flags=0) as ipr:
        assert not ipr.link_lookup(ifname=one.underlay_port)
        assert not ipr.link_lookup(ifname=two.underlay_port)


def test_pods_of_two_nodes_ping_through_two_routers(nodes: tuple[KernelNode, KernelNode]) -> None:
    one, two = nodes
    there = probe(one.pod_netns[0], two.pod_ips[0])
    back = probe(two.pod_netns[0], one.pod_ips[1])
    # Each node's kernel routes once: the remote pod's 64 arrives as 62.
    assert there["reply"] is not None and there["reply"]["ttl"] == 62, there
    assert back["reply"] is not None and back["reply"]["ttl"] == 62, back
    # Pods of one node are switched by cni0, without a router.
    same = probe(one.pod_netns[0], one.pod_ips[1])
    assert same["reply"] is not None and same["reply"]["ttl"] == 64, same


def test_tcp_transfer_arrives_intact_at_the_overlay_mtu(
        nodes: tuple[KernelNode, KernelNode]) -> None:
    one, two = nodes
    port = "5301"
    sink = subprocess.Popen(in_netns(two.pod_netns[0], sys.executable, TCP_SINK, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert read_line(sink) == "listening"
        sent = run_json(one.pod_netns[0], TCP_SOURCE, str(two.pod_ips[0]), port,
                        str(TRANSFER_BYTES))
        received = json.loads(read_line(sink, timeout=30))
    finally:
        terminate(sink)
    assert received["bytes"] == sent["bytes"] == TRANSFER_BYTES
    assert received["sha256"] == sent["sha256"]
    assert received["peer"] == str(one.pod_ips[0])  # no NAT between pods
    assert sent["answer"] == "done"
    assert sent["path_mtu"] == one.spec.overlay_mtu == 1450


def test_udp_datagrams_arrive_from_the_pods_own_address(
        nodes: tuple[KernelNode, KernelNode]) -> None:
    one, two = nodes
    port, count = "5302", 200
    sink = subprocess.Popen(in_netns(one.pod_netns[1], sys.executable, UDP_SINK, port, str(count),
                                     "5", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert read_line(sink) == "listening"
        run_json(two.pod_netns[0], UDP_SOURCE, str(one.pod_ips[1]), port, str(count), "0.001")
        report = json.loads(read_line(sink, timeout=30))
    finally:
        terminate(sink)
    assert report["intact"] and not report["strangers"]
    assert report["peers"] == [str(two.pod_ips[0])]
    assert len(report["received"]) >= count * 0.95, report["received"]


def test_a_withdrawn_node_is_unreachable_until_added_again(
        nodes: tuple[KernelNode, KernelNode]) -> None:
    one, two = nodes
    withdrawn = one.remove_remote("two")
    assert one.remotes == ()
    gone = probe(one.pod_netns[0], two.pod_ips[0], timeout=1.0)
    assert gone["reply"] is None
    # Without the route, node one's own router answers: network unreachable.
    assert gone["error"] is not None and gone["error"]["source"] == str(one.spec.gateway), gone
    one.add_remote(withdrawn)
    again = probe(one.pod_netns[0], two.pod_ips[0])
    assert again["reply"] is not None and again["reply"]["ttl"] == 62, again


def test_forwarding_is_on_in_the_nodes_only(nodes: tuple[KernelNode, KernelNode]) -> None:
    one, two = nodes
    assert read_sysctl(one.netns, "net.ipv4.ip_forward") == "1"
    assert read_sysctl(two.netns, "net.ipv4.ip_forward") == "1"
    # The host's value is what it was before any node was built, and reading it here also shows
    # that entering and leaving the nodes' namespaces left this thread in its own.
    assert HOST_FORWARDING.read_text().strip() == HOST_FORWARDING_AT_START


def test_a_node_that_fails_to_build_leaves_nothing(underlay: Underlay) -> None:
    spec = KernelNodeSpec("broken", underlay.netns, "no-such-bridge", underlay_host(underlay, 4),
                          random_pod_cidr(), pods=2)
    node = KernelNode(spec)
    with pytest.raises(LookupError, match="no-such-bridge"):
        with node:
            pass
    assert not our_namespaces(node)

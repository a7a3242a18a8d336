"""Pods across nodes: daemons on one underlay bridge, joined by the VXLAN overlay.

Each node's file lists the others as ``[[peers]]``; the kernels of the pods talk to each other by
their own addresses, through two userspace routers (TTL 62) and the VXLAN between them. A node
built from kernel parts only, as flannel builds one, talks to vswitch's pods both ways.
"""
from __future__ import annotations

import json
import random
import subprocess
from ipaddress import IPv4Interface

import pytest

from harness import (PYTHON, TCP_SINK_SCRIPT, TCP_SOURCE_SCRIPT, UDP_SINK_SCRIPT,
                     UDP_SOURCE_SCRIPT, PodSpec, program, read_line, terminate)
from multinode import call_phase_passed, lab_factory
from vswitch.lab.kernel_node import KernelNode, KernelNodeSpec, RemoteNode
from vswitch.model import mac_for_ip

pytestmark = pytest.mark.integration

PING_TTL_SCRIPT = program("ping_ttl")
PODS = [PodSpec("alpha"), PodSpec("bravo")]


@pytest.fixture
def make_lab(netns_environment, tmp_path, request):
    with lab_factory(tmp_path, lambda: call_phase_passed(request)) as factory:
        yield factory


def peers_of(node, extra_peers=()) -> str:
    """The node's [overlay] and a [[peers]] entry for every other node of its lab."""
    text = "[overlay]\n"
    for other in node.lab.nodes:
        if other is not node:
            text += (f'[[peers]]\nname = "{other.name}"\naddress = "{other.address}"\n'
                     f'pod_cidr = "{other.pod_cidr}"\n')
    for remote in extra_peers:
        text += (f'[[peers]]\nname = "{remote.name}"\naddress = "{remote.address}"\n'
                 f'pod_cidr = "{remote.pod_cidr}"\nvtep_mac = "{remote.vtep_mac}"\n')
    return text


def cluster_of(node) -> str:
    return f'[cluster]\ncidr = "{node.lab.cluster_cidr}"\n'


def overlay_lab(make_lab, count: int, pods, extra=None):
    """A lab whose nodes leave node.mtu to the loader: with an overlay, the overlay's MTU."""
    lab = make_lab(count, pods)
    for node in lab.nodes:
        node.daemon.update_spec(mtu=None)
    lab.write_configs(extra or (lambda node: cluster_of(node) + peers_of(node)))
    return lab


@pytest.fixture
def two_nodes(make_lab):
    lab = overlay_lab(make_lab, 2, PODS)
    lab.start()
    return lab


def ping_ttl(node, pod: str, target) -> dict:
    return node.daemon.python_in(pod, PING_TTL_SCRIPT, "3", str(target))


def tcp_transfer(sender_node, sender: str, receiver_node, receiver: str, size: int):
    port = random.randrange(20000, 60000)
    server = receiver_node.daemon.popen_in(receiver, PYTHON, TCP_SINK_SCRIPT, str(port),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
    try:
        assert read_line(server) == "listening"
        sent = sender_node.daemon.python_in(sender, TCP_SOURCE_SCRIPT,
                                            str(receiver_node.pod_ips()[receiver]), str(port),
                                            str(size))
        out, err = server.communicate(timeout=60)
    finally:
        terminate(server)
    assert server.returncode == 0, err
    return sent, json.loads(out)


def udp_exchange(sender_node, sender: str, receiver_node, receiver: str, count: int = 20):
    port = random.randrange(20000, 60000)
    sink = receiver_node.daemon.popen_in(receiver, PYTHON, UDP_SINK_SCRIPT, str(port),
                                         str(count), "5", "2", stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(sink) == "listening"
        sender_node.daemon.python_in(sender, UDP_SOURCE_SCRIPT,
                                     str(receiver_node.pod_ips()[receiver]), str(port),
                                     str(count), "0.01")
        out, err = sink.communicate(timeout=60)
    finally:
        terminate(sink)
    assert sink.returncode == 0, err
    return json.loads(out)


def test_pods_on_two_nodes_ping_each_other_through_two_routers(two_nodes):
    first, second = two_nodes[0], two_nodes[1]
    there = ping_ttl(first, "alpha", second.pod_ips()["alpha"])
    back = ping_ttl(second, "bravo", first.pod_ips()["alpha"])
    assert there["ttl"] == 62, first.daemon.log() + second.daemon.log()
    assert back["ttl"] == 62
    routes = [r for r in first.daemon.ctl("routes") if r["kind"] == "overlay"]
    assert routes == [{"prefix": str(second.pod_cidr), "kind": "overlay", "segment": "uplink",
                       "via": str(second.address), "origin": f"node {second.name} (static)"}]
    stages = first.daemon.ctl("stats")["stages"]
    assert stages["vxlan-encap"]["encapsulated"] >= 1 and stages["vxlan-decap"]["decapsulated"] >= 1


def test_tcp_and_udp_cross_the_overlay_intact_and_pmtu_ends_at_its_mtu(two_nodes):
    first, second = two_nodes[0], two_nodes[1]
    sent, got = tcp_transfer(first, "alpha", second, "alpha", 10 * 1024 * 1024)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == 10 * 1024 * 1024
    # The pods' segments take the overlay's MTU (uplink 1500 - 50): the sender's path MTU.
    assert sent["path_mtu"] == 1450
    received = udp_exchange(second, "bravo", first, "alpha")
    assert received["intact"] and len(received["received"]) == 20, received


def test_nodes_lists_this_node_and_its_static_peers(two_nodes):
    first, second = two_nodes[0], two_nodes[1]
    rows = {row["name"]: row for row in first.daemon.ctl("nodes")}
    assert set(rows) == {first.name, second.name}
    assert rows[first.name]["source"] == "self"
    assert rows[second.name] == {
        "name": second.name, "pod_cidr": str(second.pod_cidr), "address": str(second.address),
        "vtep_mac": mac_for_ip(second.address), "source": "static", "lease_remaining": None,
        "state": "ready"}


def test_three_nodes_reach_each_other(make_lab):
    lab = overlay_lab(make_lab, 3, [PodSpec("alpha")])
    lab.start()
    for a in lab.nodes:
        for b in lab.nodes:
            if a is not b:
                got = ping_ttl(a, "alpha", b.pod_ips()["alpha"])
                assert got["ttl"] == 62, f"{a.name} -> {b.name}: {got}"


def test_a_node_built_from_kernel_parts_interoperates_both_ways(make_lab):
    lab = overlay_lab(make_lab, 1, [PodSpec("alpha")])
    node = lab[0]
    kernel_cidr = next(c for c in lab.cluster_cidr.subnets(new_prefix=24)
                       if not c.overlaps(node.pod_cidr))
    kernel_address = lab.underlay.address(5)
    kernel_remote = RemoteNode("kern", kernel_address, kernel_cidr, mac_for_ip(kernel_address))
    lab.write_configs(lambda n: cluster_of(n) + peers_of(n, [kernel_remote]))
    lab.start()
    spec = KernelNodeSpec(
        name="kern", underlay_netns=lab.underlay.netns, underlay_bridge=lab.underlay.bridge,
        address=IPv4Interface(f"{kernel_address}/{lab.underlay.network.prefixlen}"),
        pod_cidr=kernel_cidr,
        remotes=(RemoteNode(node.name, node.address, node.pod_cidr, mac_for_ip(node.address)),))
    with KernelNode(spec) as kernel:
        pod_ns, pod_ip = kernel.pod_netns[0], kernel.pod_ips[0]
        got = ping_ttl(node, "alpha", pod_ip)
        assert got["ttl"] == 62, node.daemon.log()
        # From the kernel's pod to vswitch's: through flannel.1 and our router.
        done = subprocess.run(["nsenter", f"--net=/run/netns/{pod_ns}", PYTHON, PING_TTL_SCRIPT,
                               "3", str(node.pod_ips()["alpha"])], capture_output=True,
                              text=True, timeout=30)
        assert json.loads(done.stdout)["ttl"] == 62, done.stderr
        port = random.randrange(20000, 60000)
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod_ns}", PYTHON,
                                   TCP_SINK_SCRIPT, str(port)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert read_line(server) == "listening"
            sent = node.daemon.python_in("alpha", TCP_SOURCE_SCRIPT, str(pod_ip), str(port),
                                         str(2 * 1024 * 1024))
            out, err = server.communicate(timeout=60)
        finally:
            terminate(server)
        assert json.loads(out)["sha256"] == sent["sha256"], err

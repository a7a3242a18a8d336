"""Pods across nodes: daemons on one underlay bridge, joined by the VXLAN overlay.

Each node's file lists the others as ``[[peers]]``; the kernels of the pods talk to each other by
their own addresses, through two userspace routers (TTL 62) and the VXLAN between them. A node
built from kernel parts only, as flannel builds one, talks to vswitch's pods both ways.
"""
from __future__ import annotations

import json
import random
import struct
import subprocess
import threading
import time
from ipaddress import IPv4Address, IPv4Interface

import pytest

from harness import (PYTHON, TCP_SINK_SCRIPT, TCP_SOURCE_SCRIPT, UDP_SINK_SCRIPT,
                     UDP_SOURCE_SCRIPT, PodSpec, program, random_pod_cidr, read_line, terminate)
from etcd_support import running_etcd
from multinode import call_phase_passed, lab_factory
from vswitch.lab.kernel_node import KernelNode, KernelNodeSpec, RemoteNode
from vswitch.model import mac_for_ip
from vswitch.wire import headers as h, vxlan
from vswitch.wire.pcap import read_pcap

pytestmark = pytest.mark.integration

PING_TTL_SCRIPT = program("ping_ttl")
ECHO_SERVER = program("echo_server")
REQUESTS = program("requests")
PING_STREAM_SCRIPT = program("ping_stream")
TTL_AWAY = 4.0  # seconds etcd is away: longer than the nodes' lease TTL (3 s)
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
    # TSO super-frames crossed the tunnel whole (UDP-tunnel GSO): the uplink's frames average
    # far more than one MTU.
    uplink = first.daemon.ctl("stats")["ports"]["uplink"]
    assert uplink["tx_bytes"] / uplink["tx_packets"] > 4000, uplink
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
        # And TCP the other way: the kernel node's pod sends, vswitch's pod receives.
        port = random.randrange(20000, 60000)
        server = node.daemon.popen_in("alpha", PYTHON, TCP_SINK_SCRIPT, str(port),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert read_line(server) == "listening"
            done = subprocess.run(["nsenter", f"--net=/run/netns/{pod_ns}", PYTHON,
                                   TCP_SOURCE_SCRIPT, str(node.pod_ips()["alpha"]), str(port),
                                   str(2 * 1024 * 1024)], capture_output=True, text=True,
                                  timeout=60)
            out, err = server.communicate(timeout=60)
        finally:
            terminate(server)
        assert done.returncode == 0, done.stderr
        assert json.loads(out)["sha256"] == json.loads(done.stdout)["sha256"], err
        # UDP both ways: numbered datagrams, every one intact.
        port = random.randrange(20000, 60000)
        sink = subprocess.Popen(["nsenter", f"--net=/run/netns/{pod_ns}", PYTHON,
                                 UDP_SINK_SCRIPT, str(port), "20", "5", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert read_line(sink) == "listening"
            node.daemon.python_in("alpha", UDP_SOURCE_SCRIPT, str(pod_ip), str(port), "20",
                                  "0.01")
            out, err = sink.communicate(timeout=30)
        finally:
            terminate(sink)
        received = json.loads(out)
        assert received["intact"] and len(received["received"]) == 20, (received, err)
        port = random.randrange(20000, 60000)
        sink = node.daemon.popen_in("alpha", PYTHON, UDP_SINK_SCRIPT, str(port), "20", "5", "2",
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert read_line(sink) == "listening"
            subprocess.run(["nsenter", f"--net=/run/netns/{pod_ns}", PYTHON, UDP_SOURCE_SCRIPT,
                            str(node.pod_ips()["alpha"]), str(port), "20", "0.01"],
                           check=True, capture_output=True, timeout=30)
            out, err = sink.communicate(timeout=30)
        finally:
            terminate(sink)
        received = json.loads(out)
        assert received["intact"] and len(received["received"]) == 20, (received, err)
        assert received["peers"] == [str(pod_ip)]


def service_extra(node, service_cidr) -> str:
    """Services every node of the lab serves alike: a ClusterIP with a web pod on each node, a
    NodePort whose only endpoint is on node 1 (policy Cluster), and the same as Local."""
    webs = [str(other.pod_ips()["web"]) for other in node.lab.nodes]
    vip = service_cidr.network_address
    return (f'[cluster]\ncidr = "{node.lab.cluster_cidr}"\nservice_cidr = "{service_cidr}"\n'
            + peers_of(node) +
            f'[[services]]\nname = "web"\ncluster_ip = "{vip + 20}"\n'
            f'endpoints = {json.dumps(webs)}\n'
            'ports = [ { name = "http", port = 80, target_port = 8080 } ]\n'
            f'[[services]]\nname = "np"\ncluster_ip = "{vip + 21}"\ntype = "NodePort"\n'
            f'endpoints = ["{webs[1]}"]\n'
            'ports = [ { name = "http", port = 80, target_port = 8080, node_port = 30080 } ]\n'
            f'[[services]]\nname = "np-local"\ncluster_ip = "{vip + 22}"\ntype = "NodePort"\n'
            f'external_traffic_policy = "Local"\nendpoints = ["{webs[1]}"]\n'
            'ports = [ { name = "http", port = 80, target_port = 8080, node_port = 30081 } ]\n')


def requests_from_underlay(lab, host, port: int, count: int, timeout: float) -> dict:
    done = subprocess.run(["nsenter", f"--net=/run/netns/{lab.underlay.netns}", PYTHON, REQUESTS,
                           "tcp", str(host), str(port), str(count), str(timeout)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_services_across_nodes_clusterip_and_nodeport_cluster_and_local(make_lab):
    service_cidr = random_pod_cidr()
    pods = [[PodSpec("alpha"),
             PodSpec("web", containers=(("http", (PYTHON, ECHO_SERVER, f"web-{i}",
                                                  "tcp:8080")),))] for i in range(2)]
    lab = make_lab(2, pods)
    for node in lab.nodes:
        node.daemon.update_spec(mtu=None)
    lab.write_configs(lambda node: service_extra(node, service_cidr))
    lab.start()
    first, second = lab[0], lab[1]
    vip = service_cidr.network_address

    # A ClusterIP on node 0 is answered by the web pods of both nodes, which see the client's
    # own address (DNAT only; the replies come back through the overlay and are reverse-NATed).
    result = first.daemon.python_in("alpha", REQUESTS, "tcp", str(vip + 20), "80", "24", "3")
    answers = [a.split() for a in result["answers"] if a]
    assert not [e for e in result["errors"] if e], result["errors"]
    assert {name for name, _, _ in answers} == {"web-0", "web-1"}, first.daemon.log()
    assert {peer.rsplit(":", 1)[0] for _, peer, _ in answers} == {str(first.pod_ips()["alpha"])}

    # The NodePort of node 0 reaches node 1's pod, SNATed to node 0's pod gateway.
    result = requests_from_underlay(lab, first.address, 30080, 4, 3)
    assert not [e for e in result["errors"] if e], (result, first.daemon.log())
    names_and_peers = {(a.split()[0], a.split()[1].rsplit(":", 1)[0]) for a in result["answers"]}
    assert names_and_peers == {("web-1", str(first.pod_cidr.network_address + 1))}

    # With policy Local and no endpoint on node 0, node 0 drops it; node 1 answers.
    refused = requests_from_underlay(lab, first.address, 30081, 1, 1)
    assert refused["answers"] == [None] and refused["errors"][0]
    local = requests_from_underlay(lab, second.address, 30081, 2, 3)
    assert [a.split()[0] for a in local["answers"]] == ["web-1", "web-1"]
    drops = first.daemon.ctl("stats")["stages"]["ip4-service"]["no-local-endpoint"]
    assert drops >= 1


@pytest.fixture
def etcd():
    yield from running_etcd()


def test_forwarding_goes_on_while_the_cluster_store_is_away(etcd, make_lab):
    """Nodes that learned each other from etcd keep forwarding when etcd stops (fail static),
    and after it returns; not one ping of a steady stream is lost."""
    lab = overlay_lab(make_lab, 2, [PodSpec("alpha")], extra=lambda node: (
        f'[cluster]\ncidr = "{node.lab.cluster_cidr}"\nstore = "etcd"\n'
        f'etcd_endpoints = ["{etcd.endpoint}"]\nlease_ttl = 3\n[overlay]\n'))
    lab.start()
    first, second = lab[0], lab[1]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = {row["name"]: row["state"] for row in first.daemon.ctl("nodes")}
        if states.get(second.name) == "ready":
            break
        time.sleep(0.1)
    assert states.get(second.name) == "ready", first.daemon.log()
    stream = first.daemon.popen_in("alpha", PYTHON, PING_STREAM_SCRIPT,
                                   str(second.pod_ips()["alpha"]), "150", "0.04",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        etcd.stop()
        time.sleep(TTL_AWAY)
        etcd.start()
        out, err = stream.communicate(timeout=60)
    finally:
        terminate(stream)
    assert json.loads(out) == {"sent": 150, "lost": []}, err
    assert {row["name"]: row["state"] for row in first.daemon.ctl("nodes")}[second.name] \
        == "ready"


def test_capture_on_the_uplink_shows_the_vxlan_packets(two_nodes, tmp_path):
    first, second = two_nodes[0], two_nodes[1]
    target = str(second.pod_ips()["alpha"])
    pcap = tmp_path / "uplink.pcap"
    assert ping_ttl(first, "alpha", target)["ttl"] == 62  # ARP for the other node is done now

    def ping_later():
        time.sleep(1.0)  # let the capture arm first
        for _ in range(3):
            ping_ttl(first, "alpha", target)

    pinger = threading.Thread(target=ping_later, daemon=True)
    pinger.start()
    result = first.daemon.ctl_run("capture", "uplink", "-c", "2", "--direction", "tx",
                                  "--timeout", "20", "-w", str(pcap), timeout=40)
    pinger.join()
    assert result.returncode == 0, result.stderr
    _, records = read_pcap(pcap.read_bytes())
    assert len(records) == 2
    for _, _, frame in records:
        assert frame[12:14] == b"\x08\x00", frame[:64].hex()  # IPv4, not ARP
        ip = h.IPV4.parse(frame[14:34])
        assert (ip.protocol, IPv4Address(ip.dst)) == (h.IpProto.UDP, second.address)
        assert struct.unpack_from("!H", frame, 36)[0] == 4789
        inner = vxlan.decapsulate(frame, vni=1, port=4789, offset=14)
        assert isinstance(inner, vxlan.Decapsulated)
        assert IPv4Address(h.IPV4.parse(inner.inner[14:34]).dst) == IPv4Address(target)

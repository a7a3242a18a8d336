"""Services across nodes, through two real pipelines joined by the overlay: a ClusterIP whose
backend is another node's pod, a NodePort reaching a remote pod (Cluster) or refusing (Local),
and endpoints selected among other nodes' pods."""
from __future__ import annotations

import struct
from ipaddress import IPv4Address
from types import MappingProxyType

import pytest

from vswitch.core.presentation import conntrack_rows, endpoint_rows
from vswitch.model import RemotePod
from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes

from .test_pipeline_overlay import FAR, POD, UPLINK, Underlay, mac, node, send

SERVICES = """\
[[services]]
name = "remote"
cluster_ip = "10.96.0.20"
endpoints = ["10.244.2.10"]
ports = [ { port = 80, target_port = 8080 } ]

[[services]]
name = "web"
cluster_ip = "10.96.0.30"
type = "NodePort"
endpoints = ["10.244.2.10"]
ports = [ { port = 80, target_port = 8080, node_port = 30080 } ]

[[services]]
name = "local-only"
cluster_ip = "10.96.0.40"
type = "NodePort"
external_traffic_policy = "Local"
endpoints = ["10.244.2.10"]
ports = [ { port = 80, target_port = 8080, node_port = 30081 } ]

[[services]]
name = "selected"
cluster_ip = "10.96.0.50"
selector = { app = "web" }
ports = [ { port = 80, target_port = "http" } ]
"""


@pytest.fixture
def nodes(accel_name):
    return node("lab1", accel_name, services=SERVICES), node("lab2", accel_name)


def ip_and_ports(tx):
    frame = tx.data[10:]
    ip = h.IPV4.parse(frame[14:34])
    return (str(IPv4Address(ip.src)), str(IPv4Address(ip.dst)),
            struct.unpack_from("!HH", frame, 14 + ip.ihl * 4))


def gateway_mac(switch) -> bytes:
    return mac_bytes(switch.topology.node.gateway_mac)


def from_far(switch, text):
    return switch.process_batch(UPLINK, [h.ZERO_VNET_HDR + _frame(text, mac(FAR),
                                                                   mac("192.0.2.2"))], 0.0)


def _frame(text, src_mac, dst_mac):
    from vswitch.wire.text import build_frame, parse_packet
    return build_frame(parse_packet(text), src_mac, dst_mac)


def test_a_clusterip_connection_lands_on_another_nodes_pod_and_the_reply_is_reverse_natted(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    delivered = underlay.run(lab1, send(lab1, POD, "tcp 10.244.1.10:40000 > 10.96.0.20:80 flags S",
                                        mac("10.244.1.10"), gateway_mac(lab1)))
    (syn,) = delivered[1]
    assert ip_and_ports(syn) == ("10.244.1.10", "10.244.2.10", (40000, 8080))
    reply = send(lab2, POD, "tcp 10.244.2.10:8080 > 10.244.1.10:40000 flags SA",
                 mac("10.244.2.10"), gateway_mac(lab2))
    (synack,) = underlay.run(lab2, reply)[0]
    assert synack.port == POD
    assert ip_and_ports(synack) == ("10.96.0.20", "10.244.1.10", (80, 40000))


def test_a_nodeport_reaches_a_remote_pod_snatted_to_the_pod_gateway_and_back(nodes):
    lab1, lab2 = nodes
    underlay = Underlay(lab1, lab2)
    send(lab1, UPLINK, f"arp who-has 192.0.2.2 tell {FAR}", mac(FAR), b"\xff" * 6)
    delivered = underlay.run(lab1, from_far(lab1, f"tcp {FAR}:50000 > 192.0.2.2:30080 flags S"))
    (syn,) = delivered[1]
    src, dst, (sport, dport) = ip_and_ports(syn)
    assert (src, dst, dport) == ("10.244.1.1", "10.244.2.10", 8080)
    reply = send(lab2, POD, f"tcp 10.244.2.10:8080 > 10.244.1.1:{sport} flags SA",
                 mac("10.244.2.10"), gateway_mac(lab2))
    assert underlay.run(lab2, reply) == {0: [], 1: []}
    (synack,) = underlay.to_far
    assert ip_and_ports(synack) == ("192.0.2.2", FAR, (30080, 50000))
    assert lab1.statistics()["stages"]["ip4-service"]["node-snat"] == 1


def test_a_local_nodeport_without_a_local_endpoint_drops(nodes):
    lab1, _ = nodes
    send(lab1, UPLINK, f"arp who-has 192.0.2.2 tell {FAR}", mac(FAR), b"\xff" * 6)
    assert from_far(lab1, f"tcp {FAR}:50000 > 192.0.2.2:30081 flags S") == []
    assert lab1.statistics()["stages"]["ip4-service"]["no-local-endpoint"] == 1


def test_other_nodes_ready_pods_are_selected_as_remote_endpoints(nodes):
    lab1, lab2 = nodes
    remote = RemotePod("lab2", "web-2", IPv4Address("10.244.2.10"),
                       MappingProxyType({"app": "web"}), MappingProxyType({"http": ("tcp", 8080)}))
    lab1.programming.program(lab1.topology.pods + (remote,), lab1.topology.services, 0.0)
    rows = [r for r in endpoint_rows(lab1) if r["service"] == "default/selected"]
    assert [(r["backend"], r["pod"], r["local"]) for r in rows] == [
        ("10.244.2.10:8080", "lab2/web-2", False)]
    underlay = Underlay(lab1, lab2)
    delivered = underlay.run(lab1, send(lab1, POD, "tcp 10.244.1.10:40000 > 10.96.0.50:80 flags S",
                                        mac("10.244.1.10"), gateway_mac(lab1)))
    assert [ip_and_ports(t)[1:] for t in delivered[1]] == [("10.244.2.10", (40000, 8080))]


def test_a_remote_pod_leaving_the_endpoints_flushes_its_connections_here(nodes):
    """Endpoint churn on another node (its record no longer lists a ready pod) flushes this
    node's connections to that pod, as a local pod's would be."""
    lab1, lab2 = nodes
    remote = RemotePod("lab2", "web-2", IPv4Address("10.244.2.10"),
                       MappingProxyType({"app": "web"}), MappingProxyType({"http": ("tcp", 8080)}))
    lab1.programming.program(lab1.topology.pods + (remote,), lab1.topology.services, 0.0)
    underlay = Underlay(lab1, lab2)
    underlay.run(lab1, send(lab1, POD, "tcp 10.244.1.10:40000 > 10.96.0.50:80 flags S",
                            mac("10.244.1.10"), gateway_mac(lab1)))
    assert [r["description"] for r in conntrack_rows(lab1, 0.0)] == [
        "tcp 10.244.1.10:40000 > 10.96.0.50:80"]
    lab1.programming.program(lab1.topology.pods, lab1.topology.services, 1.0)
    assert conntrack_rows(lab1, 1.0) == []
    assert lab1.conntrack.statistics()["flushed"] == 1

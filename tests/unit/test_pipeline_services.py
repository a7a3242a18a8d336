"""Services through the real pipeline with crafted frames: ClusterIP DNAT and reverse NAT (routed
and switched), refusal, hairpin, INVALID drops, NodePort from the uplink, masquerade, ICMP error
translation, endpoint churn, and the flow cache never bypassing a translation."""
from __future__ import annotations

import dataclasses
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType

import pytest

from vswitch import accel as accel_impls
from vswitch.accel import pure
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.presentation import conntrack_rows
from vswitch.core.switch import Switch
from vswitch.model import (Cluster, Container, Pod, Service, ServicePort, Topology, Uplink,
                           kernel_name, mac_for_ip, netns_name)
from vswitch.config import parse_topology
from vswitch.wire import builders, headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

VNET = h.ZERO_VNET_HDR
UPLINK, A, B, C = 9, 2, 3, 4
A_IP, B_IP, C_IP = "10.244.1.10", "10.244.1.11", "10.244.1.50"
GW, NODE, FAR = "10.244.1.1", "192.0.2.2", "192.0.2.1"
VIP, DNS_VIP, EMPTY_VIP, ONLY_A_VIP = "10.96.0.10", "10.96.0.53", "10.96.0.99", "10.96.0.20"


def mac(ip: str) -> bytes:
    return mac_bytes(mac_for_ip(IPv4Address(ip)))


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def _pod(name, addr, labels):
    http = Container("http", ("true",), ports=MappingProxyType({"http": ("tcp", 8080)}))
    return Pod(name, IPv4Address(addr), mac_for_ip(IPv4Address(addr)), netns_name("unit", "default", name),
               kernel_name("vsp", "unit", name), MappingProxyType(labels), (http,))


def _topology(pods=None, services=None) -> Topology:
    base = parse_topology('[node]\nname = "unit"\npod_cidr = "10.244.1.0/24"\n', "unit.toml")
    pods = pods if pods is not None else (
        _pod("a", A_IP, {"app": "web"}), _pod("b", B_IP, {"app": "web"}), _pod("c", C_IP, {}))
    web = {"app": "web"}
    services = services if services is not None else (
        Service("web", cluster_ip=IPv4Address(VIP), type="NodePort", selector=MappingProxyType(web),
                ports=(ServicePort("http", "tcp", 80, "http", 30080),)),
        Service("dns", cluster_ip=IPv4Address(DNS_VIP), selector=MappingProxyType(web),
                ports=(ServicePort("dns", "udp", 53, 5353),)),
        Service("empty", cluster_ip=IPv4Address(EMPTY_VIP), selector=MappingProxyType({"app": "x"}),
                ports=(ServicePort("http", "tcp", 80, 80), ServicePort("u", "udp", 80, 80))),
        Service("only-a", cluster_ip=IPv4Address(ONLY_A_VIP), endpoints=(IPv4Address(A_IP),),
                ports=(ServicePort("http", "tcp", 80, 8080),)),
    )
    uplink = Uplink(IPv4Interface(f"{NODE}/24"), IPv4Address(FAR), "far", "vsuunit",
                    mac_for_ip(IPv4Address(NODE)), mac_for_ip(IPv4Address(FAR)))
    cluster = Cluster(IPv4Network("10.244.0.0/16"), IPv4Network("10.96.0.0/16"))
    return dataclasses.replace(base, pods=pods, services=services, uplink=uplink, cluster=cluster)


def _switch(accel_name, topology=None, capacity=65536, seed=0):
    topology = topology or _topology()
    switch = Switch(topology, accel_impls.load(accel_name), flow_cache_capacity=capacity,
                    rng_seed=seed)
    for pid, pod in zip((A, B, C), topology.pods):
        switch.add_port(PortSpec(pid, pod.name, PortKind.POD, pod.mac, pod.ip, True))
    switch.add_port(PortSpec(UPLINK, "uplink", PortKind.UPLINK, mac_for_ip(IPv4Address(FAR)),
                             IPv4Address(FAR), True, port_security=False,
                             segment=topology.uplink_segment_index()))
    # Everyone has ARPed for their gateway, as a real kernel does before its first packet.
    for pid, addr in ((A, A_IP), (B, B_IP), (C, C_IP)):
        send(switch, pid, f"arp who-has {GW} tell {addr}", mac(addr), BROADCAST_MAC)
    send(switch, UPLINK, f"arp who-has {NODE} tell {FAR}", mac(FAR), BROADCAST_MAC)
    return switch


@pytest.fixture
def switch(accel_name):
    return _switch(accel_name)


def send(switch, port, text, src_mac, dst_mac, now=0.0):
    return switch.process_batch(port, [VNET + build_frame(parse_packet(text), src_mac, dst_mac)], now)


def packet_of(tx):
    frame = tx.data[10:]
    ip_header = h.IPV4.parse(frame[14:34])
    return frame, ip_header, frame[14:14 + ip_header.total_length]


def assert_checksums(packet: bytes):
    ihl = (packet[0] & 0x0F) * 4
    assert pure.checksum(packet[:ihl]) == 0
    proto, src, dst, l4 = packet[9], packet[12:16], packet[16:20], packet[ihl:]
    if proto == 1:
        assert pure.checksum(l4) == 0
    else:
        assert pure.sum16(l4, pure.pseudo_header_sum(src, dst, proto, len(l4))) == 0xFFFF


def ports_of(packet: bytes):
    ihl = (packet[0] & 0x0F) * 4
    return struct.unpack_from("!HH", packet, ihl)


def connect(switch, client_port, client_ip, vip, sport=40000, now=0.0, flags="S", vport=80):
    return send(switch, client_port, f"tcp {client_ip}:{sport} > {vip}:{vport} flags {flags}",
                mac(client_ip), mac(GW), now)


# -- ClusterIP -------------------------------------------------------------------------------

def test_clusterip_connection_is_dnated_and_the_backend_sees_the_client(switch):
    (tx,) = connect(switch, C, C_IP, VIP)
    frame, header, packet = packet_of(tx)
    backend = {A: A_IP, B: B_IP}[tx.port]
    assert header.dst == ip(backend) and header.src == ip(C_IP) and header.ttl == 63
    assert ports_of(packet) == (40000, 8080)  # the named port "http" resolved per pod
    assert frame[:6] == mac(backend) and frame[6:12] == mac(GW)
    assert_checksums(packet)
    (row,) = conntrack_rows(switch, 0.0)
    assert row["description"] == f"tcp {C_IP}:40000 > {VIP}:80"


def test_switched_reply_of_a_backend_is_translated_back(switch):
    (tx,) = connect(switch, C, C_IP, VIP)
    backend_port = tx.port
    backend = {A: A_IP, B: B_IP}[backend_port]
    # Same segment: the backend answers straight to the client's MAC; the switch must still
    # translate it, or the client would RST a SYN-ACK from an address it never called.
    (reply,) = send(switch, backend_port, f"tcp {backend}:8080 > {C_IP}:40000 flags SA",
                    mac(backend), mac(C_IP), 0.1)
    assert reply.port == C
    _, header, packet = packet_of(reply)
    assert header.src == ip(VIP) and header.dst == ip(C_IP)
    assert ports_of(packet) == (80, 40000)
    assert_checksums(packet)
    assert switch.statistics()["stages"]["l2-conntrack"]["translated"] == 1


def test_established_connection_stays_on_its_backend_and_state_advances(switch):
    (tx,) = connect(switch, C, C_IP, VIP)
    backend = {A: A_IP, B: B_IP}[tx.port]
    send(switch, tx.port, f"tcp {backend}:8080 > {C_IP}:40000 flags SA", mac(backend), mac(C_IP), 0.1)
    for n in range(5):
        (again,) = connect(switch, C, C_IP, VIP, flags="A", now=0.2 + n)
        assert again.port == tx.port
    (row,) = conntrack_rows(switch, 5.0)
    assert row["state"] == "ESTABLISHED"


def test_udp_service_with_number_target_port(switch):
    (tx,) = send(switch, C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 10", mac(C_IP), mac(GW))
    assert ports_of(packet_of(tx)[2]) == (5000, 5353)


def test_no_ready_endpoint_tcp_gets_rst_at_once(switch):
    (tx,) = connect(switch, C, C_IP, EMPTY_VIP, sport=41000)
    frame, header, packet = packet_of(tx)
    assert tx.port == C and frame[:6] == mac(C_IP)
    assert header.src == ip(EMPTY_VIP) and header.dst == ip(C_IP)
    tcp = h.TCP.parse(packet[20:40])
    assert (tcp.src_port, tcp.dst_port) == (80, 41000)
    assert tcp.flags == h.TcpFlag.RST | h.TcpFlag.ACK and tcp.ack == 1001  # the SYN's seq + 1
    assert_checksums(packet)
    assert conntrack_rows(switch, 0.0) == []


def test_no_ready_endpoint_udp_gets_port_unreachable(switch):
    (tx,) = send(switch, C, f"udp {C_IP}:5000 > {EMPTY_VIP}:80", mac(C_IP), mac(GW))
    _, header, packet = packet_of(tx)
    assert header.dst == ip(C_IP) and packet[20] == 3 and packet[21] == 3
    assert packet[28 + 16:28 + 20] == ip(EMPTY_VIP)  # quotes what the client sent
    assert_checksums(packet)


def test_non_syn_without_connection_is_invalid_and_dropped(switch):
    assert connect(switch, C, C_IP, VIP, flags="F") == []  # FIN: no loose pickup
    s = switch.statistics()
    assert s["stages"]["ip4-service"]["invalid"] == 1
    assert s["ports"]["c"]["rx_drops"] == {"invalid": 1}


def test_hairpin_is_snated_so_the_reply_comes_back_through_the_switch(switch):
    (tx,) = connect(switch, A, A_IP, ONLY_A_VIP, sport=42000)
    assert tx.port == A
    _, header, packet = packet_of(tx)
    assert header.dst == ip(A_IP) and header.src == ip("169.254.169.5")
    hairpin_port = ports_of(packet)[0]
    assert ports_of(packet)[1] == 8080
    # a's kernel answers the hairpin address through its gateway.
    (reply,) = send(switch, A, f"tcp {A_IP}:8080 > 169.254.169.5:{hairpin_port} flags SA",
                    mac(A_IP), mac(GW), 0.1)
    _, header, packet = packet_of(reply)
    assert reply.port == A and header.src == ip(ONLY_A_VIP) and header.dst == ip(A_IP)
    assert ports_of(packet) == (80, 42000)
    assert_checksums(packet)


def test_icmp_error_from_a_backend_is_translated_for_the_client(switch):
    (tx,) = send(switch, C, f"udp {C_IP}:5000 > {DNS_VIP}:53 len 4", mac(C_IP), mac(GW))
    backend = {A: A_IP, B: B_IP}[tx.port]
    seen = packet_of(tx)[2]
    error = builders.icmp(type=3, code=3, rest=bytes(4), payload=seen[:28])
    outer = builders.ipv4(src=ip(backend), dst=ip(C_IP), protocol=1, payload=error)
    (back,) = switch.process_batch(tx.port, [VNET + builders.ethernet(mac(C_IP), mac(backend),
                                                                      0x0800, outer)], 0.1)
    _, header, packet = packet_of(back)
    assert back.port == C and header.src == ip(DNS_VIP)
    quoted = packet[28:]
    assert quoted[12:16] == ip(C_IP) and quoted[16:20] == ip(DNS_VIP)
    assert ports_of(quoted) == (5000, 53)
    assert pure.checksum(packet[20:]) == 0 and pure.checksum(quoted[:20]) == 0


# -- endpoint churn --------------------------------------------------------------------------

def test_removed_endpoint_flushes_its_connections_and_udp_moves_on(accel_name):
    topology = _topology()
    switch = _switch(accel_name, topology)
    datagram = f"udp {C_IP}:5000 > {DNS_VIP}:53 len 4"
    (first,) = send(switch, C, datagram, mac(C_IP), mac(GW))
    gone = {A: "a", B: "b"}[first.port]
    survivor = B if first.port == A else A
    pods = tuple(dataclasses.replace(p, ready=False) if p.name == gone else p for p in topology.pods)
    summary = switch.programming.program(pods, topology.services, 1.0)
    assert summary["flushed_connections"] == 1
    (second,) = send(switch, C, datagram, mac(C_IP), mac(GW), 1.1)
    assert second.port == survivor  # same client port, new backend: no black hole


def test_surviving_connections_are_untouched_by_churn(accel_name):
    topology = _topology()
    switch = _switch(accel_name, topology)
    (tx,) = connect(switch, C, C_IP, VIP)
    kept = {A: "a", B: "b"}[tx.port]
    backend = {A: A_IP, B: B_IP}[tx.port]
    send(switch, tx.port, f"tcp {backend}:8080 > {C_IP}:40000 flags SA", mac(backend), mac(C_IP), 0.1)
    pods = tuple(dataclasses.replace(p, ready=False) if p.name not in (kept, "c") else p
                 for p in topology.pods)
    switch.programming.program(pods, topology.services, 1.0)
    (again,) = connect(switch, C, C_IP, VIP, flags="A", now=1.1)
    assert again.port == tx.port


# -- the uplink: NodePort and masquerade -----------------------------------------------------

def test_nodeport_from_outside_is_dnated_and_snated_to_the_node(switch):
    (tx,) = send(switch, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR), mac(NODE))
    backend = {A: A_IP, B: B_IP}[tx.port]
    _, header, packet = packet_of(tx)
    assert header.dst == ip(backend) and header.src == ip(NODE)  # policy Cluster
    node_port = ports_of(packet)[0]
    (reply,) = send(switch, tx.port, f"tcp {backend}:8080 > {NODE}:{node_port} flags SA",
                    mac(backend), mac(GW), 0.1)
    frame, header, packet = packet_of(reply)
    assert reply.port == UPLINK and frame[:6] == mac(FAR)
    assert header.src == ip(NODE) and header.dst == ip(FAR)
    assert ports_of(packet) == (30080, 50000)
    assert_checksums(packet)


def test_nodeport_with_local_policy_keeps_the_client_address(accel_name):
    topology = _topology()
    services = tuple(dataclasses.replace(s, external_traffic_policy="Local") if s.name == "web"
                     else s for s in topology.services)
    switch = _switch(accel_name, dataclasses.replace(topology, services=services))
    (tx,) = send(switch, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR), mac(NODE))
    assert packet_of(tx)[1].src == ip(FAR)


def test_pod_egress_is_masqueraded_and_replies_come_back(switch):
    (out,) = send(switch, C, f"udp {C_IP}:6000 > 198.51.100.7:53 len 8", mac(C_IP), mac(GW))
    frame, header, packet = packet_of(out)
    assert frame[:6] == mac(FAR)  # the default route's next hop, the uplink gateway
    assert out.port == UPLINK and header.src == ip(NODE) and header.dst == ip("198.51.100.7")
    assert ports_of(packet) == (6000, 53)
    (back,) = send(switch, UPLINK, f"udp 198.51.100.7:53 > {NODE}:6000 len 8", mac(FAR), mac(NODE), 0.2)
    _, header, packet = packet_of(back)
    assert back.port == C and header.dst == ip(C_IP) and header.src == ip("198.51.100.7")
    assert_checksums(packet)


def test_masquerade_keeps_two_clients_with_the_same_port_apart(switch):
    send(switch, UPLINK, f"arp who-has {NODE} tell {FAR}", mac(FAR), BROADCAST_MAC)
    outs = []
    for pid, addr in ((A, A_IP), (C, C_IP)):
        (tx,) = send(switch, pid, f"udp {addr}:7000 > 198.51.100.7:53", mac(addr), mac(GW))
        outs.append(ports_of(packet_of(tx)[2])[0])
    assert outs[0] != outs[1]


def test_the_node_address_answers_ping_from_outside(switch):
    (tx,) = send(switch, UPLINK, f"icmp {FAR} > {NODE}", mac(FAR), mac(NODE))
    assert tx.port == UPLINK and packet_of(tx)[1].src == ip(NODE)


def test_a_ping_to_the_node_is_not_taken_for_the_reply_of_a_masqueraded_ping(switch):
    """Echo entries are keyed by identifier. The remote end pinging the node with the identifier
    of a pod's masqueraded ping sends a *request*: the node answers it itself, and the pod sees
    nothing; the real echo reply still reaches the pod."""
    remote = "198.51.100.7"
    (out,) = send(switch, C, f"icmp {C_IP} > {remote} id 7", mac(C_IP), mac(GW))
    ident = struct.unpack_from("!H", packet_of(out)[2], 24)[0]
    (answer,) = send(switch, UPLINK, f"icmp {remote} > {NODE} id {ident}", mac(FAR), mac(NODE), 0.1)
    assert answer.port == UPLINK
    _, header, packet = packet_of(answer)
    assert header.src == ip(NODE) and packet[20] == h.IcmpType.ECHO_REPLY
    (reply,) = send(switch, UPLINK, f"icmp {remote} > {NODE} echo-reply id {ident}", mac(FAR),
                    mac(NODE), 0.2)
    assert reply.port == C and packet_of(reply)[1].dst == ip(C_IP)
    assert struct.unpack_from("!H", packet_of(reply)[2], 24)[0] == 7


def test_an_untracked_echo_reply_from_a_pod_is_not_masqueraded(switch):
    assert send(switch, C, f"icmp {C_IP} > 198.51.100.7 echo-reply id 9", mac(C_IP), mac(GW)) == []
    assert _stage(switch, "ip4-masquerade")["echo-reply-untracked"] == 1
    assert conntrack_rows(switch, 0.0) == []


# -- the flow cache never bypasses a translation ---------------------------------------------

def test_a_cached_plain_flow_does_not_leak_untranslated_replies(accel_name):
    topology = _topology(services=(Service("only-b", cluster_ip=IPv4Address(VIP),
                                           endpoints=(IPv4Address(B_IP),),
                                           ports=(ServicePort("u", "udp", 80, 9000),)),))
    switch = _switch(accel_name, topology)
    plain = f"udp {B_IP}:9000 > {C_IP}:6000 len 4"
    for _ in range(3):  # b talks to c directly: switched and cached
        send(switch, B, plain, mac(B_IP), mac(C_IP))
    assert switch.statistics()["dispositions"]["cache-hit"] == 2
    send(switch, C, f"udp {C_IP}:6000 > {VIP}:80 len 4", mac(C_IP), mac(GW), 1.0)
    (reply,) = send(switch, B, plain, mac(B_IP), mac(C_IP), 1.1)
    assert packet_of(reply)[1].src == ip(VIP)  # now a reply of the service connection


def test_trace_shows_service_backend_and_conntrack(switch):
    result = switch.tracer.dry_run("c", f"tcp {C_IP}:40000 > {VIP}:80 flags S", 0.0)
    text = result["text"]
    assert "is cluster-ip of service default/web port http; 2 ready backend(s)" in text
    assert "would DNAT to a backend chosen by random" in text
    assert conntrack_rows(switch, 0.0) == []
    connect(switch, C, C_IP, VIP)
    again = switch.tracer.dry_run("c", f"tcp {C_IP}:40000 > {VIP}:80 flags A", 0.5)
    assert "original direction of [tcp 10.244.1.50:40000 > 10.96.0.10:80]" in again["text"]


def test_a_dry_run_follows_the_backend_the_packet_then_really_gets(switch):
    """One backend-choice path: the trace commits nothing, so the real packet that follows gets
    the backend the trace showed."""
    for sport in range(40000, 40010):
        text = switch.tracer.dry_run("c", f"tcp {C_IP}:{sport} > {VIP}:80 flags S", 0.0)["text"]
        (tx,) = connect(switch, C, C_IP, VIP, sport=sport)
        backend = {A: A_IP, B: B_IP}[tx.port]
        assert f"this trace follows {backend}:8080" in text


def _closed_connection(switch, sport=40000):
    """A connection to the web service, opened and closed by both sides: TIME_WAIT."""
    (tx,) = connect(switch, C, C_IP, VIP, sport=sport)
    backend = {A: A_IP, B: B_IP}[tx.port]
    reply = f"tcp {backend}:8080 > {C_IP}:{sport} flags"
    send(switch, tx.port, f"{reply} SA", mac(backend), mac(C_IP), 0.1)
    connect(switch, C, C_IP, VIP, sport=sport, flags="A", now=0.2)
    connect(switch, C, C_IP, VIP, sport=sport, flags="FA", now=0.3)
    send(switch, tx.port, f"{reply} FA", mac(backend), mac(C_IP), 0.4)
    connect(switch, C, C_IP, VIP, sport=sport, flags="A", now=0.5)
    (row,) = conntrack_rows(switch, 0.5)
    assert row["state"] == "TIME_WAIT"
    return row


def test_a_syn_on_the_tuple_of_a_closed_connection_is_a_new_connection(switch):
    """As the kernel (nf_ct_kill + NF_REPEAT): the old entry goes and the SYN meets the service
    stage again, so a client that reuses its port gets a fresh endpoint choice."""
    _closed_connection(switch)
    trace = switch.tracer.dry_run("c", f"tcp {C_IP}:40000 > {VIP}:80 flags S", 1.0)["text"]
    assert "opens a new connection on the tuple of [tcp 10.244.1.50:40000 > 10.96.0.10:80]" \
        " (TIME_WAIT)" in trace, trace
    assert "is cluster-ip of service default/web port http" in trace, trace
    assert conntrack_rows(switch, 1.0)[0]["state"] == "TIME_WAIT"  # the trace changed nothing
    (tx,) = connect(switch, C, C_IP, VIP, now=1.0)
    assert tx.port in (A, B) and ports_of(packet_of(tx)[2]) == (40000, 8080)
    (row,) = conntrack_rows(switch, 1.0)
    assert row["state"] == "SYN_SENT" and not row["replied"] and row["age"] == 0.0
    assert switch.conntrack.statistics()["reopened"] == 1
    counters = switch.statistics()["stages"]["ip4-conntrack"]
    assert counters[next(k for k in counters if k.lower() == "reopened")] == 1, counters


def test_a_syn_from_the_server_side_after_time_wait_is_its_own_connection(switch):
    """The backend opens a connection back to the client's port: as in the kernel, the closed
    entry goes and the SYN is a plain packet from the backend, not a translated reply."""
    backend = _closed_connection(switch)["reply"]["src"]
    backend_port = {A_IP: A, B_IP: B}[backend]
    (out,) = send(switch, backend_port, f"tcp {backend}:8080 > {C_IP}:40000 flags S",
                  mac(backend), mac(C_IP), 1.0)
    assert out.port == C
    _, header, packet = packet_of(out)
    assert header.src == ip(backend) and ports_of(packet) == (8080, 40000)  # untranslated
    assert conntrack_rows(switch, 1.0) == []


def test_reopened_connections_spread_over_the_ready_backends(switch):
    """Reusing a port after TIME_WAIT is not pinned to the old backend (no affinity here)."""
    seen = set()
    for _ in range(40):
        _closed_connection(switch)
        (tx,) = connect(switch, C, C_IP, VIP, now=1.0)
        seen.add(tx.port)
        switch.programming.conntrack_flush()
    assert seen == {A, B}


def test_conntrack_filters_and_flush(switch):
    connect(switch, C, C_IP, VIP)
    send(switch, C, f"udp {C_IP}:5000 > {DNS_VIP}:53", mac(C_IP), mac(GW))
    assert len(conntrack_rows(switch, 0.0, {"proto": "udp"})) == 1
    assert len(conntrack_rows(switch, 0.0, {"service": "web"})) == 1
    with pytest.raises(ValueError, match="unknown conntrack filter"):
        conntrack_rows(switch, 0.0, {"colour": "red"})
    assert switch.programming.conntrack_flush({"proto": "tcp"}) == 1
    assert len(conntrack_rows(switch, 0.0)) == 1


def test_established_connection_packets_take_the_fast_path(accel_name):
    switch = _switch(accel_name)
    (syn,) = connect(switch, C, C_IP, VIP)
    backend = {A: A_IP, B: B_IP}[syn.port]
    send(switch, syn.port, f"tcp {backend}:8080 > {C_IP}:40000 flags SA", mac(backend), mac(C_IP))
    hits = switch.statistics()["dispositions"]["cache-hit"]
    for n in range(4):
        (out,) = connect(switch, C, C_IP, VIP, flags="PA", now=0.1 * n)
        _, header, packet = packet_of(out)
        assert header.dst == ip(backend) and ports_of(packet) == (40000, 8080)
        assert_checksums(packet)
        (back,) = send(switch, syn.port, f"tcp {backend}:8080 > {C_IP}:40000 flags PA len 100",
                       mac(backend), mac(C_IP), 0.1 * n)
        assert packet_of(back)[1].src == ip(VIP)
    # The SYN and SYN-ACK installed the connection entries. The client's first ACK completes the
    # handshake in the pipeline (SYN_RECV is not a plain state); every later packet hits.
    assert switch.statistics()["dispositions"]["cache-hit"] - hits == 7
    (row,) = conntrack_rows(switch, 1.0)
    assert row["state"] == "ESTABLISHED"


def test_an_endpoint_that_becomes_ready_is_not_shadowed_by_earlier_refusals(accel_name):
    """kube-proxy's black-hole bug: datagrams sent while a service had no endpoint left a
    conntrack entry that kept the flow away from the endpoint once it was ready. Refusals here
    create no entry, so the next datagram of the same flow reaches the new endpoint."""
    topology = _topology()
    nobody = tuple(dataclasses.replace(p, ready=False) if p.name in ("a", "b") else p
                   for p in topology.pods)
    switch = _switch(accel_name, dataclasses.replace(topology, pods=nobody))
    datagram = f"udp {C_IP}:5000 > {DNS_VIP}:53 len 4"
    for n in range(3):
        (refusal,) = send(switch, C, datagram, mac(C_IP), mac(GW), 0.1 * n)
        assert refusal.port == C and packet_of(refusal)[2][20] == 3  # port unreachable
    assert conntrack_rows(switch, 1.0) == []
    switch.programming.program(topology.pods, topology.services, 1.0)
    (delivered,) = send(switch, C, datagram, mac(C_IP), mac(GW), 1.1)
    assert delivered.port in (A, B)


def test_external_ip_on_the_uplink_network_is_announced_and_serves_outside_clients(accel_name):
    topology = _topology()
    external = "192.0.2.50"
    services = tuple(dataclasses.replace(s, external_ips=(IPv4Address(external),))
                     if s.name == "web" else s for s in topology.services)
    switch = _switch(accel_name, dataclasses.replace(topology, services=services))
    (arp,) = send(switch, UPLINK, f"arp who-has {external} tell {FAR}", mac(FAR), BROADCAST_MAC)
    assert arp.port == UPLINK
    reply = h.ARP.parse(arp.data[10 + 14:])
    assert reply.oper == 2 and reply.spa == ip(external) and reply.sha == mac(NODE)
    (tx,) = send(switch, UPLINK, f"tcp {FAR}:50000 > {external}:80 flags S", mac(FAR), mac(NODE))
    _, header, packet = packet_of(tx)
    assert tx.port in (A, B) and header.src == ip(NODE)  # policy Cluster: SNAT to the node
    assert ports_of(packet)[1] == 8080
    # Not announced on pod segments, and not for addresses that are no external IP.
    assert send(switch, UPLINK, f"arp who-has 192.0.2.51 tell {FAR}", mac(FAR), BROADCAST_MAC) == []


def test_dry_run_trace_follows_the_backend_affinity_holds(accel_name):
    topology = _topology()
    services = tuple(dataclasses.replace(s, session_affinity="ClientIP") if s.name == "web" else s
                     for s in topology.services)
    switch = _switch(accel_name, dataclasses.replace(topology, services=services))
    (first,) = connect(switch, C, C_IP, VIP)
    backend = {A: A_IP, B: B_IP}[first.port]
    text = switch.tracer.dry_run("c", f"tcp {C_IP}:41234 > {VIP}:80 flags S", 1.0)["text"]
    assert f"ClientIP affinity holds {C_IP} to {backend}:8080" in text


def _fragments(packet: bytes, mtu: int) -> list[bytes]:
    """The fragments a sender's kernel would make (the router's own fragmenter needs only an
    accel implementation from its environment)."""
    from types import SimpleNamespace

    from vswitch.pipeline.ip4_rewrite import fragment

    return fragment(packet, mtu, SimpleNamespace(accel=pure))


def _reassemble(packets: list[bytes]) -> bytes:
    pieces = sorted(((h.IPV4.parse(p[:20]).fragment_offset * 8, p[20:]) for p in packets))
    return b"".join(body for _, body in pieces)


def test_every_fragment_of_a_datagram_follows_its_connection(switch):
    payload = bytes(range(256)) * 12
    udp = builders.udp(src=ip(C_IP), dst=ip(DNS_VIP), src_port=5000, dst_port=53, payload=payload)
    datagram = builders.ipv4(src=ip(C_IP), dst=ip(DNS_VIP), protocol=17, payload=udp,
                             identification=0x4242)
    outs = []
    for piece in _fragments(datagram, 1400):
        outs += switch.process_batch(C, [VNET + builders.ethernet(mac(GW), mac(C_IP), 0x0800, piece)], 0.0)
    assert len(outs) == 3 and len({t.port for t in outs}) == 1  # one backend for all of them
    backend = {A: A_IP, B: B_IP}[outs[0].port]
    packets = [packet_of(t)[2] for t in outs]
    for packet in packets:
        assert packet[16:20] == ip(backend) and pure.checksum(packet[:20]) == 0
    segment = _reassemble(packets)
    assert struct.unpack_from("!HH", segment) == (5000, 5353)
    assert pure.sum16(segment, pure.pseudo_header_sum(ip(C_IP), ip(backend), 17, len(segment))) == 0xFFFF
    # The backend's fragmented answer, switched straight to the client, is translated whole too.
    answer = builders.udp(src=ip(backend), dst=ip(C_IP), src_port=5353, dst_port=5000, payload=payload)
    reply = builders.ipv4(src=ip(backend), dst=ip(C_IP), protocol=17, payload=answer,
                          identification=0x5151)
    backs = []
    for piece in _fragments(reply, 1400):
        backs += switch.process_batch(outs[0].port, [VNET + builders.ethernet(
            mac(C_IP), mac(backend), 0x0800, piece)], 0.1)
    assert [t.port for t in backs] == [C, C, C]
    back_packets = [packet_of(t)[2] for t in backs]
    assert all(p[12:16] == ip(DNS_VIP) and pure.checksum(p[:20]) == 0 for p in back_packets)
    segment = _reassemble(back_packets)
    assert pure.sum16(segment, pure.pseudo_header_sum(ip(DNS_VIP), ip(C_IP), 17, len(segment))) == 0xFFFF


def _send_pieces(switch, port, pieces, src_mac, dst_mac, now=0.0):
    outs = []
    for piece in pieces:
        outs += switch.process_batch(port, [VNET + builders.ethernet(dst_mac, src_mac, 0x0800, piece)],
                                     now)
    return outs


def _udp_datagram(src, dst, sport, dport, ident, size=3072):
    payload = bytes(range(256)) * (size // 256)
    udp = builders.udp(src=ip(src), dst=ip(dst), src_port=sport, dst_port=dport, payload=payload)
    return builders.ipv4(src=ip(src), dst=ip(dst), protocol=17, payload=udp, identification=ident)


def _stage(switch, name):
    counters = switch.statistics()["stages"][name]
    return {key.lower(): value for key, value in counters.items()}


def test_later_fragments_that_come_first_wait_for_their_first(switch):
    """Reordered on the way: the last fragments arrive before the one with the ports. They are
    held, then follow the first fragment's translation; nothing leaves untranslated."""
    pieces = _fragments(_udp_datagram(C_IP, DNS_VIP, 5000, 53, 0x6161), 1400)
    assert len(pieces) == 3
    early = _send_pieces(switch, C, pieces[:0:-1], mac(C_IP), mac(GW))  # last, then middle
    assert early == []
    assert _stage(switch, "ip4-conntrack")["fragment-held"] == 2
    assert switch.statistics()["fragments_held"]["waiting_frames"] == 2
    outs = _send_pieces(switch, C, pieces[:1], mac(C_IP), mac(GW), 0.1)
    assert len(outs) == 3 and len({t.port for t in outs}) == 1
    backend = {A: A_IP, B: B_IP}[outs[0].port]
    packets = [packet_of(t)[2] for t in outs]
    assert all(p[16:20] == ip(backend) and pure.checksum(p[:20]) == 0 for p in packets)
    segment = _reassemble(packets)
    assert struct.unpack_from("!HH", segment) == (5000, 5353)
    assert pure.sum16(segment, pure.pseudo_header_sum(ip(C_IP), ip(backend), 17, len(segment))) == 0xFFFF
    stats = switch.statistics()
    assert stats["fragments_held"]["waiting_frames"] == 0
    # Each frame has one disposition: the held ones stay "queued" when they are released.
    assert stats["dispositions"]["queued"] == 2
    assert sum(stats["dispositions"].values()) == sum(p["rx_packets"] for p in stats["ports"].values())


def test_reordered_fragments_of_a_backend_reply_are_held_and_translated(switch):
    (first,) = _send_pieces(switch, C, [_udp_datagram(C_IP, DNS_VIP, 5000, 53, 1, size=256)],
                            mac(C_IP), mac(GW))
    backend = {A: A_IP, B: B_IP}[first.port]
    pieces = _fragments(_udp_datagram(backend, C_IP, 5353, 5000, 0x7272), 1400)
    held = _send_pieces(switch, first.port, pieces[1:], mac(backend), mac(C_IP), 0.1)
    assert held == []  # switched replies too: never untranslated to the client
    backs = _send_pieces(switch, first.port, pieces[:1], mac(backend), mac(C_IP), 0.2)
    assert [t.port for t in backs] == [C, C, C]
    assert all(packet_of(t)[2][12:16] == ip(DNS_VIP) for t in backs)


def test_held_fragments_whose_first_never_comes_expire_and_are_counted(switch):
    pieces = _fragments(_udp_datagram(C_IP, DNS_VIP, 5000, 53, 0x6262), 1400)
    assert _send_pieces(switch, C, pieces[1:], mac(C_IP), mac(GW)) == []
    assert switch.next_deadline() <= 5.0
    switch.handle_timer(5.0)
    assert _stage(switch, "ip4-conntrack")["fragment-hold-expired"] == 2
    assert switch.statistics()["fragments_held"]["waiting_frames"] == 0
    # The first fragment, too late, goes alone; the others are not resurrected.
    assert len(_send_pieces(switch, C, pieces[:1], mac(C_IP), mac(GW), 6.0)) == 1


def test_in_order_fragments_of_plain_traffic_are_never_held(switch):
    """Pod to pod, no translation: every fragment is forwarded as it arrives."""
    pieces = _fragments(_udp_datagram(C_IP, A_IP, 5000, 9999, 0x6363), 1400)
    outs = _send_pieces(switch, C, pieces, mac(C_IP), mac(A_IP))
    assert [t.port for t in outs] == [A, A, A]
    assert _stage(switch, "ip4-conntrack").get("fragment-held", 0) == 0


def test_egress_fragments_out_of_order_are_masqueraded_whole(switch):
    pieces = _fragments(_udp_datagram(C_IP, "203.0.113.9", 5000, 53, 0x6464), 1400)
    assert _send_pieces(switch, C, pieces[1:], mac(C_IP), mac(GW)) == []
    outs = _send_pieces(switch, C, pieces[:1], mac(C_IP), mac(GW), 0.1)
    assert [t.port for t in outs] == [UPLINK] * 3
    assert all(packet_of(t)[2][12:16] == ip(NODE) for t in outs)


def test_later_fragments_of_a_dropped_first_fragment_are_dropped(switch):
    """An established connection; the backend's next segment, fragmented, carries no TCP flags
    at all (invalid): its first fragment is dropped, and so are the rest, never untranslated."""
    (tx,) = connect(switch, C, C_IP, VIP)
    backend = {A: A_IP, B: B_IP}[tx.port]
    send(switch, tx.port, f"tcp {backend}:8080 > {C_IP}:40000 flags SA", mac(backend), mac(C_IP), 0.1)
    connect(switch, C, C_IP, VIP, flags="A", now=0.2)
    segment = bytearray(builders.tcp(src=ip(backend), dst=ip(C_IP), src_port=8080, dst_port=40000,
                                     seq=1, ack=1, flags=0x10, payload=bytes(3000)))
    segment[13] = 0  # no flags
    bad = builders.ipv4(src=ip(backend), dst=ip(C_IP), protocol=6, payload=bytes(segment),
                        identification=0x6565)
    pieces = _fragments(bad, 1400)
    assert _send_pieces(switch, tx.port, pieces, mac(backend), mac(C_IP), 0.3) == []
    assert _stage(switch, "l2-conntrack")["invalid"] == 1
    # Switched fragments: the stage that decided (l2-conntrack) counts them, not ip4-conntrack.
    assert _stage(switch, "l2-conntrack")["fragment-of-dropped"] == 2
    assert _stage(switch, "ip4-conntrack").get("fragment-of-dropped", 0) == 0


def test_trace_of_an_early_fragment_says_it_would_wait(switch):
    text = switch.tracer.dry_run("c", f"udp {C_IP}:5000 > {DNS_VIP}:53 len 100 ipid 77 frag 1480",
                        0.0)["text"]
    assert "later fragment (id 77) before its first: would be held" in text, text
    assert switch.statistics()["fragments_held"]["waiting_frames"] == 0  # a dry run holds nothing

"""The cluster DNS server with real sockets on localhost: UDP and TCP, forwarding to a fake
upstream, SERVFAIL when it stays silent, malformed input, truncation, answers that follow a
service added at runtime, and the whole daemon (memory runtime) with ``vswitchctl dns``."""
from __future__ import annotations

import dataclasses
import logging
import socket
from ipaddress import IPv4Address
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import trio

from vswitch.control.dns import render_dns
from vswitch.model import Service, ServicePort
from vswitch.runtime import dns_server
from vswitch.runtime.dns_server import ClusterDns, host_nameservers

from .daemon.support import Harness, ask, make_topology

LOCALHOST = IPv4Address("127.0.0.1")
WEB = Service(name="web", cluster_ip=IPv4Address("10.96.0.11"),
              ports=(ServicePort("http", "tcp", 80, 8080),), endpoints=(IPv4Address("10.244.1.10"),))
log = logging.getLogger("test.dns")


class FakeNode:
    """What ClusterDns reads of the running node."""

    def __init__(self, topology) -> None:
        self.topology = topology
        self.remote_pods = ()
        self.system_services = ()
        self.switch = SimpleNamespace(services=SimpleNamespace(generation=0))

    def set_system_services(self, services) -> None:
        self.system_services = services


def node_with(tmp_path, services=(WEB,), host_port=True) -> FakeNode:
    return FakeNode(dataclasses.replace(make_topology(tmp_path, host_port=host_port),
                                        services=services))


async def udp_ask(port: int, query: dns.message.Message | bytes, timeout: float = 5
                  ) -> dns.message.Message | None:
    wire = query if isinstance(query, bytes) else query.to_wire()
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(wire)
        with trio.move_on_after(timeout):
            return dns.message.from_wire(await sock.recv(65535))
    return None


async def tcp_ask_many(port: int, queries: list[dns.message.Message]) -> list[dns.message.Message]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answers = []
    async with stream:
        for query in queries:
            wire = query.to_wire()
            await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        for _ in queries:
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = await stream.receive_some(65535)
                assert chunk
                data += chunk
            length = int.from_bytes(data[:2], "big")
            answers.append(dns.message.from_wire(data[2:2 + length]))
            assert len(data) == 2 + length  # one answer at a time, in order
    return answers


async def fake_upstream(*, task_status=trio.TASK_STATUS_IGNORED, answer: bool = True) -> None:
    """A resolver on localhost that answers every A query with 192.0.2.80 (or stays silent)."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            wire, peer = await sock.recvfrom(65535)
            if not answer:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                                       "192.0.2.80"))
            await sock.sendto(response.to_wire(), peer)


async def start(nursery, server: ClusterDns) -> int:
    await nursery.start(server.run)
    assert server.port is not None, server.off_reason
    return server.port


async def test_udp_and_tcp_answers_and_the_service_it_programs(tmp_path):
    node = node_with(tmp_path)
    server = ClusterDns(node, log, listen=LOCALHOST, upstreams=[])
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        (service,) = node.system_services
        assert service.key == "kube-system/kube-dns"
        assert service.cluster_ip == IPv4Address("10.96.0.10")
        assert service.endpoints == (IPv4Address("10.244.1.254"),)
        assert [(p.name, p.protocol, p.port, p.target_port) for p in service.ports] == [
            ("dns", "udp", 53, port), ("dns-tcp", "tcp", 53, port)]

        response = await udp_ask(port, dns.message.make_query("web.default.svc.cluster.local",
                                                              "A"))
        assert response.answer[0][0].address == "10.96.0.11"
        a, srv = await tcp_ask_many(port, [
            dns.message.make_query("kube-dns.kube-system.svc.cluster.local", "A"),
            dns.message.make_query("_http._tcp.web.default.svc.cluster.local", "SRV")])
        assert a.answer[0][0].address == "10.96.0.10"
        assert srv.answer[0][0].port == 80
        # Without upstreams, other names are refused.
        refused = await udp_ask(port, dns.message.make_query("example.com", "A"))
        assert refused.rcode() == dns.rcode.REFUSED
        stats = server.statistics()
        assert (stats["udp_queries"], stats["tcp_queries"]) == (2, 2)
        assert stats["answers"] == {"NOERROR": 3, "REFUSED": 1}
        nursery.cancel_scope.cancel()
    assert node.system_services == ()


async def test_a_service_added_at_runtime_resolves_at_once(tmp_path):
    node = node_with(tmp_path)
    server = ClusterDns(node, log, listen=LOCALHOST, upstreams=[])
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        query = dns.message.make_query("api.default.svc.cluster.local", "A")
        assert (await udp_ask(port, query)).rcode() == dns.rcode.NXDOMAIN
        api = dataclasses.replace(WEB, name="api", cluster_ip=IPv4Address("10.96.0.12"))
        node.topology = dataclasses.replace(node.topology, services=(WEB, api))
        assert (await udp_ask(port, query)).answer[0][0].address == "10.96.0.12"
        nursery.cancel_scope.cancel()


async def test_forwarding_to_an_upstream_and_servfail_when_it_is_silent(tmp_path, monkeypatch):
    monkeypatch.setattr(dns_server, "FORWARD_TIMEOUT", 0.5)
    async with trio.open_nursery() as nursery:
        good = await nursery.start(fake_upstream)
        silent = await nursery.start(lambda task_status: fake_upstream(task_status=task_status,
                                                                       answer=False))
        node = node_with(tmp_path)
        # The silent one first: the next upstream answers within the total timeout.
        server = ClusterDns(node, log, listen=LOCALHOST,
                            upstreams=[("127.0.0.1", silent), ("127.0.0.1", good)])
        port = await start(nursery, server)
        response = await udp_ask(port, dns.message.make_query("example.com", "A"))
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer[0][0].address == "192.0.2.80"
        (tcp,) = await tcp_ask_many(port, [dns.message.make_query("example.org", "A")])
        assert tcp.answer[0][0].address == "192.0.2.80"
        # Cluster names never leave the node.
        local = await udp_ask(port, dns.message.make_query("web.default.svc.cluster.local", "A"))
        assert local.answer[0][0].address == "10.96.0.11"

        lonely = ClusterDns(node_with(tmp_path), log, listen=LOCALHOST,
                            upstreams=[("127.0.0.1", silent)])
        lonely_port = await start(nursery, lonely)
        failed = await udp_ask(lonely_port, dns.message.make_query("example.com", "A"))
        assert failed.rcode() == dns.rcode.SERVFAIL
        stats = server.statistics()
        assert (stats["forwarded"], stats["forward_failures"]) == (2, 0)
        lonely_stats = lonely.statistics()
        assert (lonely_stats["forwarded"], lonely_stats["forward_failures"]) == (1, 1)
        assert lonely_stats["answers"] == {"SERVFAIL": 1}
        nursery.cancel_scope.cancel()


async def test_malformed_queries_are_counted_and_the_server_keeps_answering(tmp_path):
    node = node_with(tmp_path)
    server = ClusterDns(node, log, listen=LOCALHOST, upstreams=[])
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        assert await udp_ask(port, b"\x01", timeout=0.3) is None  # dropped
        formerr = await udp_ask(port, b"\xab\xcd\x01\x00\x00\x01" + bytes(6))
        assert formerr.id == 0xabcd and formerr.rcode() == dns.rcode.FORMERR
        # Junk over TCP ends that connection only.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"\x00\x01\x00")
            assert await stream.receive_some(100) == b""
        response = await udp_ask(port, dns.message.make_query("web.default.svc.cluster.local",
                                                              "A"))
        assert response.rcode() == dns.rcode.NOERROR
        assert server.statistics()["malformed"] == 3
        nursery.cancel_scope.cancel()


async def test_udp_truncation_then_the_whole_answer_over_tcp(tmp_path):
    endpoints = tuple(IPv4Address(f"10.244.3.{i}") for i in range(1, 61))
    headless = Service(name="many", cluster_ip=None, endpoints=endpoints)
    node = node_with(tmp_path, services=(WEB, headless))
    server = ClusterDns(node, log, listen=LOCALHOST, upstreams=[])
    async with trio.open_nursery() as nursery:
        port = await start(nursery, server)
        query = dns.message.make_query("many.default.svc.cluster.local", "A")
        truncated = await udp_ask(port, query)
        assert truncated.flags & dns.flags.TC and truncated.answer == []
        (whole,) = await tcp_ask_many(port, [query])
        assert len(whole.answer[0]) == 60
        assert server.statistics()["truncated"] == 1
        nursery.cancel_scope.cancel()


async def test_without_the_host_port_dns_is_off_and_says_why(tmp_path):
    node = node_with(tmp_path, host_port=False)
    server = ClusterDns(node, log, listen=LOCALHOST, upstreams=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
    assert server.port is None and node.system_services == ()
    assert "host_port.enabled = false" in server.statistics()["reason"]


def test_host_nameservers_reads_ipv4_nameserver_lines(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nsearch example\nnameserver 192.0.2.53\nnameserver ::1\n"
                    "nameserver  198.51.100.1 \noptions edns0\n")
    assert host_nameservers(str(path)) == [IPv4Address("192.0.2.53"),
                                           IPv4Address("198.51.100.1")]
    assert host_nameservers(str(tmp_path / "missing")) == []


async def test_the_daemon_serves_dns_and_vswitchctl_dns_applies_the_search_list(tmp_path):
    harness = Harness(make_topology(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery, dns_factory=lambda node: ClusterDns(
            node, log, listen=LOCALHOST, upstreams=[]))
        services = (await ask(path, "services"))["result"]
        assert [(s["namespace"], s["name"], s["cluster_ip"]) for s in services] == [
            ("kube-system", "kube-dns", "10.96.0.10")]
        added = await ask(path, "service_add", {"toml": '[[services]]\nname = "web"\n'
                                                        'ports = [ { port = 80 } ]\n',
                                                "source": "web.toml"})
        assert added["ok"], added
        answer = (await ask(path, "dns", {"name": "web", "type": "A"}))["result"]
        assert [t["name"] for t in answer["tried"]] == ["web.default.svc.cluster.local."]
        assert answer["answer"]["answers"] == ["web.default.svc.cluster.local. 5 IN A 10.96.0.11"]
        other = (await ask(path, "dns", {"name": "web", "namespace": "prod"}))["result"]
        assert [(t["name"], t["rcode"]) for t in other["tried"]] == [
            ("web.prod.svc.cluster.local.", "NXDOMAIN"), ("web.svc.cluster.local.", "NXDOMAIN"),
            ("web.cluster.local.", "NXDOMAIN"), ("web.", "REFUSED")]
        ptr = (await ask(path, "dns", {"name": "10.0.96.10.in-addr.arpa.", "type": "PTR"}))
        assert ptr["result"]["answer"]["answers"] == [
            "10.0.96.10.in-addr.arpa. 5 IN PTR kube-dns.kube-system.svc.cluster.local."]
        state = (await ask(path, "dns"))["result"]["server"]
        assert state["enabled"] and state["dns_ip"] == "10.96.0.10"
        bad = await ask(path, "dns", {"name": "web", "type": "BOGUS"})
        assert "unknown record type" in bad["error"]
        # vswitchctl exec learns the pod's resolv.conf with its namespace.
        netns = (await ask(path, "netns", {"pod": "a"}))["result"]
        assert netns["resolv_conf"] == str(tmp_path / "t1.resolv" / "default.conf")
        assert "nameserver 10.96.0.10" in (tmp_path / "t1.resolv" / "default.conf").read_text()
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "t1.resolv").exists()  # removed on the way out


def test_vswitchctl_dns_renders_the_names_tried_and_the_records() -> None:
    result = {"type": "A", "tried": [
        {"name": "web.prod.svc.cluster.local.", "rcode": "NXDOMAIN", "answers": []},
        {"name": "web.svc.cluster.local.", "rcode": "NOERROR",
         "answers": ["web.svc.cluster.local. 5 IN A 10.96.0.11"], "additional": []}],
        "server": {"enabled": True}}
    result["answer"] = result["tried"][1]
    assert render_dns(result).splitlines() == [
        ";; web.prod.svc.cluster.local. NXDOMAIN", ";; web.svc.cluster.local. NOERROR",
        "web.svc.cluster.local. 5 IN A 10.96.0.11"]
    result["answer"] = result["tried"][0]
    assert render_dns(result).splitlines()[-1] == "no A record: NXDOMAIN"
    off = {"server": {"enabled": False, "reason": "cluster DNS is off ([cluster] dns = false)"}}
    assert render_dns(off) == "cluster DNS is off ([cluster] dns = false)"
    assert "dns_ip:" in render_dns({"server": {"enabled": True, "dns_ip": "10.96.0.10"}})

"""Cluster DNS answers: every record type of the Kubernetes DNS specification, NXDOMAIN, NODATA,
headless services, SRV, PTR, forwarding decisions, truncation and malformed queries."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

import dns.name
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from vswitch.dns.answers import Drop, Forward, Reply, decide
from vswitch.dns.service import dns_service
from vswitch.dns.stub import candidates, resolv_conf_text
from vswitch.dns.zone import TTL, ViewCache, ZoneView, reverse_zone
from vswitch.model import Container, Pod, RemotePod, Service, ServicePort, mac_for_ip

SERVICE_CIDR = IPv4Network("10.96.0.0/16")
CLUSTER_CIDR = IPv4Network("10.244.0.0/16")


def pod(name: str, ip: str, namespace: str = "default", ready: bool = True,
        **labels: str) -> Pod:
    address = IPv4Address(ip)
    ports = MappingProxyType({"http": ("tcp", 8080)})
    return Pod(name=name, ip=address, mac=mac_for_ip(address), netns=f"ns-{name}", tap=f"t-{name}",
               labels=MappingProxyType(labels), ready=ready, namespace=namespace,
               containers=(Container("main", ("sleep", "inf"), ports=ports),))


PODS = (
    pod("web-1", "10.244.1.10", app="web"),
    pod("web-2", "10.244.1.11", app="web", ready=False),
    pod("db-1", "10.244.1.20", namespace="prod", app="db"),
    pod("db-other", "10.244.1.21", app="db"),  # same labels, other namespace: not an endpoint
)
REMOTE = RemotePod(node="n2", name="db-2", ip=IPv4Address("10.244.2.20"), namespace="prod",
                   labels=MappingProxyType({"app": "db"}),
                   ports=MappingProxyType({"http": ("tcp", 9090)}))
SERVICES = (
    Service(name="web", cluster_ip=IPv4Address("10.96.0.11"), selector={"app": "web"},
            ports=(ServicePort("http", "tcp", 80, 8080), ServicePort("", "udp", 53, 53))),
    Service(name="db", namespace="prod", cluster_ip=None, selector={"app": "db"},
            ports=(ServicePort("http", "tcp", 80, "http"),)),
    dns_service(IPv4Address("10.96.0.10"), IPv4Address("10.244.1.254"), 40053),
)


@pytest.fixture(scope="module")
def view() -> ZoneView:
    return ZoneView("cluster.local", SERVICES, PODS + (REMOTE,), (SERVICE_CIDR, CLUSTER_CIDR))


def ask(view: ZoneView, name: str, rdtype: str = "A", *, udp: bool = True,
        forwarding: bool = True, **query_options) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **query_options)
    decision = decide(query.to_wire(), view, udp=udp, forwarding=forwarding)
    assert isinstance(decision, Reply), decision
    response = dns.message.from_wire(decision.wire)
    assert response.id == query.id
    return response


def records(response: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
                  for rrset in getattr(response, section) for rdata in rrset)


def test_service_a_record_is_the_cluster_ip(view):
    response = ask(view, "web.default.svc.cluster.local")
    assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
    assert records(response) == ["web.default.svc.cluster.local. A 10.96.0.11"]
    assert response.answer[0].ttl == TTL


def test_names_are_case_insensitive(view):
    # The answer's owner keeps the question's spelling, as resolvers expect.
    assert records(ask(view, "WEB.Default.SVC.cluster.LOCAL")) == [
        "WEB.Default.SVC.cluster.LOCAL. A 10.96.0.11"]


def test_the_dns_service_itself_resolves(view):
    assert records(ask(view, "kube-dns.kube-system.svc.cluster.local")) == [
        "kube-dns.kube-system.svc.cluster.local. A 10.96.0.10"]


def test_headless_service_a_records_are_its_ready_endpoints_of_its_namespace(view):
    assert records(ask(view, "db.prod.svc.cluster.local")) == [
        "db.prod.svc.cluster.local. A 10.244.1.20", "db.prod.svc.cluster.local. A 10.244.2.20"]
    assert records(ask(view, "10-244-2-20.db.prod.svc.cluster.local")) == [
        "10-244-2-20.db.prod.svc.cluster.local. A 10.244.2.20"]


def test_srv_for_named_ports_targets_the_service(view):
    response = ask(view, "_http._tcp.web.default.svc.cluster.local", "SRV")
    assert records(response) == [
        "_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]
    assert records(response, "additional") == ["web.default.svc.cluster.local. A 10.96.0.11"]
    # A port without a name has no SRV record.
    assert ask(view, "_._udp.web.default.svc.cluster.local", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_headless_srv_names_each_endpoint_and_its_target_port(view):
    response = ask(view, "_http._tcp.db.prod.svc.cluster.local", "SRV")
    assert records(response) == [
        "_http._tcp.db.prod.svc.cluster.local. SRV 0 100 8080 10-244-1-20.db.prod.svc.cluster.local.",
        "_http._tcp.db.prod.svc.cluster.local. SRV 0 100 9090 10-244-2-20.db.prod.svc.cluster.local."]
    assert records(response, "additional") == [
        "10-244-1-20.db.prod.svc.cluster.local. A 10.244.1.20",
        "10-244-2-20.db.prod.svc.cluster.local. A 10.244.2.20"]


def test_ptr_for_cluster_ips_endpoints_and_pods(view):
    assert records(ask(view, "11.0.96.10.in-addr.arpa", "PTR")) == [
        "11.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
    assert records(ask(view, "20.1.244.10.in-addr.arpa", "PTR")) == [
        "20.1.244.10.in-addr.arpa. PTR 10-244-1-20.db.prod.svc.cluster.local."]
    assert records(ask(view, "10.1.244.10.in-addr.arpa", "PTR")) == [
        "10.1.244.10.in-addr.arpa. PTR 10-244-1-10.default.pod.cluster.local."]
    unknown = ask(view, "99.9.244.10.in-addr.arpa", "PTR")
    assert unknown.rcode() == dns.rcode.NXDOMAIN
    assert records(unknown, "authority")[0].startswith("244.10.in-addr.arpa. SOA ")


def test_pod_a_records_for_local_and_remote_pods(view):
    assert records(ask(view, "10-244-1-11.default.pod.cluster.local")) == [
        "10-244-1-11.default.pod.cluster.local. A 10.244.1.11"]
    assert records(ask(view, "10-244-2-20.prod.pod.cluster.local")) == [
        "10-244-2-20.prod.pod.cluster.local. A 10.244.2.20"]


def test_unknown_names_inside_the_domain_are_nxdomain_with_the_soa(view):
    for name in ("nope.default.svc.cluster.local", "web.prod.svc.cluster.local",
                 "x.cluster.local"):
        response = ask(view, name)
        assert response.rcode() == dns.rcode.NXDOMAIN and response.flags & dns.flags.AA
        assert response.answer == []
        assert records(response, "authority")[0].startswith("cluster.local. SOA ns.dns.")


def test_known_names_of_other_types_are_nodata(view):
    for name, rdtype in (("web.default.svc.cluster.local", "AAAA"),
                         ("web.default.svc.cluster.local", "TXT"),
                         ("default.svc.cluster.local", "A"),  # an empty non-terminal
                         ("svc.cluster.local", "A")):
        response = ask(view, name, rdtype)
        assert response.rcode() == dns.rcode.NOERROR, name
        assert response.answer == [] and records(response, "authority")[0].startswith(
            "cluster.local. SOA"), name


def test_the_apex_soa_and_the_spec_version(view):
    assert records(ask(view, "cluster.local", "SOA"))[0].startswith("cluster.local. SOA")
    assert records(ask(view, "dns-version.cluster.local", "TXT")) == [
        'dns-version.cluster.local. TXT "1.1.0"']


def test_names_outside_are_forwarded_or_refused(view):
    query = dns.message.make_query("example.com", "A")
    decision = decide(query.to_wire(), view, udp=True, forwarding=True)
    assert isinstance(decision, Forward) and decision.name == "example.com."
    # A reverse name outside the service and cluster CIDRs is someone else's too.
    reverse = dns.message.make_query("1.2.0.192.in-addr.arpa", "PTR")
    assert isinstance(decide(reverse.to_wire(), view, udp=True, forwarding=True), Forward)
    refused = ask(view, "example.com", forwarding=False)
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.RA


def big_view(count: int) -> ZoneView:
    """A headless service with ``count`` ready endpoints: an A answer of ``count`` records."""
    pods = tuple(pod(f"p{i}", f"10.244.3.{i + 1}", app="many") for i in range(count))
    service = Service(name="many", cluster_ip=None, selector={"app": "many"})
    return ZoneView("cluster.local", (service,), pods, (SERVICE_CIDR, CLUSTER_CIDR))


def test_udp_answers_over_512_bytes_are_truncated_without_edns():
    view = big_view(60)  # 60 A records of 16 bytes each and more: over 512
    query = dns.message.make_query("many.default.svc.cluster.local", "A")
    decision = decide(query.to_wire(), view, udp=True, forwarding=False)
    assert isinstance(decision, Reply) and decision.truncated and len(decision.wire) <= 512
    response = dns.message.from_wire(decision.wire)
    assert response.flags & dns.flags.TC and response.answer == []
    # Over TCP the whole answer goes out.
    whole = decide(query.to_wire(), view, udp=False, forwarding=False)
    assert isinstance(whole, Reply) and not whole.truncated
    assert len(dns.message.from_wire(whole.wire).answer[0]) == 60


def test_udp_answers_honour_the_edns_payload_size():
    view = big_view(60)
    query = dns.message.make_query("many.default.svc.cluster.local", "A", use_edns=0,
                                   payload=4096)
    decision = decide(query.to_wire(), view, udp=True, forwarding=False)
    assert isinstance(decision, Reply) and not decision.truncated and len(decision.wire) > 512
    response = dns.message.from_wire(decision.wire)
    assert response.edns == 0 and len(response.answer[0]) == 60


@pytest.mark.parametrize("wire, expected", [
    (b"", Drop("malformed")),
    (b"\x12\x34\x01", Drop("malformed")),
    # A header that says one question, and no question: FORMERR with the ID.
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", "FORMERR"),
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00", "FORMERR"),
    # A response (QR set) is never answered.
    (b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00", Drop("response")),
])
def test_malformed_queries_get_formerr_or_nothing(view, wire, expected):
    decision = decide(wire, view, udp=True, forwarding=True)
    if isinstance(expected, Drop):
        assert decision == expected
        return
    assert isinstance(decision, Reply) and decision.rcode == expected
    response = dns.message.from_wire(decision.wire)
    assert response.id == 0x1234 and response.rcode() == dns.rcode.FORMERR


def test_queries_that_parse_but_are_not_answerable(view):
    two = dns.message.make_query("web.default.svc.cluster.local", "A")
    two.question.append(dns.message.make_query("x.cluster.local", "A").question[0])
    assert ask_raw(view, two).rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert ask_raw(view, notify).rcode() == dns.rcode.NOTIMP
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
    assert ask_raw(view, chaos).rcode() == dns.rcode.REFUSED


def ask_raw(view: ZoneView, query: dns.message.Message) -> dns.message.Message:
    decision = decide(query.to_wire(), view, udp=True, forwarding=True)
    assert isinstance(decision, Reply)
    return dns.message.from_wire(decision.wire)


def test_random_bytes_never_raise(view):
    import random

    rng = random.Random(7)
    base = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
    for _ in range(2000):
        wire = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        decide(bytes(wire[: rng.randrange(len(wire) + 1)]), view, udp=True, forwarding=True)


def test_reverse_zones_cover_whole_octets():
    assert reverse_zone(IPv4Network("10.96.0.0/16")).to_text() == "96.10.in-addr.arpa."
    assert reverse_zone(IPv4Network("10.96.0.0/12")).to_text() == "10.in-addr.arpa."
    assert reverse_zone(IPv4Network("10.244.1.0/24")).to_text() == "1.244.10.in-addr.arpa."


def test_the_view_cache_rebuilds_only_after_a_change():
    state = {"services": SERVICES[:1], "generation": 1}
    cache = ViewCache(lambda: (state["services"], state["generation"]),
                      lambda: ZoneView("cluster.local", state["services"], PODS))
    first = cache.current()
    assert cache.current() is first and cache.builds == 1
    state["generation"] = 2
    second = cache.current()
    assert second is not first and cache.builds == 2
    state["services"] = SERVICES  # a new tuple: a service was added
    assert cache.current().lookup(
        dns.name.from_text("kube-dns.kube-system.svc.cluster.local")) is not None


def test_stub_search_order_and_resolv_conf():
    assert candidates("web", "prod", "cluster.local") == [
        "web.prod.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web."]
    assert candidates("a.b.c.d.e.f", "default", "c.l")[0] == "a.b.c.d.e.f."
    assert candidates("web.default.svc.cluster.local.", "x", "cluster.local") == [
        "web.default.svc.cluster.local."]
    assert resolv_conf_text(IPv4Address("10.96.0.10"), "prod", "cluster.local").splitlines()[1:] == [
        "nameserver 10.96.0.10", "search prod.svc.cluster.local svc.cluster.local cluster.local",
        "options ndots:5"]


def test_the_dns_package_is_sans_io():
    """Answers are decided without I/O, clocks or hidden randomness, as the core's are: the same
    checker, walked from every module of vswitch/dns."""
    from .test_sans_io_imports import ROOT, _module_name, _walk

    roots = [_module_name(path) for path in sorted((ROOT / "vswitch" / "dns").glob("*.py"))]
    problems = {name: found for name, found in _walk(roots).items() if found}
    assert "vswitch.dns.answers" in _walk(roots) and problems == {}, problems

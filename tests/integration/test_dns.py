"""End to end: cluster DNS from real pods, through the kube-dns service, to the daemon.

One daemon serves the module: pods ``web-1`` (app=web; its container prints its
/etc/resolv.conf into the daemon's log and sleeps), ``upstream`` (a fake upstream resolver
that answers every A query with ``UPSTREAM_ANSWER``, so no query leaves the machine) and
``client``. Services: ``web`` (ClusterIP, named port http) and ``hl`` (headless, same
selector). ``[cluster] dns_upstreams`` names the upstream pod.

Pods resolve with glibc (``getent hosts``), dnspython's stub resolver reading the pod's
/etc/resolv.conf, and ``dig`` (UDP and TCP), as a workload would.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from harness import PYTHON, Daemon
from services_support import (
    ServiceNode,
    ServiceNodeSpec,
    ServicePodSpec,
    make_service_node,
    service_port,
)

pytestmark = pytest.mark.integration

DOMAIN = "cluster.local"
UPSTREAM_ANSWER = "192.0.2.99"

FAKE_UPSTREAM = textwrap.dedent(f"""
    import socket
    import dns.message, dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 53))
    while True:
        wire, peer = sock.recvfrom(65535)
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == 1:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A",
                                                       "{UPSTREAM_ANSWER}"))
        sock.sendto(response.to_wire(), peer)
""")

# dnspython's stub resolver, configured from the pod's /etc/resolv.conf (search list, ndots).
RESOLVER = textwrap.dedent("""
    import json, sys
    import dns.resolver, dns.reversename

    resolver = dns.resolver.Resolver()  # reads /etc/resolv.conf
    name, rdtype = sys.argv[1], sys.argv[2]
    if rdtype == "PTR":
        name = dns.reversename.from_address(name)
    answer = resolver.resolve(name, rdtype, search=True)
    print(json.dumps({"nameservers": resolver.nameservers,
                      "search": [str(s) for s in resolver.search],
                      "name": str(answer.qname),
                      "records": sorted(r.to_text() for r in answer)}))
""")


@dataclasses.dataclass(frozen=True)
class DnsNodeSpec(ServiceNodeSpec):
    dns_upstreams: tuple[str, ...] = ()

    def render(self) -> str:
        upstreams = ", ".join(f'"{address}"' for address in self.dns_upstreams)
        return ServiceNodeSpec.render(self).replace(
            "[cluster]\n", f"[cluster]\ndns_upstreams = [{upstreams}]\n", 1)


@pytest.fixture(scope="module")
def node(netns_environment: None, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[ServiceNode]:
    workdir = tmp_path_factory.mktemp("dns-node")
    base = make_service_node(workdir, uplink=False)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ServiceNodeSpec)}
    upstream_ip = str(base.pod_cidr.network_address + 30)
    spec = DnsNodeSpec(**fields, dns_upstreams=(upstream_ip,))
    upstream_script = workdir / "fake_upstream.py"
    upstream_script.write_text(FAKE_UPSTREAM)
    (workdir / "resolver.py").write_text(RESOLVER)
    service_node = ServiceNode(Daemon(spec, workdir))
    web = {"app": "web"}
    service_node.daemon.update_spec(
        pods=(
            ServicePodSpec("web-1", labels=web, containers=(
                ("show", ("sh", "-c", "cat /etc/resolv.conf; exec sleep 100000")),)),
            ServicePodSpec("upstream", ip=upstream_ip,
                           containers=(("dns", (PYTHON, str(upstream_script))),)),
            ServicePodSpec("client"),
        ),
        services=(
            {"name": "web", "selector": web, "ports": [service_port("http", "tcp", 80, 8080)]},
            {"name": "hl", "cluster_ip": "None", "selector": web,
             "ports": [service_port("http", "tcp", 80, 8080)]},
        ))
    try:
        service_node.daemon.start()
        yield service_node
    finally:
        problems = service_node.close()
    if problems:
        pytest.fail(f"the DNS node left things behind: {problems}")


def dns_ip(node: ServiceNode) -> str:
    assert node.spec.service_cidr is not None
    return str(node.spec.service_cidr.network_address + 10)


def web_ip(node: ServiceNode) -> str:
    return node.service("web")["cluster_ip"]


def sh(node: ServiceNode, pod: str, *argv: str) -> str:
    return node.daemon.exec(pod, *argv, timeout=30).stdout


def test_the_dns_service_is_programmed_and_shown(node: ServiceNode) -> None:
    services = {f"{s['namespace']}/{s['name']}": s
                for s in node.ctl("services", "-n", "kube-system")}
    kube_dns = services["kube-system/kube-dns"]
    assert kube_dns["cluster_ip"] == dns_ip(node)
    assert {(p["name"], p["protocol"], p["port"]) for p in kube_dns["ports"]} == {
        ("dns", "udp", 53), ("dns-tcp", "tcp", 53)}
    state = node.ctl("dns")["server"]
    assert state["enabled"] and state["dns_ip"] == dns_ip(node), state


def test_pods_see_the_cluster_resolv_conf_and_the_host_keeps_its_own(node: ServiceNode) -> None:
    host_before = Path("/etc/resolv.conf").read_text()
    expected = [f"nameserver {dns_ip(node)}",
                f"search default.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}", "options ndots:5"]
    lines = sh(node, "client", "cat", "/etc/resolv.conf").splitlines()
    assert [line for line in lines if not line.startswith("#")] == expected
    # The container printed its own at start; the daemon logged it.
    log = node.daemon.log()
    for line in expected:
        assert f"[web-1/show] {line}" in log, log[-3000:]
    assert Path("/etc/resolv.conf").read_text() == host_before


def test_getent_resolves_short_and_full_service_names(node: ServiceNode) -> None:
    for name in ("web", "web.default", f"web.default.svc.{DOMAIN}"):
        out = sh(node, "client", "getent", "hosts", name)
        assert out.split()[0] == web_ip(node), (name, out)
    web1 = next(row["ip"] for row in node.ctl("pods") if row["name"] == "web-1")
    assert sh(node, "client", "getent", "ahostsv4", "hl").split()[0] == web1


def test_python_resolver_gets_a_srv_and_ptr(node: ServiceNode) -> None:
    script = str(node.daemon.workdir / "resolver.py")

    def resolve(name: str, rdtype: str) -> dict:
        return json.loads(sh(node, "client", PYTHON, script, name, rdtype))

    a = resolve("web", "A")
    assert a["nameservers"] == [dns_ip(node)] and a["records"] == [web_ip(node)]
    assert a["name"] == f"web.default.svc.{DOMAIN}."
    srv = resolve(f"_http._tcp.web.default.svc.{DOMAIN}", "SRV")
    assert srv["records"] == [f"0 100 80 web.default.svc.{DOMAIN}."]
    ptr = resolve(web_ip(node), "PTR")
    assert ptr["records"] == [f"web.default.svc.{DOMAIN}."]


def test_dig_over_udp_and_tcp(node: ServiceNode) -> None:
    full = f"web.default.svc.{DOMAIN}"
    assert sh(node, "client", "dig", "+short", full).split() == [web_ip(node)]
    assert sh(node, "client", "dig", "+short", "+tcp", full).split() == [web_ip(node)]
    assert sh(node, "client", "dig", "+short", "SRV", f"_http._tcp.{full}").split() == [
        "0", "100", "80", f"{full}."]
    assert sh(node, "client", "dig", "+short", "-x", web_ip(node)).split() == [f"{full}."]
    nxdomain = sh(node, "client", "dig", f"nope.default.svc.{DOMAIN}")
    assert "status: NXDOMAIN" in nxdomain
    nodata = sh(node, "client", "dig", "AAAA", full)
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata
    web1 = next(row["ip"] for row in node.ctl("pods") if row["name"] == "web-1")
    pod_name = f"{web1.replace('.', '-')}.default.pod.{DOMAIN}"
    assert sh(node, "client", "dig", "+short", pod_name).split() == [web1]
    assert sh(node, "client", "dig", "+short", f"hl.default.svc.{DOMAIN}").split() == [web1]


def test_names_outside_the_cluster_go_to_the_upstream(node: ServiceNode) -> None:
    assert sh(node, "client", "dig", "+short", "example.com").split() == [UPSTREAM_ANSWER]
    assert sh(node, "client", "getent", "hosts", "example.com").split()[0] == UPSTREAM_ANSWER
    state = node.ctl("dns")["server"]
    assert state["forwarded"] >= 2 and state["forward_failures"] == 0, state


def test_a_service_added_at_runtime_resolves_at_once(node: ServiceNode, tmp_path: Path) -> None:
    fragment = tmp_path / "api.toml"
    fragment.write_text('[[services]]\nname = "api"\nselector = { app = "web" }\n'
                        'ports = [ { name = "http", port = 8000 } ]\n')
    node.ctl("service", "add", str(fragment))
    api_ip = node.service("api")["cluster_ip"]
    assert ipaddress.IPv4Address(api_ip) in node.spec.service_cidr
    assert sh(node, "client", "dig", "+short", f"api.default.svc.{DOMAIN}").split() == [api_ip]
    shown = node.ctl("dns", "api")
    assert shown["answer"]["answers"] == [f"api.default.svc.{DOMAIN}. 5 IN A {api_ip}"]
    node.ctl("service", "del", "api")
    assert "NXDOMAIN" in sh(node, "client", "dig", f"api.default.svc.{DOMAIN}")

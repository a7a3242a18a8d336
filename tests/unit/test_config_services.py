"""The topology loader: the cluster, the uplink and services."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from vswitch import model
from vswitch.config import (
    load_topology,
    parse_topology,
)

from .config_support import (
    CONFIG_DIR,
    NODE,
    PORT,
    SERVICES_EXAMPLE,
    SVC,
    UPLINK,
    errors_of,
    only_error,
    service,
)

# -- cluster, uplink and services ---------------------------------------------------------------


def test_the_issue_services_example_is_accepted_as_written() -> None:
    topology = parse_topology(SERVICES_EXAMPLE)
    assert topology.cluster == model.Cluster(
        cidr=IPv4Network("10.244.0.0/16"), service_cidr=IPv4Network("10.96.0.0/16"),
        hairpin_address=IPv4Address("169.254.169.5"), conntrack_max=262144,
        domain="cluster.local", dns_ip=IPv4Address("10.96.0.10"), dns_upstreams=None)
    uplink = topology.uplink
    assert uplink.address == IPv4Interface("192.0.2.2/24")
    assert (uplink.gateway, uplink.netns, uplink.mtu) == (IPv4Address("192.0.2.1"), "lab-internet", 1500)
    assert uplink.name == model.kernel_name("vsu", "lab1") and len(uplink.name) <= 15
    assert (uplink.mac, uplink.far_mac) == ("0a:58:c0:00:02:02", "0a:58:c0:00:02:01")
    (web,) = topology.services
    assert (web.name, web.namespace, web.cluster_ip, web.type) == (
        "web", "default", IPv4Address("10.96.0.20"), "NodePort")
    assert dict(web.selector) == {"app": "web"} and web.endpoints == ()
    assert (web.session_affinity, web.affinity_timeout) == ("ClientIP", 10800)
    assert (web.external_traffic_policy, web.internal_traffic_policy) == ("Cluster", "Cluster")
    assert (web.external_ips, web.load_balancer) == ((), "random")
    assert web.ports == (model.ServicePort("http", "tcp", 80, 8080, 30080),)
    assert topology.uplink_segment().gateway == IPv4Address("192.0.2.2")


def test_services_toml_loads() -> None:
    topology = load_topology(CONFIG_DIR / "services.toml")
    assert topology.uplink.netns == "lab-internet"
    web = next(s for s in topology.services if s.name == "web")
    assert web == parse_topology(SERVICES_EXAMPLE).services[0]
    assert any(p.protocol == "udp" for s in topology.services for p in s.ports)
    assert {pod.name for pod in topology.pods} == {"web-1", "web-2", "client"}


def test_cluster_defaults_without_the_section() -> None:
    topology = parse_topology(NODE)
    assert topology.cluster == model.Cluster(cidr=IPv4Network("10.244.1.0/24"),
                                             service_cidr=IPv4Network("10.96.0.0/16"),
                                             dns_ip=IPv4Address("10.96.0.10"))
    assert topology.uplink is None and topology.services == ()


def test_default_cluster_cidr_covers_every_segment() -> None:
    text = NODE + '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
    assert parse_topology(text).cluster.cidr == IPv4Network("10.244.0.0/15")


def test_every_cluster_and_uplink_value_can_be_set() -> None:
    text = NODE + """
[cluster]
cidr = "10.244.0.0/16"
service_cidr = "10.100.0.0/24"
hairpin_address = "169.254.0.9"
conntrack_max = 1024
domain = "lab.example"
dns_ip = "10.100.0.53"
dns_upstreams = ["192.0.2.53", "198.51.100.53"]
[uplink]
address = "198.51.100.7/25"
gateway = "198.51.100.100"
mtu = 1400
"""
    topology = parse_topology(text)
    assert topology.cluster == model.Cluster(IPv4Network("10.244.0.0/16"),
                                             IPv4Network("10.100.0.0/24"),
                                             IPv4Address("169.254.0.9"), 1024,
                                             domain="lab.example",
                                             dns_ip=IPv4Address("10.100.0.53"),
                                             dns_upstreams=(IPv4Address("192.0.2.53"),
                                                            IPv4Address("198.51.100.53")))
    assert (topology.uplink.netns, topology.uplink.mtu) == (None, 1400)


def test_uplink_mtu_defaults_to_the_node_mtu() -> None:
    text = NODE.replace('pod_cidr', 'mtu = 1400\npod_cidr') + UPLINK
    assert parse_topology(text).uplink.mtu == 1400


def test_service_defaults_and_allocation_in_file_order() -> None:
    text = NODE + UPLINK + service('name = "a"', 'ports = [ { port = 80 } ]') + service(
        'name = "b"', 'cluster_ip = "10.96.0.11"', 'type = "NodePort"',
        'ports = [ { name = "x", port = 53, protocol = "udp" }, { name = "y", port = 53 } ]'
    ) + service('name = "c"', 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30000 } ]')
    a, b, c = parse_topology(text).services
    # a skips .10 (the cluster DNS address) and .11, which b takes explicitly; node ports skip
    # c's explicit tcp 30000.
    assert a.cluster_ip == IPv4Address("10.96.0.12") and b.cluster_ip == IPv4Address("10.96.0.11")
    assert a.ports == (model.ServicePort("", "tcp", 80, 80, None),)
    assert [(p.protocol, p.node_port) for p in b.ports] == [("udp", 30000), ("tcp", 30001)]
    assert c.ports[0].node_port == 30000
    assert (a.namespace, a.type, a.selector, a.session_affinity) == ("default", "ClusterIP", None, "None")


def test_every_service_value_can_be_set() -> None:
    text = NODE + UPLINK + '[[namespaces]]\nname = "prod"\n' + service(
        'name = "db"', 'namespace = "prod"', 'cluster_ip = "10.96.5.5"', 'type = "NodePort"',
        'ports = [ { name = "pg", protocol = "tcp", port = 5432, target_port = "postgres", node_port = 32767 } ]',
        'endpoints = ["10.244.1.20", "203.0.113.9"]', 'session_affinity = "ClientIP"',
        'affinity_timeout = 60', 'external_traffic_policy = "Local"',
        'internal_traffic_policy = "Local"', 'external_ips = ["203.0.113.1"]',
        'load_balancer = "maglev"')
    (db,) = parse_topology(text).services
    assert db == model.Service(
        name="db", namespace="prod", cluster_ip=IPv4Address("10.96.5.5"), type="NodePort",
        ports=(model.ServicePort("pg", "tcp", 5432, "postgres", 32767),), selector=None,
        endpoints=(IPv4Address("10.244.1.20"), IPv4Address("203.0.113.9")),
        session_affinity="ClientIP", affinity_timeout=60, external_traffic_policy="Local",
        internal_traffic_policy="Local", external_ips=(IPv4Address("203.0.113.1"),),
        load_balancer="maglev")
    assert db.key == "prod/db"


def test_headless_service_needs_no_ports_and_gets_no_address() -> None:
    text = NODE + service('name = "h"', 'cluster_ip = "None"', 'selector = { app = "x" }') + service(
        'name = "n"', 'ports = [ { port = 1 } ]')
    headless, normal = parse_topology(text).services
    assert headless.headless and headless.ports == ()
    assert normal.cluster_ip == IPv4Address("10.96.0.11")  # .10 is the cluster DNS address


def test_same_name_in_two_namespaces_is_fine() -> None:
    text = NODE + service('name = "a"', 'ports = [ { port = 1 } ]') + service(
        'name = "a"', 'namespace = "kube-system"', 'ports = [ { port = 1 } ]')
    assert [s.key for s in parse_topology(text).services] == ["default/a", "kube-system/a"]


def test_node_ports_may_repeat_across_protocols() -> None:
    text = NODE + UPLINK + service('name = "a"', 'type = "NodePort"',
                                   'ports = [ { name = "t", port = 1, node_port = 30500 }, '
                                   '{ name = "u", port = 1, protocol = "udp", node_port = 30500 } ]')
    assert [p.node_port for p in parse_topology(text).services[0].ports] == [30500, 30500]


@pytest.mark.parametrize(
    "text, path, reason",
    [
        # [cluster]
        (NODE + '[cluster]\ncidr = "10.245.0.0/16"', "cluster.cidr",
         "10.245.0.0/16 does not contain node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.244.0.0"', "cluster.cidr", "expected an IPv4 network"),
        (NODE + '[cluster]\nservice_cidr = "10.244.0.0/16"', "cluster.service_cidr",
         "10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.0.0.0/8"\nservice_cidr = "10.96.0.0/16"',
         "cluster.service_cidr", "10.96.0.0/16 overlaps cluster.cidr 10.0.0.0/8"),
        (NODE + '[cluster]\nservice_cidr = "10.96.0.1/16"', "cluster.service_cidr", "host bits set"),
        (NODE + '[cluster]\nhairpin_address = "10.96.0.5"', "cluster.hairpin_address",
         "10.96.0.5 is inside cluster.service_cidr 10.96.0.0/16"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"\nhairpin_address = "10.244.9.9"',
         "cluster.hairpin_address", "10.244.9.9 is inside cluster.cidr 10.244.0.0/16"),
        (NODE + '[cluster]\nhairpin_address = "x"', "cluster.hairpin_address", "'x' is not an IPv4 address"),
        (NODE + "[cluster]\nconntrack_max = 1023", "cluster.conntrack_max",
         "must be between 1024 and 4194304, got 1023"),
        (NODE + "[cluster]\nconntrack_max = 4194305", "cluster.conntrack_max", "must be between"),
        (NODE + "[cluster]\nmax = 1", "cluster.max", "unknown key"),
        # [uplink]
        (NODE + '[uplink]\ngateway = "192.0.2.1"', "uplink.address", "required key is missing"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"', "uplink.gateway", "required key is missing"),
        (NODE + '[uplink]\naddress = "192.0.2.2"\ngateway = "192.0.2.1"', "uplink.address",
         "expected an address with its prefix length"),
        (NODE + '[uplink]\naddress = "192.0.2.0/24"\ngateway = "192.0.2.1"', "uplink.address",
         "192.0.2.0 is the network address of 192.0.2.0/24"),
        (NODE + '[uplink]\naddress = "192.0.2.2/31"\ngateway = "192.0.2.3"', "uplink.address",
         "prefix length /31 is outside /8../30"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.3.1"', "uplink.gateway",
         "192.0.3.1 is outside uplink.address's network 192.0.2.0/24"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.2.2"', "uplink.gateway",
         "192.0.2.2 is uplink.address itself"),
        (NODE + '[uplink]\naddress = "10.244.1.200/24"\ngateway = "10.244.1.201"', "uplink.address",
         "10.244.1.0/24 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"\n[uplink]\naddress = "10.244.9.2/24"\ngateway = "10.244.9.1"',
         "uplink.address", "10.244.9.0/24 overlaps cluster.cidr 10.244.0.0/16"),
        (NODE + '[uplink]\naddress = "10.96.1.2/24"\ngateway = "10.96.1.1"', "uplink.address",
         "10.96.1.0/24 overlaps cluster.service_cidr 10.96.0.0/16"),
        (NODE + '[uplink]\naddress = "169.254.169.2/24"\ngateway = "169.254.169.1"', "uplink.address",
         "contains cluster.hairpin_address 169.254.169.5"),
        (NODE + UPLINK + 'netns = "vsw-lab1-x"', "uplink.netns", "starts with 'vsw-'"),
        (NODE + UPLINK + 'netns = "a/b"', "uplink.netns", "not a usable namespace name"),
        (NODE + UPLINK + 'netns = ""', "uplink.netns", "must not be empty"),
        (NODE + UPLINK + "mtu = 100", "uplink.mtu", "must be between 576 and 9000"),
        (NODE + UPLINK + "name = 'x'", "uplink.name", "unknown key"),
        # [[services]]
        (NODE + service(PORT), "services[0].name", "required key is missing"),
        (NODE + service('name = "Web"', PORT), "services[0].name", "not a DNS-1123 label"),
        (NODE + service(SVC, 'namespace = "a_b"', PORT), "services[0].namespace", "not a DNS-1123 label"),
        (NODE + service(SVC, PORT) + service(SVC, PORT), "services[1].name",
         "duplicate service default/s (first at services[0])"),
        (NODE + service(SVC, 'cluster_ip = "10.97.0.1"', PORT), "services[0].cluster_ip",
         "10.97.0.1 is outside cluster.service_cidr 10.96.0.0/16"),
        (NODE + service(SVC, 'cluster_ip = "10.96.0.0"', PORT), "services[0].cluster_ip",
         "10.96.0.0 is the network address of 10.96.0.0/16"),
        (NODE + service(SVC, 'cluster_ip = "none"', PORT), "services[0].cluster_ip",
         "'none' is not an IPv4 address"),
        (NODE + service(SVC, 'cluster_ip = "10.96.0.20"', PORT) + service(
            'name = "t"', 'cluster_ip = "10.96.0.20"', PORT), "services[1].cluster_ip",
         "10.96.0.20 is already the cluster IP of services[0]"),
        (NODE + service(SVC, 'cluster_ip = "10.96.0.10"', PORT), "services[0].cluster_ip",
         "10.96.0.10 is cluster.dns_ip, the address of the cluster DNS service"),
        (NODE + '[cluster]\ndns_ip = "10.97.0.10"', "cluster.dns_ip",
         "10.97.0.10 is outside cluster.service_cidr 10.96.0.0/16; the DNS address is a cluster IP"),
        (NODE + '[cluster]\ndomain = "Cluster.local"', "cluster.domain",
         "is not a domain name like 'cluster.local'"),
        (NODE + '[cluster]\ndomain = "cluster.local."', "cluster.domain",
         "is not a domain name like 'cluster.local'"),
        (NODE + '[cluster]\ndns = "yes"', "cluster.dns", "expected a boolean, got string"),
        (NODE + '[cluster]\ndns_upstreams = ["8.8.8.8", "dns"]', "cluster.dns_upstreams[1]",
         "'dns' is not an IPv4 address"),
        (NODE + service(SVC, 'type = "LoadBalancer"', PORT), "services[0].type",
         "must be one of 'ClusterIP', 'NodePort', got 'LoadBalancer'"),
        (NODE + service(SVC, 'type = "nodeport"', PORT), "services[0].type", "did you mean 'NodePort'?"),
        (NODE + service(SVC, 'type = "NodePort"', PORT), "services[0].type",
         "type NodePort needs an [uplink] section"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'cluster_ip = "None"', PORT),
         "services[0].type", "a headless service (cluster_ip = \"None\") must be of type ClusterIP"),
        (NODE + service(SVC), "services[0].ports", "a service with a cluster IP needs at least one port"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { port = 2 } ]'),
         "services[0].ports[1].name", "required key is missing"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { name = "a", port = 2 } ]'),
         "services[0].ports[1].name", "duplicate port name 'a' in this service"),
        (NODE + service(SVC, 'ports = [ { name = "A", port = 1 } ]'), "services[0].ports[0].name",
         "not a DNS-1123 label"),
        (NODE + service(SVC, 'ports = [ { name = "", port = 1 } ]'), "services[0].ports[0].name",
         "must not be empty"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { name = "b", port = 1 } ]'),
         "services[0].ports[1].port", "tcp port 1 is already declared at services[0].ports[0].port"),
        (NODE + service(SVC, 'ports = [ { port = 0 } ]'), "services[0].ports[0].port",
         "must be between 1 and 65535, got 0"),
        (NODE + service(SVC, 'ports = [ { target_port = 1 } ]'), "services[0].ports[0].port",
         "required key is missing"),
        (NODE + service(SVC, 'ports = [ { port = 1, protocol = "sctp" } ]'),
         "services[0].ports[0].protocol", "must be one of 'tcp', 'udp', got 'sctp'"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = 70000 } ]'),
         "services[0].ports[0].target_port", "must be between 1 and 65535, got 70000"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = "Http" } ]'),
         "services[0].ports[0].target_port", "port name 'Http' is invalid"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = 1.5 } ]'),
         "services[0].ports[0].target_port", "expected a port number or a container port name, got float"),
        (NODE + service(SVC, 'ports = [ { port = 1, node_port = 30001 } ]'),
         "services[0].ports[0].node_port", "only a service of type NodePort has node ports"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'ports = [ { port = 1, node_port = 29999 } ]'),
         "services[0].ports[0].node_port", "must be between 30000 and 32767, got 29999"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30001 } ]')
         + service('name = "t"', 'type = "NodePort"', 'ports = [ { port = 2, node_port = 30001 } ]'),
         "services[1].ports[0].node_port", "tcp node port 30001 is already used by services[0].ports[0]"),
        (NODE + service(SVC, PORT, 'ports2 = 1'), "services[0].ports2", "unknown key"),
        (NODE + service(SVC, 'ports = [ { port = 1, nodeport = 1 } ]'), "services[0].ports[0].nodeport",
         "did you mean 'node_port'?"),
        (NODE + service(SVC, PORT, "selector = {}"), "services[0].selector", "an empty selector"),
        (NODE + service(SVC, PORT, 'selector = { "-x" = "y" }'), 'services[0].selector.-x',
         "label key '-x' is invalid"),
        (NODE + service(SVC, PORT, "selector = { a = 1 }"), "services[0].selector.a",
         "expected a string, got integer"),
        (NODE + service(SVC, PORT, 'selector = { a = "b" }', 'endpoints = ["10.244.1.9"]'),
         "services[0].endpoints", "give either a selector or explicit endpoints, not both"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.244.1.9", "x"]'), "services[0].endpoints[1]",
         "'x' is not an IPv4 address"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.244.1.9", "10.244.1.9"]'),
         "services[0].endpoints[1]", "10.244.1.9 is listed twice"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.96.0.10"]'), "services[0].endpoints[0]",
         "10.96.0.10 is inside cluster.service_cidr 10.96.0.0/16"),
        (NODE + service(SVC, PORT, 'endpoints = [1]'), "services[0].endpoints[0]",
         "expected a string, got integer"),
        (NODE + service(SVC, PORT, 'session_affinity = "clientip"'), "services[0].session_affinity",
         "did you mean 'ClientIP'?"),
        (NODE + service(SVC, PORT, "affinity_timeout = 0"), "services[0].affinity_timeout",
         "must be between 1 and 86400, got 0"),
        (NODE + service(SVC, PORT, "affinity_timeout = 86401"), "services[0].affinity_timeout",
         "must be between 1 and 86400"),
        (NODE + service(SVC, PORT, 'external_traffic_policy = "Node"'),
         "services[0].external_traffic_policy", "must be one of 'Cluster', 'Local'"),
        (NODE + service(SVC, PORT, 'internal_traffic_policy = "local"'),
         "services[0].internal_traffic_policy", "did you mean 'Local'?"),
        (NODE + service(SVC, PORT, 'load_balancer = "rr"'), "services[0].load_balancer",
         "must be one of 'random', 'maglev', got 'rr'"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.244.1.10"]'), "services[0].external_ips[0]",
         "10.244.1.10 is inside node.pod_cidr 10.244.1.0/24: a pod or gateway address"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.244.1.254"]'), "services[0].external_ips[0]",
         "10.244.1.254 is host_port.address"),
        (NODE + UPLINK + service(SVC, PORT, 'external_ips = ["192.0.2.2"]'),
         "services[0].external_ips[0]", "192.0.2.2 is uplink.address (the node address)"),
        (NODE + UPLINK + service(SVC, PORT, 'external_ips = ["192.0.2.1"]'),
         "services[0].external_ips[0]", "192.0.2.1 is uplink.gateway"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.96.3.3"]'), "services[0].external_ips[0]",
         "10.96.3.3 is inside cluster.service_cidr"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"' + service(SVC, PORT, 'external_ips = ["10.244.7.7"]'),
         "services[0].external_ips[0]", "10.244.7.7 is inside cluster.cidr 10.244.0.0/16: a pod address"),
        (NODE + service(SVC, PORT, 'external_ips = ["169.254.169.5"]'), "services[0].external_ips[0]",
         "169.254.169.5 is cluster.hairpin_address"),
        ("services = [1]\n" + NODE, "services[0]", "expected a table, got integer"),
        (NODE + "[services]\nx = 1", "services", "expected an array of tables, got table"),
        (NODE + '[[pods]]\nname = "uplink"', "pods[0].name", "'uplink' is reserved"),
    ],
)
def test_cluster_uplink_and_service_errors(text: str, path: str, reason: str) -> None:
    errors = errors_of(text)
    assert errors[0][0] == path, errors
    assert reason in errors[0][1], errors
    assert len(errors) == 1, errors


def test_a_wrong_cluster_does_not_cascade_into_services() -> None:
    text = NODE + '[cluster]\nservice_cidr = "nope"' + service(SVC, 'cluster_ip = "10.1.1.1"', PORT)
    assert only_error(text)[0] == "cluster.service_cidr"


def test_cluster_ip_pool_exhaustion_names_the_service() -> None:
    text = NODE + '[cluster]\nservice_cidr = "10.96.0.0/30"\ndns = false' + service(
        'name = "a"', PORT) + service('name = "b"', PORT) + service('name = "c"', PORT)
    assert only_error(text) == ("services[2]", "no free cluster IP left in cluster.service_cidr 10.96.0.0/30")


def test_cluster_dns_can_be_turned_off() -> None:
    topology = parse_topology(NODE + '[cluster]\ndns = false')
    assert topology.cluster.dns_ip is None


def test_cluster_dns_upstreams_absent_empty_or_listed() -> None:
    assert parse_topology(NODE).cluster.dns_upstreams is None  # the host's resolv.conf
    empty = parse_topology(NODE + '[cluster]\ndns_upstreams = []')
    assert empty.cluster.dns_upstreams == ()  # no forwarding
    listed = parse_topology(NODE + '[cluster]\ndns_upstreams = ["192.0.2.53"]')
    assert listed.cluster.dns_upstreams == (IPv4Address("192.0.2.53"),)


def test_a_service_cidr_without_a_tenth_address_needs_an_explicit_dns_ip() -> None:
    text = NODE + '[cluster]\nservice_cidr = "10.96.0.0/29"'
    assert only_error(text) == (
        "cluster.service_cidr", "10.96.0.0/29 has no tenth address for cluster DNS; set "
                                "cluster.dns_ip or cluster.dns = false")
    explicit = parse_topology(NODE + '[cluster]\nservice_cidr = "10.96.0.0/29"\n'
                                     'dns_ip = "10.96.0.6"' + service(SVC, PORT))
    assert explicit.cluster.dns_ip == IPv4Address("10.96.0.6")
    assert explicit.services[0].cluster_ip == IPv4Address("10.96.0.1")

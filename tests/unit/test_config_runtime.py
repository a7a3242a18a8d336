"""Changes checked against a running node: ``pod add``, ``apply`` and ``service set``."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address

import pytest

from vswitch import model
from vswitch.config import (
    ConfigError,
    parse_fragment,
    parse_pod,
    parse_topology,
    service_table,
    update_service,
)

from .config_support import (
    PORT,
    RUNNING,
    SERVICES_EXAMPLE,
    service,
)

# -- validation against a running node ---------------------------------------------------------


def test_parse_pod_allocates_around_the_running_pods() -> None:
    pod = parse_pod({"name": "new", "labels": {"app": "web"}, "ready": False}, RUNNING)
    assert (pod.ip, pod.netns, pod.ready) == (IPv4Address("10.244.1.12"), "vsw-lab1.default.new", False)
    assert pod.tap == model.kernel_name("vsp", "lab1", "default", "new")


@pytest.mark.parametrize("table, path, reason", [
    ({"name": "web-1"}, "pod.name", "pod 'web-1' already exists"),
    ({"name": "x", "ip": "10.244.1.11"}, "pod.ip", "10.244.1.11 is the address of pod client"),
    ({"name": "x", "ip": "10.244.1.1"}, "pod.ip", "10.244.1.1 is the address of node.gateway"),
    ({"name": "x", "ip": "10.244.1.254"}, "pod.ip", "is the address of host_port.address"),
    ({"name": "x", "ip": "10.9.9.9"}, "pod.ip", "10.9.9.9 is outside node.pod_cidr 10.244.1.0/24"),
    ({"name": "x", "segment": "blue"}, "pod.segment", "unknown segment 'blue'; segments: default"),
    ({"name": "x", "ready": "yes"}, "pod.ready", "expected a boolean, got string"),
    ({"name": "x", "colour": 1}, "pod.colour", "unknown key"),
    ({"name": "host"}, "pod.name", "'host' is reserved"),
    ({"name": "x", "containers": [{"name": "c"}]}, "pod.containers[0].command", "required key is missing"),
    ([], "pod", "expected a table, got array"),
])
def test_parse_pod_errors_carry_pod_key_paths(table, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pod(table, RUNNING, source="pod add")
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"pod add: {path}: ")


def test_fragment_adds_and_replaces_keeping_allocations() -> None:
    text = ('[[pods]]\nname = "web-1"\nlabels = { app = "web", v = "2" }\n'
            '[[pods]]\nname = "web-2"\nlabels = { app = "web" }\n'
            + service('name = "web"', 'selector = { app = "web" }', 'type = "NodePort"',
                      'ports = [ { name = "http", port = 80, target_port = 8080 } ]')
            + service('name = "dns"', 'ports = [ { port = 53, protocol = "udp" } ]'))
    fragment = parse_fragment(text, "f.toml", RUNNING)
    web1, web2 = fragment.pods
    old_web1 = RUNNING.pod("web-1")
    # web-1 keeps its address; web-2 gets the next free one.
    assert web1.ip == old_web1.ip and dict(web1.labels) == {"app": "web", "v": "2"}
    assert web2.ip == IPv4Address("10.244.1.12")
    web, dns = fragment.services
    assert web == RUNNING.services[0]  # unchanged: same cluster IP and node port
    assert dns.cluster_ip == IPv4Address("10.96.0.12")  # after web's .11; .10 is cluster DNS


def test_an_unchanged_pod_compares_equal_after_reparsing() -> None:
    fragment = parse_fragment('[[pods]]\nname = "web-1"\nlabels = { app = "web" }\n', "f", RUNNING)
    assert fragment.pods == (RUNNING.pod("web-1"),)


@pytest.mark.parametrize("text, allowed, replace, path, reason", [
    ('[node]\nname = "x"', ("pods", "services"), True, "node",
     "only [[pods]] and [[services]] can be changed while the node runs"),
    ('[[pods]]\nname = "a"', ("services",), False, "pods", "only [[services]] can be changed"),
    (service('name = "web"', PORT), ("services",), False, "services[0].name",
     "service default/web already exists"),
    (service('name = "x"', 'cluster_ip = "10.96.0.11"', PORT), ("services",), False,
     "services[0].cluster_ip", "10.96.0.11 is already the cluster IP of service default/web"),
    (service('name = "x"', 'cluster_ip = "10.96.0.10"', PORT), ("services",), False,
     "services[0].cluster_ip", "10.96.0.10 is cluster.dns_ip, the address of the cluster DNS"),
    (service('name = "x"', 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30000 } ]'),
     ("services",), False, "services[0].ports[0].node_port",
     "tcp node port 30000 is already used by service default/web"),
    ('[[pods]]\nname = "a"\n[[pods]]\nname = "a"', ("pods",), True, "pods[1].name", "duplicate pod name"),
])
def test_fragment_errors(text, allowed, replace, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fragment(text, "frag.toml", RUNNING, allowed=allowed, replace=replace)
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"frag.toml: {path}: ")


def test_fragment_toml_errors_name_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^frag.toml: invalid TOML"):
        parse_fragment("[[pods]\n", "frag.toml", RUNNING)


def test_service_table_round_trips() -> None:
    for topology in (RUNNING, parse_topology(SERVICES_EXAMPLE)):
        for svc in topology.services:
            fragment = parse_fragment("", "x", dataclasses.replace(topology, services=()))
            assert fragment.services == ()
            again = update_service(svc, {"load_balancer": svc.load_balancer}, topology)
            assert again == svc
            assert service_table(svc)["cluster_ip"] == str(svc.cluster_ip)


def test_update_service_changes_settings_and_swaps_selector_for_endpoints() -> None:
    web = RUNNING.services[0]
    changed = update_service(web, {"session_affinity": "ClientIP", "affinity_timeout": "5",
                                   "endpoints": "10.244.1.30,10.244.1.31"}, RUNNING)
    assert (changed.session_affinity, changed.affinity_timeout) == ("ClientIP", 5)
    assert changed.selector is None
    assert changed.endpoints == (IPv4Address("10.244.1.30"), IPv4Address("10.244.1.31"))
    assert (changed.cluster_ip, changed.ports) == (web.cluster_ip, web.ports)
    back = update_service(changed, {"selector": "app=web,tier=front"}, RUNNING)
    assert dict(back.selector) == {"app": "web", "tier": "front"} and back.endpoints == ()
    cleared = update_service(back, {"selector": ""}, RUNNING)
    assert cleared.selector is None and cleared.endpoints == ()


@pytest.mark.parametrize("settings, path, reason", [
    ({"affinity_timeout": "soon"}, "service.affinity_timeout", "expected an integer, got 'soon'"),
    ({"affinity_timeout": "0"}, "service.affinity_timeout", "must be between 1 and 86400"),
    ({"session_affinity": "Sticky"}, "service.session_affinity", "must be one of 'None', 'ClientIP'"),
    ({"load_balancer": "rr"}, "service.load_balancer", "must be one of 'random', 'maglev'"),
    ({"external_traffic_policy": "x"}, "service.external_traffic_policy", "must be one of"),
    ({"internal_traffic_policy": "x"}, "service.internal_traffic_policy", "must be one of"),
    ({"selector": "app"}, "service.selector", "expected label=value pairs"),
    ({"selector": "-bad=x"}, 'service.selector.-bad', "label key '-bad' is invalid"),
    ({"endpoints": "10.244.1.9,nope"}, "service.endpoints[1]", "'nope' is not an IPv4 address"),
    ({"cluster_ip": "10.96.0.99"}, "service.cluster_ip", "cannot be changed with `service set`"),
    ({}, "", "nothing to set"),
])
def test_update_service_errors(settings, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        update_service(RUNNING.services[0], settings, RUNNING)
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason


def test_control_metrics_address():
    from vswitch.config import ConfigError, parse_topology

    base = '[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\n'
    assert parse_topology(base).control.metrics is None
    topo = parse_topology(base + '[control]\nmetrics = "127.0.0.1:9469"\n', "m.toml")
    assert topo.control.metrics == "127.0.0.1:9469"
    for bad, reason in (("localhost:9469", "not an IPv4 address"), ("127.0.0.1", "HOST:PORT"),
                        ("127.0.0.1:0", "port '0'"), ("127.0.0.1:http", "port 'http'")):
        try:
            parse_topology(base + f'[control]\nmetrics = "{bad}"\n', "m.toml")
        except ConfigError as exc:
            assert "m.toml: control.metrics: " in str(exc) and reason in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")

"""Namespaces: declared in the file, names unique per namespace, kernel names apart, services
selecting their own namespace's pods only, and the control socket finding pods by namespace."""
from __future__ import annotations

import dataclasses
import random
from ipaddress import IPv4Address
from types import MappingProxyType

import pytest

from tests.unit.config_support import NODE, errors_of, only_error
from vswitch import model
from vswitch.config import parse_topology
from vswitch.control.command import ControlError
from vswitch.control import lookup
from vswitch.membership.records import EndpointRecord
from vswitch.model import RemotePod, Service, ServicePort
from vswitch.tables.services import ServiceTable

TWO_NAMESPACES = NODE + """
[[namespaces]]
name = "prod"
labels = { team = "blue" }

[[namespaces]]
name = "dev"

[[pods]]
name = "web"
namespace = "prod"
labels = { app = "web" }

[[pods]]
name = "web"
namespace = "dev"
labels = { app = "web" }

[[pods]]
name = "web"
labels = { app = "web" }
"""


def test_one_name_in_three_namespaces_gives_three_pods_with_their_own_kernel_names():
    topology = parse_topology(TWO_NAMESPACES)
    keys = [pod.key for pod in topology.pods]
    assert keys == ["prod/web", "dev/web", "web"]
    assert [pod.netns for pod in topology.pods] == [
        "vsw-lab1.prod.web", "vsw-lab1.dev.web", "vsw-lab1.default.web"]
    taps = {pod.tap for pod in topology.pods}
    assert len(taps) == 3 and all(len(tap) <= model.IFNAMSIZ for tap in taps)
    assert topology.pod("prod/web").namespace == "prod"


def test_namespaces_carry_their_name_label_and_the_builtin_ones_exist():
    topology = parse_topology(TWO_NAMESPACES)
    assert [n.name for n in topology.namespaces] == ["prod", "dev", "default", "kube-system"]
    assert dict(topology.namespace_labels("prod")) == {
        "team": "blue", "kubernetes.io/metadata.name": "prod"}
    assert dict(topology.namespace_labels("kube-system")) == {
        "kubernetes.io/metadata.name": "kube-system"}


def test_names_are_unique_per_namespace_only():
    text = TWO_NAMESPACES + '[[pods]]\nname = "web"\nnamespace = "dev"\n'
    path, reason = only_error(text)
    assert path == "pods[3].name"
    assert "duplicate pod name 'web' in namespace 'dev' (first used at pods[1].name)" in reason


@pytest.mark.parametrize("entry, path, reason", [
    ('[[pods]]\nname = "a"\nnamespace = "nowhere"\n', "pods[0].namespace",
     "namespace 'nowhere' is not declared in [[namespaces]]"),
    ('[[services]]\nname = "s"\nnamespace = "nowhere"\nports = [ { port = 80 } ]\n',
     "services[0].namespace", "namespace 'nowhere' is not declared"),
    ('[[namespaces]]\nname = "Prod"\n', "namespaces[0].name", "not a DNS-1123 label"),
    ('[[namespaces]]\nname = "a"\n[[namespaces]]\nname = "a"\n', "namespaces[1].name",
     "duplicate namespace 'a' (first declared at namespaces[0].name)"),
    ('[[namespaces]]\nname = "a"\nlabels = { "kubernetes.io/metadata.name" = "b" }\n',
     'namespaces[0].labels."kubernetes.io/metadata.name"', "cannot be given another value"),
    ('[[namespaces]]\nname = "a"\nlabels = { "-x" = "b" }\n', 'namespaces[0].labels.-x',
     "label key '-x' is invalid"),
    ('[[namespaces]]\nname = "a"\ncolour = "red"\n', "namespaces[0].colour", "unknown key"),
])
def test_namespace_mistakes_name_their_key(entry, path, reason):
    errors = errors_of(NODE + entry)
    assert any(p == path and reason in r for p, r in errors), errors


def test_kernel_names_of_two_nodes_never_coincide():
    # With dashes alone, pod "b-c" of node "a" and pod "c" of node "a-b" shared a namespace name.
    assert model.netns_name("a", "default", "b-c") != model.netns_name("a-b", "default", "c")


def pod(name: str, address: str, namespace: str = "default", **labels: str) -> model.Pod:
    ip = IPv4Address(address)
    return model.Pod(name, ip, model.mac_for_ip(ip), model.netns_name("t", namespace, name),
                     model.kernel_name("vsp", "t", namespace, name),
                     MappingProxyType(labels), namespace=namespace)


def test_a_selector_picks_pods_of_its_service_namespace_only():
    pods = [pod("web", "10.244.1.10", "prod", app="web"),
            pod("web", "10.244.1.11", "dev", app="web"),
            pod("web", "10.244.1.12", app="web")]
    remote = RemotePod("n2", "web", IPv4Address("10.244.2.10"), MappingProxyType({"app": "web"}),
                       namespace="prod")
    port = (ServicePort("http", "tcp", 80, 8080),)
    services = [Service("web", "prod", IPv4Address("10.96.0.20"), ports=port,
                        selector=MappingProxyType({"app": "web"})),
                Service("web", "default", IPv4Address("10.96.0.21"), ports=port,
                        selector=MappingProxyType({"app": "web"}))]
    table = ServiceTable(random.Random(1), node_addresses=[])
    table.program(services, [*pods, remote])
    prod = table.match(6, IPv4Address("10.96.0.20").packed, 80)
    default = table.match(6, IPv4Address("10.96.0.21").packed, 80)
    assert [(IPv4Address(b.ip), b.pod) for b in prod.backends] == [
        (IPv4Address("10.244.1.10"), "prod/web"), (IPv4Address("10.244.2.10"), "n2/prod/web")]
    assert [b.pod for b in default.backends] == ["web"]


def test_node_records_carry_the_namespace_and_older_ones_mean_default():
    record = EndpointRecord("web", IPv4Address("10.244.2.10"), {"app": "web"}, {}, "prod")
    assert EndpointRecord.from_data(record.to_dict()).namespace == "prod"
    older = record.to_dict()
    del older["namespace"]
    assert EndpointRecord.from_data(older).namespace == "default"


class Context:
    def __init__(self, topology: model.Topology) -> None:
        self.topology = topology

    def current(self) -> model.Topology:
        return self.topology


def test_a_pod_is_found_by_unique_name_by_key_or_with_its_namespace():
    topology = parse_topology(TWO_NAMESPACES)
    unique = dataclasses.replace(topology, pods=topology.pods + (
        pod("db", "10.244.1.50", "prod"),))
    ctx: object = Context(unique)
    assert lookup.pod(ctx, "db").key == "prod/db"  # type: ignore[arg-type]
    assert lookup.pod(ctx, "prod/web").key == "prod/web"  # type: ignore[arg-type]
    assert lookup.pod(ctx, "web", "dev").key == "dev/web"  # type: ignore[arg-type]
    with pytest.raises(ControlError, match=r"pod 'web' is in several namespaces \(prod/web, "
                                           r"dev/web, default/web\); give the namespace"):
        lookup.pod(ctx, "web")  # type: ignore[arg-type]
    with pytest.raises(ControlError, match="no pod named 'db' in namespace 'dev'"):
        lookup.pod(ctx, "db", "dev")  # type: ignore[arg-type]

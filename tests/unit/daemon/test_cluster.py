"""The node in its cluster, without an etcd: its own record, the store's view into overlay routes
and remote pods (static peers win, bad records refused, leavers withdrawn), the ``nodes`` rows,
and a whole daemon that starts while its store is unreachable."""
from __future__ import annotations

import logging
import random
from ipaddress import IPv4Address, IPv4Network

import trio

from vswitch import accel
from vswitch.config import parse_topology
from vswitch.control.nodes import render_nodes
from vswitch.core.switch import Switch
from vswitch.membership.etcd import KeyValue, Listing, StoreUnavailable
from vswitch.membership.records import EndpointRecord, NodeRecord
from vswitch.model import RemotePod, Topology
from vswitch.runtime.cluster import (ClusterRuntime, cluster_name, lease_pod_cidr, own_record,
                                     remote_pods, store_nodes)
from vswitch.tables.fib import RouteKind
from vswitch.tables.overlay import NodeSource

from .support import Harness, ask

FIELDS = ["name", "pod_cidr", "address", "vtep_mac", "source", "lease_remaining", "state"]


def topology_text(tmp_path, store: str = 'store = "etcd"\n'
                  'etcd_endpoints = ["http://127.0.0.1:9"]\nlease_ttl = 3\n') -> str:
    return (
        '[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\n'
        f'[cluster]\ncidr = "10.244.0.0/16"\n{store}'
        '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.2.1"\n'
        '[overlay]\n'
        '[dataplane]\noffloads = false\naccel = "pure"\n'
        f'[control]\nsocket = "{tmp_path}/ctl/lab1.sock"\nstate_dir = "{tmp_path}"\n'
        '[[peers]]\nname = "lab3"\naddress = "192.0.2.4"\npod_cidr = "10.244.3.0/24"\n'
        '[[pods]]\nname = "web-1"\nlabels = { app = "web" }\n'
        'containers = [ { name = "http", command = ["true"], '
        'ports = [ { name = "http", port = 8080 } ] } ]\n'
        '[[pods]]\nname = "web-2"\nlabels = { app = "web" }\nready = false\n'
        '[[services]]\nname = "web"\nselector = { app = "web" }\n'
        'ports = [ { port = 80, target_port = "http" } ]\n')


def load(tmp_path, **kwargs) -> Topology:
    return parse_topology(topology_text(tmp_path, **kwargs), "lab1.toml")


def record(name: str, cidr: str, address: str, *endpoints: EndpointRecord) -> NodeRecord:
    return NodeRecord(name, IPv4Network(cidr), IPv4Address(address), "0a:58:c0:00:02:09",
                      endpoints)


def web(name: str, ip: str) -> EndpointRecord:
    return EndpointRecord(name, IPv4Address(ip), {"app": "web"}, {"http": ("tcp", 8080)})


class FakeNode:
    """What the cluster runtime uses of the node runtime: its desired state, remote pods."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.remote_pods: tuple[RemotePod, ...] = ()
        self.programs = 0

    def set_remote_pods(self, pods: tuple[RemotePod, ...]) -> None:
        if pods != self.remote_pods:
            self.remote_pods = pods
            self.programs += 1


def runtime(tmp_path) -> tuple[ClusterRuntime, FakeNode, Switch]:
    topology = load(tmp_path)
    switch = Switch(topology, accel=accel.load("pure"))
    node = FakeNode(topology)
    return ClusterRuntime(node, switch, logging.getLogger("vswitchd")), node, switch


def overlay_routes(switch: Switch) -> dict[str, str]:
    return {str(route.prefix): str(route.via) for route in switch.fib.routes()
            if route.kind is RouteKind.OVERLAY}


def test_the_record_publishes_the_ready_pods_with_labels_and_named_ports(tmp_path):
    mine = own_record(load(tmp_path))
    assert (mine.name, str(mine.pod_cidr), str(mine.address)) == ("lab1", "10.244.1.0/24",
                                                                  "192.0.2.2")
    assert mine.vtep_mac == "0a:58:c0:00:02:02"
    assert [(e.name, str(e.ip), dict(e.labels), dict(e.ports)) for e in mine.ready_endpoints] == [
        ("web-1", "10.244.1.10", {"app": "web"}, {"http": ("tcp", 8080)})]
    assert NodeRecord.from_json(mine.to_json()) == mine


def test_the_cluster_lives_under_its_pool_in_the_store(tmp_path):
    cluster = load(tmp_path).cluster
    assert cluster is not None
    assert cluster_name(cluster) == "10.244.0.0-16"


def test_a_static_peer_wins_over_a_store_record_of_its_name():
    view = {"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3"),
            "lab3": record("lab3", "10.244.9.0/24", "192.0.2.9")}
    nodes, shadowed = store_nodes(view, ["lab3"])
    assert [(n.name, str(n.pod_cidr), n.source) for n in nodes] == [
        ("lab2", "10.244.2.0/24", NodeSource.STORE)]
    assert shadowed == ["lab3"]


def test_remote_pods_are_the_routed_nodes_ready_pods_inside_their_pod_cidr():
    view = {"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3", web("web-9", "10.244.2.10"),
                           web("stray", "10.244.1.10")),
            "lab4": record("lab4", "10.244.4.0/24", "192.0.2.5", web("web-4", "10.244.4.10"))}
    pods = remote_pods(view, ["lab2"])
    assert [(p.node, p.name, str(p.ip), dict(p.labels), dict(p.named_ports()), p.ready)
            for p in pods] == [("lab2", "web-9", "10.244.2.10", {"app": "web"},
                                {"http": ("tcp", 8080)}, True)]


def test_the_view_becomes_routes_and_remote_endpoints(tmp_path, caplog):
    cluster, node, switch = runtime(tmp_path)
    assert overlay_routes(switch) == {"10.244.3.0/24": "192.0.2.4"}  # the static peer
    view = {"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3", web("web-9", "10.244.2.10")),
            "lab3": record("lab3", "10.244.8.0/24", "192.0.2.8")}
    with caplog.at_level(logging.INFO, "vswitchd"):
        change = cluster.apply(view)
    assert change.added == ("lab2",)
    assert overlay_routes(switch) == {"10.244.2.0/24": "192.0.2.3", "10.244.3.0/24": "192.0.2.4"}
    assert [(p.node, p.name) for p in node.remote_pods] == [("lab2", "web-9")]
    assert "node lab3 is a static peer and also in the store" in caplog.text
    assert "node lab2 routed (store): pod CIDR 10.244.2.0/24 via 192.0.2.3" in caplog.text

    # The service now has endpoints on both nodes when the node runtime programs them.
    switch.programming.program(node.topology.pods + node.remote_pods, node.topology.services, 0.0)
    assert sorted(row["backend"] for row in switch.services.endpoints_info()) == [
        "10.244.1.10:8080", "10.244.2.10:8080"]

    # The same view again changes nothing and programs nothing.
    assert not cluster.apply(view)
    assert node.programs == 1


def test_a_record_that_overlaps_is_refused_and_a_leaver_withdrawn(tmp_path, caplog):
    cluster, node, switch = runtime(tmp_path)
    cluster.apply({"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3",
                                  web("web-9", "10.244.2.10"))})
    with caplog.at_level(logging.INFO, "vswitchd"):
        change = cluster.apply({"lab5": record("lab5", "10.244.1.0/25", "192.0.2.6")})
    assert change.removed == ("lab2",)
    assert change.refused == (("lab5", "its pod CIDR 10.244.1.0/25 overlaps this node's "
                                       "10.244.1.0/24"),)
    assert overlay_routes(switch) == {"10.244.3.0/24": "192.0.2.4"}
    assert node.remote_pods == ()
    assert "node lab2 withdrawn" in caplog.text
    assert "node lab5 refused: its pod CIDR" in caplog.text


async def test_nodes_rows_name_every_node_with_its_source_and_state(tmp_path):
    cluster, node, switch = runtime(tmp_path)
    cluster.apply({"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3")})
    cluster.apply({"lab5": record("lab5", "10.244.1.0/25", "192.0.2.6")})
    rows = await cluster.rows()
    assert all(list(row) == FIELDS for row in rows)
    assert rows == [
        {"name": "lab1", "pod_cidr": "10.244.1.0/24", "address": "192.0.2.2",
         "vtep_mac": "0a:58:c0:00:02:02", "source": "self", "lease_remaining": None,
         "state": "ready"},
        {"name": "lab2", "pod_cidr": "10.244.2.0/24", "address": "192.0.2.3",
         "vtep_mac": "0a:58:c0:00:02:09", "source": "store", "lease_remaining": None,
         "state": "withdrawn"},
        {"name": "lab3", "pod_cidr": "10.244.3.0/24", "address": "192.0.2.4",
         "vtep_mac": "0a:58:c0:00:02:04", "source": "static", "lease_remaining": None,
         "state": "ready"},
        {"name": "lab5", "pod_cidr": "10.244.1.0/25", "address": "192.0.2.6",
         "vtep_mac": "0a:58:c0:00:02:09", "source": "store", "lease_remaining": None,
         "state": "refused: its pod CIDR 10.244.1.0/25 overlaps this node's 10.244.1.0/24"}]
    # A withdrawn node that comes back is listed once, routed again.
    cluster.apply({"lab2": record("lab2", "10.244.2.0/24", "192.0.2.3")})
    states = {row["name"]: row["state"] for row in await cluster.rows()}
    assert states == {"lab1": "ready", "lab2": "ready", "lab3": "ready"}

    text = render_nodes(rows).splitlines()
    assert text[0].split() == ["NAME", "SOURCE", "POD", "CIDR", "ADDRESS", "VTEP", "MAC",
                               "LEASE", "S", "STATE"]
    assert text[1].split() == ["lab1", "self", "10.244.1.0/24", "192.0.2.2",
                               "0a:58:c0:00:02:02", "-", "ready"]
    assert text[4].split()[:7] == ["lab5", "store", "10.244.1.0/25", "192.0.2.6",
                                   "0a:58:c0:00:02:09", "-", "refused:"]


async def test_a_node_starts_while_its_store_is_unreachable_and_keeps_its_static_peers(
        tmp_path, log_watch):
    harness = Harness(load(tmp_path))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        await log_watch.wait_for("cluster: cannot reach etcd http://127.0.0.1:9")
        answer = await ask(path, "nodes")
        assert answer["ok"], answer
        assert [(r["name"], r["source"], r["state"]) for r in answer["result"]] == [
            ("lab1", "self", "ready"), ("lab3", "static", "ready")]
        assert overlay_routes(harness.switch) == {"10.244.3.0/24": "192.0.2.4"}
        nursery.cancel_scope.cancel()


async def test_a_node_without_a_store_lists_itself_and_its_peers(tmp_path):
    harness = Harness(load(tmp_path, store=""))
    path = harness.topology.control.socket
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        answer = await ask(path, "nodes")
        assert [(r["name"], r["source"], r["state"], r["lease_remaining"])
                for r in answer["result"]] == [("lab1", "self", "ready", None),
                                               ("lab3", "static", "ready", None)]
        nursery.cancel_scope.cancel()


class FlakyStore:
    """Just enough of EtcdClient for subnet leasing: unreachable ``outages`` times, then a store
    of keys (no leases kept: a key remembers the lease it was written under)."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.keys: dict[str, tuple[bytes, int]] = {}
        self.leases = 0

    def __call__(self, endpoints):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        return None

    async def grant_lease(self, ttl: int) -> tuple[int, int]:
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("connection refused")
        self.leases += 1
        return self.leases, ttl

    async def list_prefix(self, prefix: str) -> Listing:
        return Listing(1, tuple(KeyValue(k, v, 1, 1, lease) for k, (v, lease)
                                in self.keys.items() if k.startswith(prefix)))

    async def put_if_absent(self, key: str, value: bytes, *, lease: int = 0) -> bool:
        if key in self.keys:
            return False
        self.keys[key] = (value, lease)
        return True


async def test_an_auto_subnet_is_leased_once_the_store_answers(tmp_path, autojump_clock):
    text = topology_text(tmp_path).replace('pod_cidr = "10.244.1.0/24"', 'pod_cidr = "auto"')
    text = text.replace('[[peers]]\nname = "lab3"\naddress = "192.0.2.4"\n'
                        'pod_cidr = "10.244.3.0/24"\n', '')
    topology = parse_topology(text, "lab1.toml")
    store = FlakyStore(outages=2)
    subnet, lease = await lease_pod_cidr(topology, logging.getLogger("vswitchd"),
                                         client_factory=store, rng=random.Random(1))
    assert (subnet.prefixlen, subnet.subnet_of(IPv4Network("10.244.0.0/16")), lease) == (
        24, True, 1)
    assert store.keys == {f"/vswitch/10.244.0.0-16/subnets/{subnet.network_address}-24":
                          (b"lab1", 1)}
    # The same node asking again (a restart) gets the same subnet back.
    again, _ = await lease_pod_cidr(topology, logging.getLogger("vswitchd"),
                                    client_factory=FlakyStore(0), rng=random.Random(1))
    assert again == subnet

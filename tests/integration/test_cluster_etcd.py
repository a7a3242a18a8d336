"""Several vswitchd processes in one cluster through a real etcd: they list and route each other,
a newcomer is routed within a second, a killed node is withdrawn within its lease TTL, routes
stay while etcd is away and what changed meanwhile is caught up, and ``pod_cidr = "auto"`` gives
nodes that start together different subnets, the same one again after a restart.

Each node has its own uplink namespace: the control plane is under test here, not forwarding
across the underlay, so no shared bridge is needed. Host ports are off, so that nothing of these
nodes lands in the root namespace.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import Callable, Iterator

import pytest
import trio
from pyroute2 import netns

sys.path.insert(0, str(Path(__file__).parent))

from etcd_support import EtcdServer, running_etcd  # noqa: E402
from harness import (  # noqa: E402
    Daemon,
    PodSpec,
    UplinkSpec,
    cleanup_node,
    expected_devices,
    random_pod_cidr,
    random_uplink_network,
)

from vswitch.membership.etcd import EtcdClient  # noqa: E402
from vswitch.membership.members import nodes_prefix  # noqa: E402
from vswitch.membership.records import NodeRecord  # noqa: E402

pytestmark = pytest.mark.integration

TTL = 3
# etcd checks lease expiry about twice a second; a watcher hears of it a moment later.
EXPIRY_SLACK = 1.5
# A membership that lost etcd retries with a backoff capped at 10 s.
CATCH_UP = 15.0
POOL_SUPERNET = IPv4Network("10.200.0.0/13")  # every pod CIDR the harness picks lies in it
CLUSTER = "10.200.0.0-13"  # the store's name of a cluster with that pool


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    yield from running_etcd()


@pytest.fixture
def uplink_namespaces() -> Iterator[list[str]]:
    """Uplink namespaces the daemons create; whatever a killed daemon left is removed at the end
    (requested before ``make_daemon``, so it is torn down after the daemons stopped)."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            if name in netns.listnetns():
                netns.remove(name)


class Lab:
    """Builds cluster nodes: the harness's node files plus an uplink, an overlay and the store."""

    def __init__(self, make_daemon: Callable[..., Daemon], etcd: EtcdServer,
                 namespaces: list[str]) -> None:
        self.make_daemon = make_daemon
        self.etcd = etcd
        self.namespaces = namespaces
        self.uplinks: list[IPv4Network] = []

    def node(self, *, auto_pool: IPv4Network | None = None, start: bool = True) -> Daemon:
        daemon = self.make_daemon((PodSpec("web"),), start=False, host_port=False,
                                  offloads=False)
        network = random_uplink_network(self.uplinks)
        self.uplinks.append(network)
        namespace = f"ul-{daemon.spec.name}"  # not "vsw-": that prefix is for pods
        self.namespaces.append(namespace)
        uplink = UplinkSpec(network, namespace)
        # The overlay's MTU is the uplink's less 50; the pods' network must fit in it.
        daemon.update_spec(uplink=uplink, mtu=1450)
        text = daemon.spec.render().replace(
            f'gateway = "{uplink.gateway}"', f'gateway = "{uplink.gateway}"\nmtu = 1500')
        pool = POOL_SUPERNET
        if auto_pool is not None:
            text = text.replace(f'pod_cidr = "{daemon.spec.pod_cidr}"', 'pod_cidr = "auto"')
            pool = auto_pool
        text += (f'\n[overlay]\n\n[cluster]\ncidr = "{pool}"\nstore = "etcd"\n'
                 f'etcd_endpoints = ["{self.etcd.endpoint}"]\nlease_ttl = {TTL}\n')
        daemon.config_path.write_text(text)
        daemon.known_taps.update(expected_devices(daemon.config_path))
        if start:
            daemon.start()
        return daemon


@pytest.fixture
def lab(uplink_namespaces, make_daemon, etcd) -> Lab:
    return Lab(make_daemon, etcd, uplink_namespaces)


def nodes_of(daemon: Daemon) -> dict[str, dict]:
    rows = daemon.ctl("nodes")
    return {row["name"]: row for row in rows}


def overlay_routes(daemon: Daemon) -> dict[str, str]:
    return {row["prefix"]: row["via"] for row in daemon.ctl("routes")
            if row["kind"] == "overlay"}


def self_row(daemon: Daemon) -> dict:
    rows = [row for row in daemon.ctl("nodes") if row["source"] == "self"]
    assert len(rows) == 1, rows
    return rows[0]


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               daemons: tuple[Daemon, ...] = ()) -> float:
    """Poll ``check`` until it holds; seconds it took. Fails with the daemons' logs."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            logs = "\n\n".join(f"--- {d.spec.name}:\n{d.log()[-3000:]}" for d in daemons)
            raise AssertionError(f"not within {timeout} s: {what}\n{logs}")
        time.sleep(0.1)
    return time.monotonic() - started


def log_time(daemon: Daemon, text: str) -> datetime | None:
    """When the daemon first logged a line containing ``text`` (its log's timestamps)."""
    for line in daemon.log().splitlines():
        if text in line:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return None


def routed_everywhere(daemons: tuple[Daemon, ...]) -> bool:
    """Every node lists every other as a ready store node and routes its pod CIDR to it."""
    cidrs = {d.spec.name: self_row(d)["pod_cidr"] for d in daemons}
    for daemon in daemons:
        rows = nodes_of(daemon)
        others = {name for name in cidrs if name != daemon.spec.name}
        if not all(rows.get(name, {}).get("state") == "ready" for name in others):
            return False
        if {cidrs[name] for name in others} - set(overlay_routes(daemon)):
            return False
    return True


def stored_record(endpoint: str, node: str) -> NodeRecord | None:
    async def read() -> NodeRecord | None:
        async with EtcdClient([endpoint]) as client:
            listing = await client.list_prefix(nodes_prefix(CLUSTER) + node)
        for kv in listing.kvs:
            if kv.key == nodes_prefix(CLUSTER) + node:
                return NodeRecord.from_json(kv.value)
        return None

    return trio.run(read)


def test_nodes_see_each_other_a_newcomer_is_routed_at_once_and_a_dead_one_withdrawn(lab):
    first = (lab.node(), lab.node(), lab.node())
    wait_until(lambda: routed_everywhere(first), 5, "three nodes route each other", first)

    # What each node lists: itself, then the others from the store with their leases.
    a, b, c = first
    rows = nodes_of(a)
    assert set(rows) == {d.spec.name for d in first}
    me = rows[a.spec.name]
    assert (me["source"], me["state"], me["pod_cidr"]) == ("self", "ready",
                                                          str(a.spec.pod_cidr))
    assert me["address"] == str(a.spec.uplink.address)
    for other in (b, c):
        row = rows[other.spec.name]
        assert list(row) == ["name", "pod_cidr", "address", "vtep_mac", "source",
                             "lease_remaining", "state"]
        assert (row["source"], row["state"], row["pod_cidr"], row["address"]) == (
            "store", "ready", str(other.spec.pod_cidr), str(other.spec.uplink.address))
        assert 0 < row["lease_remaining"] <= TTL
        assert overlay_routes(a)[str(other.spec.pod_cidr)] == str(other.spec.uplink.address)
    text = a.ctl("nodes", json=False)
    assert "STATE" in text and b.spec.name in text

    # A fourth node: routed by every other node within a second of joining the store.
    d = lab.node()
    wait_until(lambda: routed_everywhere(first + (d,)), 5, "the fourth node is routed",
               first + (d,))
    joined = log_time(d, "cluster: joined etcd")
    assert joined is not None, d.log()
    for daemon in first:
        routed = log_time(daemon, f"cluster: node {d.spec.name} routed (store)")
        assert routed is not None, daemon.log()
        assert (routed - joined).total_seconds() < 1.0, (joined, routed)

    # SIGKILL one: its lease expires, every other node withdraws it within the TTL.
    b.kill()
    killed = time.monotonic()
    rest = (a, c, d)
    wait_until(lambda: all(nodes_of(x)[b.spec.name]["state"] == "withdrawn" for x in rest),
               TTL + EXPIRY_SLACK + 1.0, "the killed node is withdrawn", rest)
    assert time.monotonic() - killed < TTL + EXPIRY_SLACK + 1.0
    for daemon in rest:
        assert str(b.spec.pod_cidr) not in overlay_routes(daemon)
        assert f"cluster: node {b.spec.name} withdrawn" in daemon.log()
    cleanup_node(b)  # what a killed daemon leaves behind is the test's to remove


def test_routes_stay_while_etcd_is_away_and_what_changed_meanwhile_is_caught_up(lab):
    a, b, c = lab.node(), lab.node(), lab.node()
    nodes = (a, b, c)
    wait_until(lambda: routed_everywhere(nodes), 5, "three nodes route each other", nodes)
    before = {d.spec.name: overlay_routes(d) for d in nodes}
    assert [e.name for e in stored_record(lab.etcd.endpoint, a.spec.name).ready_endpoints] == [
        "web"]

    lab.etcd.stop()
    time.sleep(TTL + EXPIRY_SLACK)  # longer than any lease: nothing is withdrawn all the same
    assert {d.spec.name: overlay_routes(d) for d in nodes} == before
    assert all(row["state"] == "ready" for d in nodes for row in nodes_of(d).values())
    # Meanwhile: c stops (it cannot revoke its lease), a's pod leaves its services, and a new
    # node starts without the store.
    c.stop()
    a.ctl("pod", "unready", "web")
    newcomer = lab.node()
    assert overlay_routes(a) == before[a.spec.name]

    lab.etcd.start()
    now = (a, b, newcomer)
    wait_until(lambda: routed_everywhere(now), CATCH_UP, "the newcomer is routed", now)
    wait_until(lambda: all(nodes_of(d).get(c.spec.name, {}).get("state") == "withdrawn"
                           for d in (a, b)),
               CATCH_UP + TTL + EXPIRY_SLACK, "the stopped node is withdrawn", (a, b))
    assert str(c.spec.pod_cidr) not in overlay_routes(b)
    wait_until(lambda: stored_record(lab.etcd.endpoint, a.spec.name).ready_endpoints == (),
               CATCH_UP, "a's record no longer lists its unready pod", (a,))


def test_auto_pod_cidrs_differ_between_nodes_and_survive_a_restart(lab):
    pool = random_pod_cidr().supernet(new_prefix=22)
    first, second = lab.node(auto_pool=pool, start=False), lab.node(auto_pool=pool, start=False)
    for daemon in (first, second):
        daemon.start(wait=False)
    for daemon in (first, second):
        daemon.wait_ready()
    leased = {d.spec.name: IPv4Network(self_row(d)["pod_cidr"]) for d in (first, second)}
    assert len(set(leased.values())) == 2, leased
    assert all(cidr.prefixlen == 24 and cidr.subnet_of(pool) for cidr in leased.values())
    wait_until(lambda: routed_everywhere((first, second)), 5, "the two nodes route each other",
               (first, second))
    assert overlay_routes(first) == {str(leased[second.spec.name]):
                                     str(second.spec.uplink.address)}

    for daemon in (first, second):
        daemon.stop()
        daemon.start()
        assert IPv4Network(self_row(daemon)["pod_cidr"]) == leased[daemon.spec.name]
    wait_until(lambda: routed_everywhere((first, second)), 5, "routed again after restarts",
               (first, second))
    held = trio.run(_subnet_holders, lab.etcd.endpoint, pool)
    assert held == {str(cidr): name for name, cidr in leased.items()}


async def _subnet_holders(endpoint: str, pool: IPv4Network) -> dict[str, str]:
    """The subnets of the pool held in the store, and by which node."""
    from vswitch.membership.subnets import subnets_prefix

    cluster = f"{pool.network_address}-{pool.prefixlen}"
    async with EtcdClient([endpoint]) as client:
        listing = await client.list_prefix(subnets_prefix(cluster))
    holders = {}
    for kv in listing.kvs:
        network, _, length = kv.key.rpartition("/")[2].partition("-")
        holders[f"{network}/{length}"] = kv.value.decode()
    return holders


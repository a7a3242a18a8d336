"""Several vswitchd nodes on one host, sharing one L2 underlay: the harness of cross-node tests.

A ``Lab`` plans N nodes before any of them starts, so that each node's file can name the others
(static peers, remote endpoints): every node gets a random name, its own pod CIDR (the i-th /24 of
a random /20 inside the test supernet, ``Lab.cluster_cidr``), its own control socket, and an
uplink into the same underlay: a random /24 of the uplink supernet whose gateway (.1) is a Linux
bridge in a namespace, both with random names, node i (from 0) at .(i+2). The nodes share one state
directory, because that is where the daemons coordinate the shared namespace and bridge.

The topology writer renders the ordinary node file of ``harness.NodeSpec``, then the ``[uplink]``
section with ``bridge``, then the extra TOML a test gives per node (``[overlay]``, ``[[peers]]``,
``[cluster]``, services...): a string per node, or a function of the planned ``LabNode`` that
returns it, which sees every other node through ``LabNode.lab``.

``lab_factory`` (the body of a test module's ``make_lab`` fixture) removes everything also when a
test fails: the daemons (stopped, then cleaned like ``make_daemon``'s), the underlay namespace
(whoever created it: its name is the test's own) and the socket directories. When the test
passed, anything a daemon's own shutdown left behind fails it, including an underlay namespace
or bridge that the daemons created and should have removed when the last of them stopped, and
any file left in the shared state directory.
"""
from __future__ import annotations

import contextlib
import json
import random
import secrets
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
from pyroute2 import IPRoute, netns

from harness import (NETNS_DIR, PING_SCRIPT, PYTHON, TEST_SUPERNET, Daemon, Leftovers, NodeSpec,
                     PodSpec, _root_networks, cleanup_node, expected_devices,
                     random_uplink_network, unique_node_name)

CLUSTER_PREFIX = 20  # room for 16 nodes' /24s
NODE_PREFIX = 24

ExtraToml = str | Callable[["LabNode"], str] | None


def random_cluster_cidr() -> IPv4Network:
    """A /20 of the test supernet that nothing of the root namespace overlaps."""
    taken = _root_networks()
    blocks = list(TEST_SUPERNET.subnets(new_prefix=CLUSTER_PREFIX))
    for _ in range(64):
        candidate = random.choice(blocks)
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise RuntimeError(f"no free /{CLUSTER_PREFIX} in {TEST_SUPERNET}")


def random_underlay_names() -> tuple[str, str]:
    """The underlay's namespace (not ``vsw-``, which pods own) and bridge (fits IFNAMSIZ)."""
    token = secrets.token_hex(3)
    return f"ul-{token}", f"ulbr-{token}"


@dataclass(frozen=True)
class Underlay:
    """The L2 network the nodes' uplinks share: gateway .1 on the bridge, node i at .(i+2)."""

    network: IPv4Network
    netns: str
    bridge: str

    @property
    def gateway(self) -> IPv4Address:
        return self.network.network_address + 1

    def address(self, index: int) -> IPv4Address:
        return self.network.network_address + index + 2

    def create(self) -> None:
        """Make the namespace and the bridge as a user would, before any daemon runs."""
        netns.create(self.netns)
        with IPRoute(netns=self.netns, flags=0) as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            index = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.link("set", index=index, state="up")

    def exists(self) -> bool:
        return self.netns in netns.listnetns()

    def bridge_exists(self) -> bool:
        if not self.exists():
            return False
        with IPRoute(netns=self.netns, flags=0) as ipr:
            return bool(ipr.link_lookup(ifname=self.bridge))

    def bridge_ports(self) -> list[str]:
        with IPRoute(netns=self.netns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=self.bridge)[0]
            return sorted(link.get("IFLA_IFNAME") for link in ipr.get_links()
                          if link.get("IFLA_MASTER") == index)

    def bridge_addresses(self) -> list[str]:
        with IPRoute(netns=self.netns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=self.bridge)[0]
            return [f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}"
                    for msg in ipr.get_addr(family=2, index=index)]

    def ping(self, *targets: str, timeout: float = 2.0) -> dict[str, float | None]:
        """Ping from the underlay namespace (the gateway's side): target -> RTT or None."""
        result = subprocess.run(
            ["nsenter", f"--net={NETNS_DIR / self.netns}", PYTHON, PING_SCRIPT, str(timeout),
             *targets], capture_output=True, text=True, timeout=timeout * len(targets) + 30,
            check=True)
        return json.loads(result.stdout)

    def remove(self) -> None:
        """Remove the namespace by force (its bridge and whatever else goes with it)."""
        if not self.exists():
            return
        from vswitch.runtime.netns import kill_netns_processes

        kill_netns_processes(self.netns)
        try:
            netns.remove(self.netns)
        except FileNotFoundError:
            pass


@dataclass
class LabNode:
    """One planned node of a lab: its facts are known before any daemon starts."""

    lab: "Lab"
    index: int
    daemon: Daemon

    @property
    def spec(self) -> NodeSpec:
        return self.daemon.spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pod_cidr(self) -> IPv4Network:
        return self.spec.pod_cidr

    @property
    def address(self) -> IPv4Address:
        """The node's underlay (uplink) address."""
        return self.lab.underlay.address(self.index)

    @property
    def socket(self) -> str:
        return self.spec.socket

    def pod_ips(self) -> dict[str, IPv4Address]:
        return self.spec.pod_ips()

    def render(self, extra: str) -> str:
        underlay = self.lab.underlay

        def q(value: str) -> str:
            return json.dumps(value)

        uplink = "\n".join([
            "[uplink]",
            f"address = {q(f'{self.address}/{underlay.network.prefixlen}')}",
            f"gateway = {q(str(underlay.gateway))}",
            f"netns = {q(underlay.netns)}",
            f"bridge = {q(underlay.bridge)}",
        ])
        text = self.spec.render() + "\n" + uplink + "\n"
        return text + ("\n" + extra.rstrip("\n") + "\n" if extra else "")


@dataclass
class Lab:
    """N planned nodes on one underlay; ``start``/``stop`` drive their daemons."""

    workdir: Path
    underlay: Underlay
    cluster_cidr: IPv4Network
    state_dir: Path
    nodes: list[LabNode] = field(default_factory=list)
    underlay_was_there: bool = False  # created by the test, not by the daemons

    def __getitem__(self, index: int) -> LabNode:
        return self.nodes[index]

    def write_configs(self, extra: Sequence[ExtraToml] | ExtraToml = None) -> None:
        """(Re)write every node's file; ``extra`` is one value for all nodes or one per node."""
        extras = (list(extra) if isinstance(extra, (list, tuple))
                  else [extra] * len(self.nodes))
        assert len(extras) == len(self.nodes), "one extra TOML per node"
        for node, item in zip(self.nodes, extras):
            text = item(node) if callable(item) else (item or "")
            node.daemon.config_path.write_text(node.render(text))
            node.daemon.known_taps.update(expected_devices(node.daemon.config_path))

    def create_underlay(self) -> None:
        """Make the namespace and bridge beforehand, as a user's: the daemons must keep them."""
        self.underlay.create()
        self.underlay_was_there = True

    def start(self, indices: Sequence[int] | None = None, *, together: bool = False) -> None:
        """Start the nodes (all by default), one after the other or all at the same moment."""
        chosen = [self.nodes[i] for i in (range(len(self.nodes)) if indices is None else indices)]
        for node in chosen:
            node.daemon.start(wait=not together)
        if together:
            for node in chosen:
                node.daemon.wait_ready()

    def stop(self, index: int) -> int | None:
        return self.nodes[index].daemon.stop()

    def cleanup(self) -> list[tuple[str, Leftovers]]:
        """Stop and clean every node, then remove the underlay; return each node's leftovers."""
        leftovers = [(node.name, cleanup_node(node.daemon)) for node in self.nodes]
        self.underlay.remove()
        return leftovers


def plan_lab(workdir: Path, count: int, pods: Sequence[PodSpec] | Sequence[Sequence[PodSpec]] = (),
             *, offloads: bool = True, host_port: bool = True) -> Lab:
    """Plan ``count`` nodes (names, CIDRs, sockets, files) without starting anything.

    ``pods`` is one pod list for every node, or one list per node.
    """
    cluster = random_cluster_cidr()
    network = random_uplink_network([cluster])
    netns_name, bridge = random_underlay_names()
    state_dir = workdir / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    lab = Lab(workdir=workdir, underlay=Underlay(network, netns_name, bridge),
              cluster_cidr=cluster, state_dir=state_dir)
    per_node = (list(pods) if pods and not isinstance(pods[0], PodSpec)
                else [tuple(pods)] * count)
    assert len(per_node) == count, "one pod list per node"
    cidrs = list(cluster.subnets(new_prefix=NODE_PREFIX))
    for index in range(count):
        name = unique_node_name()
        node_dir = workdir / f"node{index}"
        node_dir.mkdir()
        socket_path = node_dir / "ctl.sock"
        if len(str(socket_path)) > 100:
            # Removed by harness.cleanup_node, which knows this place.
            short = Path("/tmp") / f"vsw-{name}"
            short.mkdir(mode=0o700, exist_ok=True)
            socket_path = short / "ctl.sock"
        spec = NodeSpec(name=name, pod_cidr=cidrs[index], pods=tuple(per_node[index]),
                        socket=str(socket_path), state_dir=str(state_dir), host_port=host_port,
                        offloads=offloads)
        lab.nodes.append(LabNode(lab=lab, index=index, daemon=Daemon(spec, node_dir)))
    lab.write_configs()
    return lab


def call_phase_passed(request: pytest.FixtureRequest) -> bool:
    """Whether the test that ``request`` belongs to passed (conftest keeps the reports)."""
    report = getattr(request.node, "report_call", None)
    return report is not None and report.passed


LabFactory = Callable[..., Lab]


@contextlib.contextmanager
def lab_factory(workdir: Path, passed: Callable[[], bool]) -> Iterator[LabFactory]:
    """Plan labs (``factory(count, pods, extra=...)``) that are always removed on the way out.

    Nothing starts until the test calls ``lab.start()``, so that it can create the underlay
    beforehand or start the nodes together. A test module wraps this in its fixture::

        @pytest.fixture
        def make_lab(netns_environment, tmp_path, request):
            with lab_factory(tmp_path, lambda: call_phase_passed(request)) as factory:
                yield factory

    When ``passed()``, anything the daemons' own shutdown left behind fails the test.
    """
    labs: list[Lab] = []

    def factory(count: int, pods: Sequence = (), *, extra: Sequence[ExtraToml] | ExtraToml = None,
                offloads: bool = True, host_port: bool = True) -> Lab:
        lab = plan_lab(workdir / f"lab{len(labs)}", count, pods, offloads=offloads,
                       host_port=host_port)
        labs.append(lab)
        if extra is not None:
            lab.write_configs(extra)
        return lab

    try:
        yield factory
    finally:
        problems = []
        for lab in labs:
            for node in lab.nodes:
                node.daemon.stop()
            state = sorted(path.name for path in lab.state_dir.iterdir())
            if (lab.underlay.exists() and not lab.underlay_was_there) or state:
                problems.append(f"underlay {lab.underlay} or state files {state} left")
            problems += [f"{name}: {left}" for name, left in lab.cleanup() if left]
    if problems and passed():
        pytest.fail("the lab's daemons left objects behind: " + "; ".join(problems))

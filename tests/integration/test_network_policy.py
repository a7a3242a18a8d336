"""End to end: NetworkPolicy enforced by vswitchd on real kernel TCP and UDP, as probe matrices.

One daemon (``node``, once per datapath) with the upstream e2e suite's model: namespaces x, y
and z labelled ``ns=<name>``, each with pods a, b and c labelled ``pod=<name>``, every pod
running the echo server on TCP and UDP ports 80 and 81 (container ports named
``serve-80-tcp`` and so on) and a sink on TCP 7000, plus a ClusterIP service ``x/web`` in
front of x/a alone. Each case adds one policy at runtime, has every pod try TCP and UDP to every
other (all probes at once, one second each), compares the result with a hand-written truth
table, and removes the policy again; a failure prints the probed table with the wrong cells
marked. Denied packets are dropped silently, so a denial shows as a timeout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterator, Mapping

import pytest

from harness import (DATAPATHS, NETNS_DIR, PYTHON, Daemon, NodeSpec, cleanup_node, program,
                     terminate)
from services_support import ECHO_SERVER, inline_table, make_service_node, q

pytestmark = pytest.mark.integration

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{pod}" for ns in NAMESPACES for pod in POD_NAMES)
PROTOCOLS = ("tcp", "udp")
SINK_PORT = 7000
PROBE_TIMEOUT = 1.0
PROBE = program("policy_probe")
HELD_CONNECTION = program("held_connection")
# The one pod behind the service x/web; it alone carries the label the service selects, which
# no policy looks at.
SERVICE_BACKEND = "x/a"

Table = dict[tuple[str, str], bool]


def pod_name(pod: str) -> str:
    """The model's pod "x/a" is pod "a" of namespace "x" on the node, as in the upstream suite:
    the same three names in each of the three namespaces. Policies select by the ``pod`` label."""
    return pod.split("/")[1]


# -- the node ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyNodeSpec(NodeSpec):
    """A harness node with ``[[namespaces]]``, the nine pods of the model and one service."""

    service_cidr: IPv4Network | None = None

    def address(self, pod: str) -> IPv4Address:
        ns, name = pod.split("/")
        return self.pod_cidr.network_address + 10 * (NAMESPACES.index(ns) + 1) + \
            POD_NAMES.index(name) + 1

    @property
    def service_ip(self) -> IPv4Address:
        assert self.service_cidr is not None
        return self.service_cidr.network_address + 20  # +10 is the cluster DNS address

    def pod_netns(self, pod: str) -> str:
        ns, _ = pod.split("/")
        return f"vsw-{self.name}.{ns}.{pod_name(pod)}"

    def render(self) -> str:
        lines = [NodeSpec.render(dataclasses.replace(self, pods=())).rstrip("\n"), "",
                 "[cluster]", f"cidr = {q(str(self.pod_cidr))}",
                 f"service_cidr = {q(str(self.service_cidr))}"]
        for ns in NAMESPACES:
            lines += ["", "[[namespaces]]", f"name = {q(ns)}", f"labels = {{ ns = {q(ns)} }}"]
        ports = [{"name": f"serve-{port}-{proto}", "port": port, "protocol": proto}
                 for port in (80, 81) for proto in PROTOCOLS]
        for pod in PODS:
            ns, name = pod.split("/")
            server = [PYTHON, ECHO_SERVER, pod, "tcp:80", "udp:80", "tcp:81", "udp:81",
                      f"sink:{SINK_PORT}"]
            container = inline_table({"name": "serve", "command": server, "ports": ports})
            labels = {"pod": name, **({"service": "web"} if pod == SERVICE_BACKEND else {})}
            lines += ["", "[[pods]]", f"name = {q(pod_name(pod))}", f"namespace = {q(ns)}",
                      f"ip = {q(str(self.address(pod)))}", f"labels = {inline_table(labels)}",
                      f"containers = [ {container} ]"]
        lines += ["", "[[services]]", 'name = "web"', 'namespace = "x"',
                  f"cluster_ip = {q(str(self.service_ip))}", 'selector = { service = "web" }',
                  'ports = [ { name = "http", port = 80 }, '
                  '{ name = "dns", port = 80, protocol = "udp" } ]']
        return "\n".join(lines) + "\n"


class PolicyNode:
    """The daemon, its pods, and the probes run in them."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.spec: PolicyNodeSpec = daemon.spec  # type: ignore[assignment]

    def ip(self, pod: str) -> str:
        return str(self.spec.address(pod))

    def argv_in(self, pod: str, *argv: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.spec.pod_netns(pod)}", *argv]

    def probe_row(self, pod: str, targets: list[str]) -> dict[str, bool]:
        result = subprocess.run(self.argv_in(pod, PYTHON, PROBE, str(PROBE_TIMEOUT), *targets),
                                capture_output=True, text=True, timeout=30, check=True)
        return json.loads(result.stdout)

    def probe(self, *services: tuple[str, int]) -> dict[tuple[str, int], Table]:
        """Every pod to every other pod's (protocol, port) ``services``, all at once (one probe
        program per pod); loopback is never probed."""
        def target(protocol: str, port: int, dst: str) -> str:
            return f"{protocol}:{self.ip(dst)}:{port}"

        def row(src: str) -> dict[str, bool]:
            return self.probe_row(src, [target(protocol, port, dst) for protocol, port in services
                                        for dst in PODS if dst != src])

        with ThreadPoolExecutor(len(PODS)) as pool:
            rows = dict(zip(PODS, pool.map(row, PODS)))
        return {(protocol, port): {(src, dst): rows[src][target(protocol, port, dst)]
                                   for src in PODS for dst in PODS if dst != src}
                for protocol, port in services}

    def add_policy(self, policy: Mapping[str, Any]) -> None:
        self.daemon.ctl("policy", "add", "--json-policy", json.dumps(policy), json=False)

    def delete_policy(self, key: str) -> None:
        self.daemon.ctl("policy", "del", key, json=False)

    def policies(self) -> list[dict]:
        listing = self.daemon.ctl("policy", "list")
        return listing["policies"] if isinstance(listing, dict) else listing


@pytest.fixture(scope="module", params=DATAPATHS)
def node(netns_environment: None, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[PolicyNode]:
    workdir = tmp_path_factory.mktemp("policy-node")
    base = make_service_node(workdir, uplink=False)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(NodeSpec)}
    spec = PolicyNodeSpec(**{**fields, "accel": request.param}, service_cidr=base.service_cidr)
    daemon = Daemon(spec, workdir)
    policy_node = PolicyNode(daemon)
    try:
        daemon.start()
        wait_until_everything_connects(policy_node)
        yield policy_node
    finally:
        leftovers = cleanup_node(daemon)
    assert not leftovers, f"the daemon left kernel objects or processes behind: {leftovers}"


def wait_until_everything_connects(node: PolicyNode, timeout: float = 20.0) -> None:
    """The servers start with their pods; without a policy every probe must come to answer."""
    deadline = time.monotonic() + timeout
    while True:
        tables = node.probe(*((protocol, 80) for protocol in PROTOCOLS))
        if all(all(cells.values()) for cells in tables.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for (protocol, _), cells in tables.items():
        assert all(cells.values()), (f"without policies some pods cannot reach others over "
                                     f"{protocol}:\n" + grid(cells, ALL_CONNECT))


# -- truth tables --------------------------------------------------------------------------------

def reachability(default: bool, *expectations: tuple[str, str, bool]) -> Table:
    """A truth table as upstream's ``Reachability`` builds it: ``default`` everywhere, then each
    (from, to, allowed) in order, where a side is "x/a", "x/*" or "*/a"."""
    cells = {(src, dst): default for src in PODS for dst in PODS if src != dst}
    for src_pattern, dst_pattern, allowed in expectations:
        for src, dst in cells:
            if re.fullmatch(src_pattern.replace("*", "."), src) and re.fullmatch(
                    dst_pattern.replace("*", "."), dst):
                cells[src, dst] = allowed
    return cells


ALL_CONNECT = reachability(True)


def grid(cells: Table, expected: Table) -> str:
    """The probed table (rows: from, columns: to); ``!`` marks a cell that differs."""
    lines = ["      " + " ".join(f"{dst:>4}" for dst in PODS)]
    for src in PODS:
        row = ["   -" if src == dst else
               f"  {'!' if cells[src, dst] != expected[src, dst] else ' '}"
               f"{'.' if cells[src, dst] else 'X'}" for dst in PODS]
        lines.append(f"{src:>5} " + " ".join(row))
    return "\n".join(lines)


def check_matrix(node: PolicyNode, expected: Mapping[tuple[str, int], Table]) -> None:
    """Probe each (protocol, port) at once and compare; every mismatching table is shown."""
    probed = node.probe(*expected)
    failures = [f"{protocol} port {port} ('!' marks a wrong cell):\n"
                + grid(probed[protocol, port], table)
                for (protocol, port), table in expected.items() if probed[protocol, port] != table]
    assert not failures, "\n\n".join(failures)


def both_protocols(table: Table, port: int = 80) -> dict[tuple[str, int], Table]:
    return {(protocol, port): table for protocol in PROTOCOLS}


@contextlib.contextmanager
def applied(node: PolicyNode, *policies: Mapping[str, Any]) -> Iterator[None]:
    """The policies added for the body of the ``with``, and removed after it, whatever happens."""
    added = []
    try:
        for policy in policies:
            node.add_policy(policy)
            added.append(f"{policy.get('namespace', 'default')}/{policy['name']}")
        yield
    finally:
        for key in added:
            node.delete_policy(key)


# -- the cases -----------------------------------------------------------------------------------

def test_default_deny_ingress(node: PolicyNode) -> None:
    with applied(node, {"name": "deny-ingress", "namespace": "x", "pod_selector": {}}):
        # Replies from x pass: x/a's connections to y are tracked, so y's answers come back.
        check_matrix(node, both_protocols(reachability(True, ("*/*", "x/*", False))))
        (listed,) = node.policies()
        assert (listed["policy"], listed["pods"]) == ("x/deny-ingress", 3)
        assert listed["drops"] >= 2 * 24, listed  # 24 denied pairs, TCP and UDP, retries too
    check_matrix(node, both_protocols(ALL_CONNECT))


def test_allow_from_a_namespace(node: PolicyNode) -> None:
    policy = {"name": "allow-y", "namespace": "x", "pod_selector": {"pod": "a"},
              "ingress": [{"from": [{"namespace_selector": {"ns": "y"}}]}]}
    with applied(node, policy):
        check_matrix(node, both_protocols(reachability(
            True, ("*/*", "x/a", False), ("y/*", "x/a", True))))
        # Through the service, the backend x/a is judged after DNAT.
        service = f"{node.spec.service_ip}"
        for pod, allowed in (("y/b", True), ("z/b", False), ("x/c", False)):
            row = node.probe_row(pod, [f"{protocol}:{service}:80" for protocol in PROTOCOLS])
            assert row == {f"{protocol}:{service}:80": allowed for protocol in PROTOCOLS}, pod


def test_pod_and_namespace_selectors_together(node: PolicyNode) -> None:
    policy = {"name": "b-elsewhere", "namespace": "x", "pod_selector": {"pod": "a"},
              "ingress": [{"from": [{
                  "namespace_selector": {"match_expressions": [
                      {"key": "ns", "operator": "In", "values": ["y", "z"]}]},
                  "pod_selector": {"pod": "b"}}]}]}
    with applied(node, policy):
        check_matrix(node, both_protocols(reachability(
            True, ("*/*", "x/a", False), ("y/b", "x/a", True), ("z/b", "x/a", True))))


def test_default_deny_egress(node: PolicyNode) -> None:
    policy = {"name": "deny-egress", "namespace": "z", "policy_types": ["Egress"]}
    with applied(node, policy):
        check_matrix(node, both_protocols(reachability(True, ("z/*", "*/*", False))))


def test_ip_block_with_except(node: PolicyNode) -> None:
    policy = {"name": "block", "namespace": "x", "pod_selector": {"pod": "a"},
              "ingress": [{"from": [{"ip_block": {
                  "cidr": str(node.spec.pod_cidr), "except": [f"{node.ip('y/a')}/32"]}}]}]}
    with applied(node, policy):
        check_matrix(node, both_protocols(reachability(True, ("y/a", "x/a", False))))


def test_a_named_port(node: PolicyNode) -> None:
    policy = {"name": "named", "namespace": "x", "pod_selector": {"pod": "a"},
              "ingress": [{"ports": [{"port": "serve-81-tcp"},
                                     {"protocol": "UDP", "port": "serve-80-udp"}]}]}
    closed = reachability(True, ("*/*", "x/a", False))
    with applied(node, policy):
        check_matrix(node, {("tcp", 81): ALL_CONNECT, ("udp", 80): ALL_CONNECT,
                            ("tcp", 80): closed, ("udp", 81): closed})


def test_a_new_policy_cuts_an_established_connection(node: PolicyNode) -> None:
    """Two connections to x/b's sink are open when a policy admitting only x's pods arrives:
    the one from y/a is cut (its packets are dropped from then on), the one from x/c lives.
    y/a's egress is selected by a policy admitting everything, so its connection is tracked
    before the change, and the change removes it from the connection table (counted)."""
    held = {}
    open_egress = {"name": "open-egress", "namespace": "y", "pod_selector": {"pod": "a"},
                   "policy_types": ["Egress"], "egress": [{}]}
    only_x = {"name": "only-x", "namespace": "x", "pod_selector": {"pod": "b"},
              "ingress": [{"from": [{"pod_selector": {}}]}]}
    try:
        with applied(node, open_egress):
            for pod in ("y/a", "x/c"):
                held[pod] = subprocess.Popen(
                    node.argv_in(pod, PYTHON, HELD_CONNECTION, node.ip("x/b"), str(SINK_PORT),
                                 "2"),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert held[pod].stdout.readline().startswith("x/b "), pod
            with applied(node, only_x):
                for proc in held.values():
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                answers = {pod: json.loads(proc.stdout.readline()) for pod, proc in held.items()}
                listed = {entry["policy"]: entry for entry in node.policies()}
        assert answers["x/c"]["error"] is None and '"bytes": 13' in answers["x/c"]["answer"]
        assert answers["y/a"] == {"answer": None, "error": "timeout"}
        assert listed["x/only-x"]["cuts"] >= 1, listed
    finally:
        for proc in held.values():
            terminate(proc)

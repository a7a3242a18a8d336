"""End to end: Kubernetes services through vswitchd, with real kernel TCP and UDP in pods.

One daemon serves the module (``node``): a segment on a random /24 with these pods, each running
the echo server of ``services_support`` as its container:

- ``web-1``, ``web-2`` (app=web): TCP and UDP on 8080, a stream sink on 7000;
- ``web-3`` (app=multi): TCP on 8080, 9090 (container port named ``admin``) and 5300, UDP on 5301;
- ``stream-1``, ``stream-2`` (app=stream) and ``cycle-a`` (app=cycle), which the churn tests
  remove, so that no other test depends on them;
- ``client``, with no container: the tests run their clients in it.

The services, on a random /24 service CIDR, each belong to one test (see ``SERVICES``). The
uplink is a third random /24 whose far side is the namespace ``vsi-<node>``, created by the
daemon: the "internet", where an echo server listens on TCP 8080.

A full conntrack table needs ``[cluster] conntrack_max`` at its minimum, which would put every
other test at the mercy of evictions; that test has a node of its own (``small_table``).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from harness import DATAPATHS, Daemon, read_line, terminate
from services_support import (
    FIXED_PORT_UDP,
    FLOOD_UDP,
    HAIRPIN_ADDRESS,
    REFUSAL,
    REORDERED_UDP,
    REQUESTS,
    STREAM,
    Answer,
    ServiceNode,
    ServiceNodeSpec,
    ServicePodSpec,
    make_service_node,
    finish_stream,
    parse_answers,
    service_port,
)

pytestmark = pytest.mark.integration

NODE_PORT = 30080
WEB_REQUESTS = 40
AFFINITY_RUN = 15  # the e2e affinity checker's "15 answers in a row from one backend"
SHORT_AFFINITY = 1  # seconds, the smallest timeout the config accepts


def web_services(spec: ServiceNodeSpec) -> tuple[dict, ...]:
    """Explicit cluster IPs (service CIDR + 20 upwards; + 10 is the cluster DNS address) except
    ``empty``'s, which is allocated, and one explicit node port, the other allocated: both ways
    of the config are exercised."""
    web = {"app": "web"}
    return (
        {"name": "web", "cluster_ip": spec.cluster_ip(20), "selector": web,
         "ports": [service_port("http", "tcp", 80, 8080), service_port("hold", "tcp", 7000, 7000)]},
        {"name": "multi", "cluster_ip": spec.cluster_ip(21), "selector": {"app": "multi"},
         "ports": [service_port("http", "tcp", 80, 8080),
                   service_port("admin", "tcp", 81, "admin"),
                   service_port("dns-tcp", "tcp", 53, 5300),
                   service_port("dns-udp", "udp", 53, 5301),
                   service_port("closed", "tcp", 82, 5999)]},  # nothing listens on 5999
        {"name": "empty", "selector": {"app": "nobody"},
         "ports": [service_port("http", "tcp", 80, 8080), service_port("dns", "udp", 53, 8080)]},
        {"name": "sticky", "cluster_ip": spec.cluster_ip(23), "selector": web,
         "session_affinity": "ClientIP", "ports": [service_port("http", "tcp", 80, 8080)]},
        {"name": "brief", "cluster_ip": spec.cluster_ip(24), "selector": web,
         "session_affinity": "ClientIP", "affinity_timeout": SHORT_AFFINITY,
         "ports": [service_port("http", "tcp", 80, 8080)]},
        {"name": "stream", "cluster_ip": spec.cluster_ip(25), "selector": {"app": "stream"},
         "ports": [service_port("data", "tcp", 7000, 7000)]},
        {"name": "cycle", "cluster_ip": spec.cluster_ip(26), "selector": {"app": "cycle"},
         "ports": [service_port("dns", "udp", 53, 8080)]},
        {"name": "np-cluster", "cluster_ip": spec.cluster_ip(27), "selector": web,
         "type": "NodePort", "external_traffic_policy": "Cluster",
         "ports": [service_port("http", "tcp", 80, 8080, node_port=NODE_PORT)]},
        {"name": "np-local", "cluster_ip": spec.cluster_ip(28), "selector": web,
         "type": "NodePort", "external_traffic_policy": "Local",
         "ports": [service_port("http", "tcp", 80, 8080)]},
    )


@pytest.fixture(scope="module", params=DATAPATHS)
def node(netns_environment: None, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[ServiceNode]:
    workdir = tmp_path_factory.mktemp("services-node")
    spec = dataclasses.replace(make_service_node(workdir), accel=request.param)
    service_node = ServiceNode(Daemon(spec, workdir))
    server = service_node.server_command
    web = ("tcp:8080", "udp:8080", "sink:7000")
    pods = (
        ServicePodSpec("web-1", labels={"app": "web"},
                       containers=(("srv", server("web-1", *web)),)),
        ServicePodSpec("web-2", labels={"app": "web"},
                       containers=(("srv", server("web-2", *web)),)),
        ServicePodSpec("web-3", labels={"app": "multi"}, ports={"admin": ("tcp", 9090)},
                       containers=(("srv", server("web-3", "tcp:8080", "tcp:9090", "tcp:5300",
                                                  "udp:5301")),)),
        ServicePodSpec("stream-1", labels={"app": "stream"},
                       containers=(("srv", server("stream-1", "sink:7000")),)),
        ServicePodSpec("stream-2", labels={"app": "stream"},
                       containers=(("srv", server("stream-2", "sink:7000")),)),
        ServicePodSpec("cycle-a", labels={"app": "cycle"},
                       containers=(("srv", server("cycle-a", "udp:8080")),)),
        ServicePodSpec("client"),
    )
    daemon = service_node.daemon
    daemon.update_spec(pods=pods, services=web_services(spec))
    problems: list[str] = []
    try:
        daemon.start()
        service_node.start_internet_server("tcp:8080")
        service_node.wait_for_servers([
            ("web-1", "tcp", 8080), ("web-2", "tcp", 8080), ("web-1", "udp", 8080),
            ("web-2", "udp", 8080), ("web-3", "tcp", 8080), ("web-3", "tcp", 9090),
            ("web-3", "tcp", 5300), ("web-3", "udp", 5301), ("stream-1", "tcp", 7000),
            ("stream-2", "tcp", 7000), ("cycle-a", "udp", 8080),
        ])
        yield service_node
    finally:
        problems = service_node.close()
    if problems:
        pytest.fail(f"the services node left things behind: {problems}")


def vip(node: ServiceNode, service: str) -> str:
    return node.service(service)["cluster_ip"]


def names(answers: list[Answer]) -> Counter:
    return Counter(answer.name for answer in answers)


# ---------------------------------------------------------------------------------------------
# ClusterIP
# ---------------------------------------------------------------------------------------------


def test_all_backends_answer_and_see_the_client_pod_ip(node: ServiceNode) -> None:
    answers = node.requests("client", "tcp", vip(node, "web"), 80, WEB_REQUESTS)
    assert set(names(answers)) == {"web-1", "web-2"}, names(answers)
    assert {a.peer_ip for a in answers} == {node.ip("client")}, "the backend must see the pod IP"
    assert {(a.proto, a.port) for a in answers} == {("tcp", 8080)}
    udp = node.requests("client", "udp", vip(node, "multi"), 53, 3)
    assert {a.peer_ip for a in udp} == {node.ip("client")}


def test_multiport_and_tcp_and_udp_on_one_port_reach_their_own_targets(node: ServiceNode) -> None:
    address = vip(node, "multi")
    seen = {}
    for proto, port in (("tcp", 80), ("tcp", 81), ("tcp", 53), ("udp", 53)):
        (answer,) = node.requests("client", proto, address, port, 1)
        assert answer.name == "web-3"
        seen[proto, port] = (answer.proto, answer.port)
    assert seen == {
        ("tcp", 80): ("tcp", 8080),
        ("tcp", 81): ("tcp", 9090),  # target_port "admin", web-3's named container port
        ("tcp", 53): ("tcp", 5300),
        ("udp", 53): ("udp", 5301),
    }


def test_a_datagram_whose_fragments_arrive_in_reverse_order_reaches_its_backend(
        node: ServiceNode) -> None:
    """The later fragment comes first and carries no port: it waits in the switch until the
    first fragment has chosen the backend, then follows it. The backend's kernel reassembles the
    datagram (it would drop a fragment with the wrong addresses) and answers the client."""
    held_before = node.ctl("stats")["fragments_held"]["held"]
    result = node.run_in("client", REORDERED_UDP, vip(node, "multi"), 53, 2400)
    assert result["answer"] is not None, result
    name, peer, served = result["answer"].split()
    assert (name, peer, served) == ("web-3", f"{node.ip('client')}:{result['sport']}", "udp:5301")
    stats = node.ctl("stats")["fragments_held"]
    assert stats["held"] == held_before + 1 and stats["waiting_frames"] == 0, stats


def test_hairpin_a_backend_reaches_its_own_service(node: ServiceNode) -> None:
    """Every request succeeds; the ones web-1 answers itself arrive from the hairpin address
    (so its reply comes back through the switch), the others from web-1's own IP."""
    answers = node.requests("web-1", "tcp", vip(node, "web"), 80, 30)
    by_name = names(answers)
    assert by_name["web-1"] > 0 and by_name["web-2"] > 0, by_name
    assert {a.peer_ip for a in answers if a.name == "web-1"} == {HAIRPIN_ADDRESS}
    assert {a.peer_ip for a in answers if a.name == "web-2"} == {node.ip("web-1")}


def test_no_endpoints_refuses_tcp_and_udp_within_a_second(node: ServiceNode) -> None:
    row = node.service("empty")
    assert row["endpoints"] == 0 and row["cluster_ip"], row
    for proto, port in (("tcp", 80), ("udp", 53)):
        result = node.run_in("client", REFUSAL, proto, row["cluster_ip"], port, 3)
        assert result["error"] == "ECONNREFUSED", (proto, result)
        assert result["elapsed"] < 1.0, (proto, result)


def test_a_backend_that_refuses_leaves_no_connection_behind(node: ServiceNode) -> None:
    """The backend's kernel answers the SYN with a RST: the client sees the refusal at once and,
    as with Linux conntrack, the entry of a connection whose only answer was a RST is gone."""
    address = vip(node, "multi")
    for _ in range(3):
        result = node.run_in("client", REFUSAL, "tcp", address, 82, 3)
        assert result["error"] == "ECONNREFUSED" and result["elapsed"] < 1.0, result
    assert node.conntrack(service="multi", dport="82") == []
    stats = node.conntrack_stats()
    assert stats["aborted"] >= 3, stats


# ---------------------------------------------------------------------------------------------
# Session affinity
# ---------------------------------------------------------------------------------------------


def test_client_ip_affinity_pins_and_switching_it_off_spreads(node: ServiceNode) -> None:
    address = vip(node, "sticky")
    answers = node.requests("client", "tcp", address, 80, AFFINITY_RUN)
    pinned = set(names(answers))
    assert len(pinned) == 1, f"{AFFINITY_RUN} answers came from {names(answers)}"
    rows = [r for r in node.ctl("affinity") if "sticky" in r["service"]]
    assert [(r["client"], r["pod"]) for r in rows] == [(node.ip("client"), pinned.pop())]

    node.ctl("service", "set", "sticky", "session_affinity=None")
    assert node.service("sticky")["affinity"]["mode"] == "None"
    spread = node.requests("client", "tcp", address, 80, WEB_REQUESTS)
    assert set(names(spread)) == {"web-1", "web-2"}, names(spread)
    assert not [r for r in node.ctl("affinity") if "sticky" in r["service"]]


def test_client_ip_affinity_expires_after_its_timeout(node: ServiceNode) -> None:
    """Connections closer together than the timeout stay pinned, for longer than the timeout
    in total; after a pause longer than it, the entry is gone and the choice is free again.

    A free choice lands on the pinned backend again half of the time, so pauses are repeated
    until another backend answers (12 tries: a false failure once in 4,096 runs).
    """
    address = vip(node, "brief")
    steady = node.requests("client", "tcp", address, 80, 10, pause=SHORT_AFFINITY * 0.3)
    assert len(names(steady)) == 1, f"answers within the timeout moved: {names(steady)}"
    pinned = steady[0].name
    time.sleep(SHORT_AFFINITY + 0.5)
    assert not [r for r in node.ctl("affinity") if "brief" in r["service"]]
    seen = []
    for _ in range(12):
        (answer,) = node.requests("client", "tcp", address, 80, 1)
        seen.append(answer.name)
        if answer.name != pinned:
            break
        time.sleep(SHORT_AFFINITY + 0.3)
    assert seen[-1] != pinned, f"pinned to {pinned} across {len(seen)} expiries"


# ---------------------------------------------------------------------------------------------
# Endpoint churn
# ---------------------------------------------------------------------------------------------


def test_removing_the_other_endpoint_leaves_a_running_stream_intact(node: ServiceNode) -> None:
    client = node.popen_in("client", STREAM, vip(node, "stream"), 7000, 3.0)
    try:
        greeting = Answer.parse(read_line(client, timeout=15))
        other = "stream-2" if greeting.name == "stream-1" else "stream-1"
        time.sleep(0.5)  # the stream is flowing
        node.ctl("pod", "del", other)
        out, err = client.communicate(timeout=60)
    finally:
        terminate(client)
    assert client.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["sent"] > 1 << 20, result
    assert result["sink"] == {"bytes": result["sent"], "sha256": result["sha256"]}
    assert {row["pod"] for row in node.endpoints("stream")} == {greeting.name}
    after = node.requests("client", "tcp", vip(node, "stream"), 7000, 5)
    assert set(names(after)) == {greeting.name}


def test_fixed_port_udp_client_follows_a_replaced_backend(node: ServiceNode) -> None:
    """The kube-proxy stale-UDP-conntrack scenario: cycle-a goes, cycle-b comes (first unready,
    then ready); a client that never changes its source port must reach cycle-b at once, although
    its datagrams kept arriving (and were refused) while the service had no endpoint."""
    address = vip(node, "cycle")
    client = node.popen_in("client", FIXED_PORT_UDP, address, 53, 40053, 60, 0.05,
                           stdin=subprocess.PIPE)
    try:
        assert read_line(client) == "started"
        time.sleep(1.0)
        command = " ".join(node.server_command("cycle-b", "udp:8080"))
        node.ctl("pod", "add", "cycle-b", "--label", "app=cycle", "--unready",
                 "--container", f"srv={command}")
        node.wait_for_servers([("cycle-b", "udp", 8080)])
        removing = time.time()
        node.ctl("pod", "del", "cycle-a")
        removed = time.time()
        time.sleep(0.5)  # no endpoint at all: the client's datagrams are refused meanwhile
        readied = time.time()
        node.ctl("pod", "ready", "cycle-b")
        time.sleep(2.5)
        assert client.stdin is not None
        client.stdin.write("stop\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=30)
    finally:
        terminate(client)
    assert client.returncode == 0, err
    events = [(t, Answer.parse(text).name) for t, text in json.loads(out)["events"]]
    before = [name for t, name in events if t < removing]
    assert before and set(before) == {"cycle-a"}, Counter(before)
    assert not [t for t, name in events if name == "cycle-a" and t > removed]
    assert not [t for t, name in events if name == "cycle-b" and t < readied]
    first_b = next((t for t, name in events if name == "cycle-b"), None)
    assert first_b is not None, f"cycle-b never answered; last events: {events[-5:]}"
    assert first_b - readied < 2.0, f"cycle-b answered {first_b - readied:.2f} s after ready"
    # From then on the client stays with cycle-b: one datagram every 50 ms, nearly all answered.
    later = [name for t, name in events if t > first_b]
    assert set(later) == {"cycle-b"} and len(later) >= 20, Counter(later)


# ---------------------------------------------------------------------------------------------
# Internet to service, and egress
# ---------------------------------------------------------------------------------------------


def test_node_port_cluster_policy_snats_to_the_node_address(node: ServiceNode) -> None:
    spec = node.spec
    result = node.run_in_internet(REQUESTS, "tcp", spec.node_address, NODE_PORT, 20, 5)
    answers = parse_answers(result)
    assert set(names(answers)) == {"web-1", "web-2"}, names(answers)
    assert {a.peer_ip for a in answers} == {str(spec.node_address)}


def test_node_port_local_policy_keeps_the_client_address(node: ServiceNode) -> None:
    spec = node.spec
    (port,) = node.service("np-local")["ports"]
    node_port = port["node_port"]
    assert 30000 <= node_port <= 32767 and node_port != NODE_PORT
    answers = parse_answers(node.run_in_internet(REQUESTS, "tcp", spec.node_address, node_port,
                                                 10, 5))
    assert set(names(answers)) <= {"web-1", "web-2"}
    assert {a.peer_ip for a in answers} == {str(spec.internet_address)}


def test_pod_egress_is_masqueraded_to_the_node_address(node: ServiceNode) -> None:
    spec = node.spec
    answers = node.requests("client", "tcp", str(spec.internet_address), 8080, 3)
    assert {a.name for a in answers} == {"internet"}
    assert {a.peer_ip for a in answers} == {str(spec.node_address)}
    rows = node.conntrack(dst=str(spec.internet_address))
    assert rows and {row["snat"]["ip"] for row in rows} == {str(spec.node_address)}, rows


# ---------------------------------------------------------------------------------------------
# vswitchctl
# ---------------------------------------------------------------------------------------------


def test_ctl_services_and_endpoints(node: ServiceNode) -> None:
    web = node.service("web")
    assert web["cluster_ip"] == node.spec.cluster_ip(20)
    assert web["endpoints"] == 2
    assert {(p["name"], p["protocol"], p["port"], p["target_port"], p["endpoints"])
            for p in web["ports"]} == {("http", "tcp", 80, 8080, 2), ("hold", "tcp", 7000, 7000, 2)}
    rows = [r for r in node.endpoints("web") if r["port"] == "http"]
    assert {(r["pod"], r["backend"]) for r in rows} == {
        ("web-1", f"{node.ip('web-1')}:8080"), ("web-2", f"{node.ip('web-2')}:8080")}
    text = node.ctl("services", json=False)
    assert "web" in text and node.spec.cluster_ip(20) in text
    assert node.ip("web-1") in node.ctl("endpoints", json=False)


def test_ctl_conntrack_shows_states_after_traffic(node: ServiceNode) -> None:
    address = vip(node, "web")
    held = node.popen_in("client", STREAM, address, 7000, -1, stdin=subprocess.PIPE)
    try:
        greeting = Answer.parse(read_line(held, timeout=15))
        backend = node.ip(greeting.name)
        (entry,) = node.conntrack(service="web", dport="7000", state="ESTABLISHED")
        assert entry["original"]["src"] == node.ip("client")
        assert entry["original"]["dst"] == address
        assert entry["dnat"] == {"ip": backend, "port": 7000}
        assert entry["replied"] is True
        assert node.ip("client") in node.ctl("conntrack", "--filter", "service=web", json=False)
        # A packet of this connection, traced, meets its conntrack entry.
        sport = entry["original"]["sport"]
        trace = node.ctl("trace", "client", f"tcp {node.ip('client')}:{sport} > {address}:7000 "
                                            "flags A", json=False)
        assert "ESTABLISHED" in trace, trace
        result = finish_stream(held)
    finally:
        terminate(held)
    assert result["sink"]["sha256"] == result["sha256"]
    states = {row["state"] for row in node.conntrack(service="web", dport="7000")}
    assert states and states <= {"TIME_WAIT", "CLOSE"}, states

    node.requests("client", "udp", vip(node, "multi"), 53, 1)
    udp = node.conntrack(service="multi", proto="udp")
    assert udp and all(row["replied"] for row in udp), udp


def test_trace_names_the_service_and_the_endpoint_choice(node: ServiceNode) -> None:
    address = vip(node, "web")
    # A source port outside the kernel's ephemeral range (32768-60999), so no earlier connection
    # of the client's own can hold this tuple.
    packet = f"tcp {node.ip('client')}:61000 > {address}:80 flags S"
    document = node.ctl("trace", "client", packet)
    notes = [stage["note"] for stage in document["stages"] if stage["stage"] == "ip4-service"]
    backends = [f"{node.ip(pod)}:8080" for pod in ("web-1", "web-2")]
    assert any("service default/web port http" in note and "2 ready backend" in note
               and all(b in note for b in backends) for note in notes), notes
    assert any("DNAT" in note and any(b in note for b in backends) for note in notes), notes
    text = node.ctl("trace", "client", packet, json=False)
    assert "default/web" in text and "DNAT" in text, text


# ---------------------------------------------------------------------------------------------
# A full conntrack table
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_table(netns_environment: None, tmp_path: Path) -> Iterator[ServiceNode]:
    """A node whose conntrack table holds the minimum the config allows, without an uplink."""
    from vswitch.config import CONNTRACK_MAX_MIN

    spec = make_service_node(tmp_path, uplink=False, conntrack_max=CONNTRACK_MAX_MIN)
    node = ServiceNode(Daemon(spec, tmp_path))
    node.daemon.update_spec(
        pods=(
            ServicePodSpec("echo", labels={"app": "echo"}, containers=(
                ("srv", node.server_command("echo", "tcp:8080", "udp:8080", "sink:7000",
                                            "mute:9000")),)),
            ServicePodSpec("client"),
        ),
        services=(
            {"name": "echo", "cluster_ip": spec.cluster_ip(20), "selector": {"app": "echo"},
             "ports": [service_port("http", "tcp", 80, 8080), service_port("dns", "udp", 53, 8080),
                       service_port("data", "tcp", 7000, 7000),
                       service_port("mute", "udp", 9000, 9000)]},
        ),
    )
    problems: list[str] = []
    try:
        node.daemon.start()
        node.wait_for_servers([("echo", "tcp", 8080), ("echo", "udp", 8080)])
        yield node
    finally:
        problems = node.close()
    if problems:
        pytest.fail(f"the small-table node left things behind: {problems}")


def test_a_full_conntrack_table_evicts_unreplied_entries_and_counts(
        small_table: ServiceNode) -> None:
    """More unreplied UDP flows than the table holds: the oldest unreplied ones are evicted and
    counted, an established TCP connection made before them survives, and new flows work."""
    node = small_table
    address = node.spec.cluster_ip(20)
    limit = node.conntrack_stats()["max"]
    held = node.popen_in("client", STREAM, address, 7000, -1, stdin=subprocess.PIPE)
    try:
        read_line(held, timeout=15)
        flood = node.run_in("client", FLOOD_UDP, address, 9000, limit + 300)
        assert flood["flows"] == limit + 300
        stats = node.conntrack_stats()
        # Every flow reached the table; what did not fit was evicted, not refused.
        assert stats["created"] >= limit + 300, stats
        assert stats["entries"] == limit, stats
        assert stats["evictions"] == stats["created"] - limit > 0, stats
        assert stats["drops_full"] == 0, stats
        assert stats["tcp_states"]["ESTABLISHED"] == 1, stats
        result = finish_stream(held)
    finally:
        terminate(held)
    assert result["sink"] == {"bytes": result["sent"], "sha256": result["sha256"]}
    assert node.requests("client", "tcp", address, 80, 3)[0].name == "echo"
    assert node.requests("client", "udp", address, 53, 3)[0].name == "echo"
    assert node.conntrack_stats()["evictions"] >= stats["evictions"]

"""End to end: one malicious pod floods its switch while a well-behaved pair keeps streaming.

One daemon serves the module (``node``), with three pods on one segment:

- ``server``: an echo server (a sink on 7000, one-line answers on 8080) and an iperf3 server,
  behind the ClusterIP service ``sink`` (7000, 80 -> 8080, 5201);
- ``client``: the innocent side; it holds a connection to the sink through the ClusterIP for
  the whole module, and measures its throughput with short iperf3 runs through the ClusterIP;
- ``attacker``: sends hand-built frames through an AF_PACKET raw socket (``raw_flood.py``), as
  fast as one Python process manages, for a few seconds per attack.

Each attack is one test: an iperf3 run without the attack, then one while the attack runs, on
the same node and the same path, so that the pass mark (the attacked run keeps more than half of
the throughput) is relative to this machine at this moment and not to a figure written down
here. After each attack the daemon must still run, every table within its limit (learned MACs,
connections, held fragments, neighbours), and the frames sent must show up in the switch's
counters under the reason the attack expects. A frame the attacker's send accepted may still be
dropped by the pod's kernel before the daemon reads it (the TAP's queue is full while the daemon
is busy, or while the datapath does not read the port because it holds its share of the queue
to the pipeline): the accounting adds those, which the pod's interface counts as ``tx_dropped``.

The connection table is set to its smallest size (``conntrack_max = 1024``) so that the SYN
flood fills it many times over: the held connection of ``client`` is established, and must
survive every eviction the flood causes.

Virtio-net headers cannot be forged from here: a pod's kernel builds the header the daemon reads
from an skb it validated itself. Bogus headers are tested where they can arrive, in
``tests/unit/test_adversarial_vnet.py``.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from typing import Any, Iterator

import pytest

from harness import NETNS_DIR, PYTHON, Daemon, flatten_numbers, mac_for, program
from services_support import (
    STREAM,
    ServiceNode,
    ServicePodSpec,
    finish_stream,
    make_service_node,
    service_port,
)

pytestmark = [pytest.mark.integration, pytest.mark.measured]

RAW_FLOOD = program("raw_flood")
CONNTRACK_MAX = 1024  # the smallest the config accepts: the SYN flood overflows it
MAC_LIMIT = 64  # the [dataplane] default
IPERF_PORT = 5201
IPERF_SECONDS = 3
ATTACK_SECONDS = IPERF_SECONDS + 0.5  # the attack covers the whole attacked run
MIN_RATIO = 0.5
FLOOR_RATIO = 0.2  # below this the stream has all but stopped: a failure on any machine
MAX_HELD_FRAMES = 256  # tables/fragments.py


@pytest.fixture(scope="module")
def node(netns_environment: None, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[ServiceNode]:
    workdir = tmp_path_factory.mktemp("adversarial-node")
    spec = make_service_node(workdir, uplink=False, conntrack_max=CONNTRACK_MAX)
    service_node = ServiceNode(Daemon(spec, workdir))
    labels = {"app": "sink"}
    pods = (
        ServicePodSpec("server", labels=labels, containers=(
            ("srv", service_node.server_command("server", "sink:7000", "tcp:8080")),)),
        ServicePodSpec("client"),
        ServicePodSpec("attacker"),
    )
    services = ({"name": "sink", "cluster_ip": spec.cluster_ip(20), "selector": labels,
                 "ports": [service_port("data", "tcp", 7000, 7000),
                           service_port("http", "tcp", 80, 8080),
                           service_port("iperf", "tcp", IPERF_PORT, IPERF_PORT)]},)
    service_node.daemon.update_spec(pods=pods, services=services)
    try:
        service_node.daemon.start()
        service_node.wait_for_servers([("server", "tcp", 7000), ("server", "tcp", 8080)])
        service_node.serve_iperf("server", IPERF_PORT)
        yield service_node
    finally:
        problems = service_node.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def held(node: ServiceNode) -> Iterator[subprocess.Popen]:
    """An established connection of ``client`` through the ClusterIP, idle for the module."""
    proc = node.popen_in("client", STREAM, node.spec.cluster_ip(20), 7000, -1,
                         stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        greeting = proc.stdout.readline()
        assert greeting.startswith("server "), greeting
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def iperf_start(node: ServiceNode) -> subprocess.Popen:
    return node.daemon.popen_in(
        "client", "iperf3", "-c", node.spec.cluster_ip(20), "-p", str(IPERF_PORT),
        "-t", str(IPERF_SECONDS), "-J", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def iperf_finish(node: ServiceNode, proc: subprocess.Popen) -> float:
    """Bits per second the server received."""
    out, err = proc.communicate(timeout=IPERF_SECONDS + 30)
    report = json.loads(out) if out.strip() else {"error": err}
    assert proc.returncode == 0 and "error" not in report, \
        f"{out[-2000:]}\n{err}\n{node.daemon.log()[-3000:]}"
    return float(report["end"]["sum_received"]["bits_per_second"])


def tx_dropped(node: ServiceNode, pod: str) -> int:
    """What the pod's interface dropped on its way to the daemon (the TAP's queue was full)."""
    out = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / node.spec.netns(pod)}", "ip", "-s", "-j", "link",
         "show", "eth0"], capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["dropped"])


def counters(node: ServiceNode) -> dict[str, float]:
    stats = node.ctl("stats")
    stats.pop("descriptions", None)
    return flatten_numbers(stats)


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0) for key in after
            if after[key] != before.get(key, 0)}


def flood_argv(node: ServiceNode, attack: str, ifname: str) -> list[str]:
    spec = node.spec
    ips = spec.pod_ips()
    attacker, server = ips["attacker"], ips["server"]
    target, port = {
        "syn-flood": (spec.cluster_ip(20), 80),
        "frag-flood": (spec.cluster_ip(20), 7000),
    }.get(attack, (str(server), 9))
    return [PYTHON, RAW_FLOOD, attack, ifname, str(spec.segment_mtu(None)), str(ATTACK_SECONDS),
            mac_for(attacker), str(attacker), mac_for(spec.gateway), target, str(port),
            mac_for(ips["client"]), str(ips["client"])]


def stream_during(node: ServiceNode, attack: str, ifname: str) -> tuple[float, dict]:
    """An iperf3 run while ``raw_flood`` sends ``attack`` on ``ifname`` of the attacker pod."""
    flood = node.daemon.popen_in("attacker", *flood_argv(node, attack, ifname),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bits = iperf_finish(node, iperf_start(node))
        out, err = flood.communicate(timeout=ATTACK_SECONDS + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert flood.returncode == 0, err
    report = json.loads(out)
    assert not report["refused"], report
    return bits, report


@dataclasses.dataclass
class Outcome:
    sent: dict[str, int]
    kernel_dropped: int
    growth: dict[str, float]
    stats: dict[str, Any]
    ratio: float

    def received(self) -> int:
        """Frames of the attacker's that reached the pipeline."""
        return int(self.growth.get("ports.attacker.rx_packets", 0))

    def stage(self, name: str, counter: str) -> int:
        return int(self.growth.get(f"stages.{name}.{counter}", 0))


def run_attack(node: ServiceNode, attack: str, record_property) -> Outcome:
    """An iperf3 run while the attacker sends the attack's frames to its own loopback (the same
    work for the sender and the machine, none for the switch: this machine's two cores are
    shared, so the sender's own CPU must not pass for the switch's weakness), then one while it
    sends them to the switch; and what the switch counted meanwhile."""
    control, _ = stream_during(node, attack, "lo")
    dropped_before = tx_dropped(node, "attacker")
    before = counters(node)
    attacked, report = stream_during(node, attack, "eth0")
    time.sleep(0.5)  # the daemon drains what is still queued
    assert node.daemon.running(), node.daemon.log()[-3000:]
    stats = node.ctl("stats")
    stats.pop("descriptions", None)
    outcome = Outcome(report["sent"], tx_dropped(node, "attacker") - dropped_before,
                      grown(before, flatten_numbers(stats)), stats, attacked / control)
    summary = {"sent": outcome.sent, "kernel_dropped": outcome.kernel_dropped,
               "upcall_lost": int(outcome.growth.get("datapath.upcall_lost", 0)),
               "received": outcome.received(),
               "drops": {k[len("ports.attacker.rx_drops."):]: int(v)
                         for k, v in outcome.growth.items()
                         if k.startswith("ports.attacker.rx_drops.")},
               "control_mbps": round(control / 1e6), "attacked_mbps": round(attacked / 1e6),
               "ratio": round(outcome.ratio, 2),
               "flow_cache": {k[len("flow_cache."):]: int(v) for k, v in outcome.growth.items()
                              if k.startswith("flow_cache.")},
               "dispositions": {k[len("dispositions."):]: int(v)
                                for k, v in outcome.growth.items()
                                if k.startswith("dispositions.")},
               "fdb": stats["fdb"]["entries"], "conntrack": stats["conntrack"]["entries"],
               "neighbors": stats["neighbors"]["entries"],
               "fragments": stats["fragments_held"]}
    record_property(attack, json.dumps(summary))
    print(f"\n{attack}: {json.dumps(summary)}")
    assert_bounded(stats)
    assert_accounted(outcome)
    return outcome


def assert_throughput_kept(outcome: Outcome) -> None:
    """The pass mark: more than half of the control run's throughput. Called last, after every
    other check of the attack passed. Every frame of these attacks misses the flow cache and
    costs the C datapath a read and Python the pipeline, on the same two shared cores as the
    stream, the sender and the sender's kernel, so the figure moves with the machine's load:
    between ``FLOOR_RATIO`` and half the test is an expected failure with its figures (see
    README.md, "Adversarial pods"), below the floor a failure."""
    if outcome.ratio > MIN_RATIO:
        return
    figures = f"the stream kept {outcome.ratio:.2f} of its throughput under attack"
    assert outcome.ratio > FLOOR_RATIO, figures
    pytest.xfail(figures)


def assert_bounded(stats: dict[str, Any]) -> None:
    ports = len(stats["ports"])
    assert stats["fdb"]["entries"] <= MAC_LIMIT * ports, stats["fdb"]
    assert stats["conntrack"]["entries"] <= CONNTRACK_MAX, stats["conntrack"]
    assert stats["neighbors"]["entries"] <= ports, stats["neighbors"]
    held = stats["fragments_held"]
    assert held["waiting_frames"] <= MAX_HELD_FRAMES, held


def assert_accounted(outcome: Outcome) -> None:
    """Every frame sent is somewhere: dropped by the pod's kernel on its way to the daemon, lost
    by the datapath when its queue to the pipeline was full (both counted), or received."""
    sent = sum(outcome.sent.values())
    lost = int(outcome.growth.get("datapath.upcall_lost", 0))
    accounted = outcome.kernel_dropped + lost + outcome.received()
    assert abs(accounted - sent) <= 0.01 * sent + 100, (sent, accounted, outcome.growth)
    assert outcome.received() > 0, outcome.growth


def assert_dropped_for(outcome: Outcome, reasons: dict[str, str]) -> None:
    """Every frame of the attacker's that reached the pipeline was dropped, for the reason its
    kind says (``reasons``: kind -> stage counter), and shows in the port's drop reasons."""
    for kind, counter in reasons.items():
        stage, name = counter.split(".")
        assert outcome.stage(stage, name) > 0, (kind, counter, outcome.growth)
    counted = sum(outcome.stage(*counter.split(".")) for counter in set(reasons.values()))
    by_port = sum(v for k, v in outcome.growth.items() if k.startswith("ports.attacker.rx_drops."))
    assert counted == by_port, outcome.growth
    assert abs(outcome.received() - counted) <= 20, (outcome.received(), counted, outcome.growth)
    # Nothing comes back to the attacker but the odd broadcast or ARP probe of the others' (its
    # neighbour entry refreshed, a pod's kernel asking for an address).
    assert outcome.growth.get("ports.attacker.tx_packets", 0) <= 20, outcome.growth


def test_mac_flood(node: ServiceNode, held: subprocess.Popen, record_property) -> None:
    """Random source MACs never reach the FDB: port security drops them before learning."""
    outcome = run_attack(node, "mac-flood", record_property)
    assert_dropped_for(outcome, {"spoofed_mac": "port-security.spoofed-mac"})
    assert outcome.stage("l2-learn", "learned") == 0, outcome.growth
    assert_throughput_kept(outcome)


def test_arp_storm(node: ServiceNode, held: subprocess.Popen, record_property) -> None:
    """ARP claiming other addresses of the subnet is dropped before it can poison a neighbour
    entry of the router or reach another pod."""
    outcome = run_attack(node, "arp-storm", record_property)
    assert_dropped_for(outcome, {"spoofed_arp": "port-security.spoofed-arp"})
    assert_throughput_kept(outcome)


def test_spoofed_ip_and_mac(node: ServiceNode, held: subprocess.Popen, record_property) -> None:
    outcome = run_attack(node, "spoof", record_property)
    assert_dropped_for(outcome, {"spoofed_mac": "port-security.spoofed-mac",
                                 "spoofed_ip": "port-security.spoofed-ip"})
    assert_throughput_kept(outcome)


def test_syn_flood_at_a_cluster_ip(node: ServiceNode, held: subprocess.Popen,
                                   record_property) -> None:
    """The table overflows and evicts, but only connections nobody answered or completed: the
    held connection of ``client`` stays (checked at the end of the module). The flood's SYNs all
    need the pipeline, far more than it can take: the datapath stops reading the attacker's port
    while it holds its share of the queue to the pipeline, so the rest wait in the pod's TAP,
    where its kernel drops them. The stream's own first packets (iperf3 opens its connections
    during the attack) still get their turn: the queue is taken from the ports in turn."""
    outcome = run_attack(node, "syn-flood", record_property)
    conntrack = outcome.stats["conntrack"]
    assert outcome.growth.get("conntrack.evictions", 0) > 0, conntrack
    assert outcome.stage("ip4-service", "new-connections") > CONNTRACK_MAX, outcome.growth
    established = [row for row in node.conntrack()
                   if row["state"] == "ESTABLISHED" and (row["dnat"] or {}).get("port") == 7000]
    assert len(established) == 1, established
    assert outcome.kernel_dropped > outcome.received(), outcome.growth  # far more than it took
    assert_throughput_kept(outcome)


def test_fragment_flood(node: ServiceNode, held: subprocess.Popen, record_property) -> None:
    """Later fragments to a ClusterIP whose first fragment never comes: a few are held, the
    rest refused for want of room, the held ones dropped when their time is up."""
    outcome = run_attack(node, "frag-flood", record_property)
    held_now = outcome.growth.get("stages.ip4-conntrack.fragment-held", 0)
    full = outcome.growth.get("stages.ip4-conntrack.fragment-hold-full", 0)
    assert held_now > 0 and full > 0, outcome.growth
    assert abs(outcome.received() - held_now - full) <= 20, outcome.growth
    assert_throughput_kept(outcome)


def test_malformed_frames(node: ServiceNode, held: subprocess.Popen, record_property) -> None:
    outcome = run_attack(node, "malformed", record_property)
    assert_dropped_for(outcome, {"truncated_ipv4": "eth-input.truncated-ipv4",
                                 "bad_ihl": "eth-input.bad-ihl",
                                 "bad_total_length": "eth-input.bad-total-length"})
    assert_throughput_kept(outcome)


def test_the_held_connection_survived_every_attack(node: ServiceNode,
                                                   held: subprocess.Popen) -> None:
    """The connection opened before the first attack still carries data, intact, both ways."""
    result = finish_stream(held)
    assert result["sink"]["sha256"] == result["sha256"], result

"""The cost of the first packet of a connection to a service, with 10, 1,000 and 10,000 services,
and with 10 and 1,000 network policies that do not select the pods involved.

    python3 bench/first_packet.py [--services 10,1000,10000] [--policies 0,10,1000]
                                  [--connections 2000] [--json FILE]

kube-proxy's iptables mode walks a chain with a rule per service, so a new connection costs more
the more services exist; vswitch finds the frontend with one dict lookup. This benchmark runs the
real pipeline (sans-I/O, no TAPs) on the SYNs of many new connections from a client pod to random
services and reports microseconds per first packet, and the programming time of the service table.
It also times a 1400-byte data packet of an established connection (the per-connection fast
path), for scale. Numbers are CPU time of the Python
pipeline on this machine; the test suite makes no timing assertions.

With ``--policies N,...`` the same first packets (to 10 services) run on a node with N network
policies that select none of the pods involved (in the pods' own namespace, each with a rule)
plus one that selects the backends and admits the client: the verdict is taken on every first
packet, and it must not cost more with 1,000 unrelated policies than with 10. Besides the whole
pipeline it times the verdict alone (``CompiledPolicies.check``) and the compilation of the
policies. A row with 0 policies has none at all: the pipeline's cost without the check.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import statistics
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import MappingProxyType

from vswitch import accel
from vswitch.config import parse_topology
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.switch import Switch
from vswitch.model import (
    Cluster,
    LabelSelector,
    NetworkPolicy,
    PolicyPeer,
    PolicyPort,
    PolicyRule,
    Service,
    ServicePort,
    Uplink,
    mac_for_ip,
)
from vswitch.policy.engine import CompiledPolicies
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

TOPOLOGY = """
[node]
name = "bench"
pod_cidr = "10.244.1.0/24"
[[pods]]
name = "client"
labels = { role = "client" }
[[pods]]
name = "web-1"
labels = { app = "web" }
[[pods]]
name = "web-2"
labels = { app = "web" }
"""


def service_ip(index: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("10.96.0.0")) + 10 + index)


SERVICES_WITH_POLICIES = 10
BACKEND_PORT = 8080


def network_policies(unrelated: int) -> tuple[NetworkPolicy, ...]:
    """``unrelated`` policies selecting no pod of the node, then one admitting the client to
    the backends; none at all for 0."""
    if unrelated == 0:
        return ()
    web_port = (PolicyPort("tcp", BACKEND_PORT),)
    others = tuple(
        NetworkPolicy(f"other-{i}", pod_selector=LabelSelector(MappingProxyType({"app": f"app-{i}"})),
                      ingress=(PolicyRule((PolicyPeer(pod_selector=LabelSelector(
                          MappingProxyType({"role": f"client-{i}"}))),), web_port),))
        for i in range(unrelated))
    web = NetworkPolicy("web", pod_selector=LabelSelector(MappingProxyType({"app": "web"})),
                        ingress=(PolicyRule((PolicyPeer(pod_selector=LabelSelector(
                            MappingProxyType({"role": "client"}))),), web_port),))
    return others + (web,)


def build(count: int, accel_name: str,
          policies: tuple[NetworkPolicy, ...] = ()) -> tuple[Switch, float]:
    base = parse_topology(TOPOLOGY, "bench.toml")
    selector = MappingProxyType({"app": "web"})
    services = tuple(Service(f"svc-{i}", cluster_ip=service_ip(i), selector=selector,
                             ports=(ServicePort("http", "tcp", 80, 8080),))
                     for i in range(count))
    topology = dataclasses.replace(
        base, services=services, network_policies=policies,
        cluster=Cluster(IPv4Network("10.244.0.0/16"), IPv4Network("10.96.0.0/12")),
        uplink=Uplink(IPv4Interface("192.0.2.2/24"), IPv4Address("192.0.2.1"), None, "vsubench",
                      mac_for_ip(IPv4Address("192.0.2.2")), mac_for_ip(IPv4Address("192.0.2.1"))))
    start = time.perf_counter()
    switch = Switch(topology, accel.load(accel_name))
    programmed = time.perf_counter() - start
    for port_id, pod in enumerate(topology.pods, start=1):
        switch.add_port(PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, True))
        arp = build_frame(parse_packet(f"arp who-has 10.244.1.1 tell {pod.ip}"),
                          mac_bytes(pod.mac), BROADCAST_MAC)
        switch.process_batch(port_id, [h.ZERO_VNET_HDR + arp], 0.0)
    return switch, programmed


def measure(count: int, connections: int, accel_name: str,
            policies: tuple[NetworkPolicy, ...] = ()) -> dict:
    switch, programmed = build(count, accel_name, policies)
    client = switch.topology.pods[0]
    rng = random.Random(count)
    frames = []
    for n in range(connections):
        vip = service_ip(rng.randrange(count))
        text = f"tcp {client.ip}:{10000 + n} > {vip}:80 flags S"
        frames.append(h.ZERO_VNET_HDR + build_frame(parse_packet(text), mac_bytes(client.mac),
                                                    mac_bytes(switch.topology.node.gateway_mac)))
    samples = []
    first_out = None
    for frame in frames:
        start = time.perf_counter()
        out = switch.process_batch(1, [frame], 1.0)
        samples.append(time.perf_counter() - start)
        assert len(out) == 1, "the SYN did not reach a backend"
        first_out = first_out or out[0]
    # Packets of an established connection, for comparison: complete the first handshake (the
    # backend's SYN-ACK, the client's ACK), then time the client's data packets.
    pods = {i + 1: pod for i, pod in enumerate(switch.topology.pods)}
    backend = pods[first_out.port]
    gateway = mac_bytes(switch.topology.node.gateway_mac)
    vip = h.IPV4.parse(frames[0][10 + 14:10 + 34]).dst
    vip_text = ".".join(map(str, vip))
    client_port = h.TCP.parse(frames[0][10 + 34:10 + 54]).src_port

    def tcp(src, dst, src_mac, dst_mac, flags, length=0):
        return h.ZERO_VNET_HDR + build_frame(parse_packet(
            f"tcp {src} > {dst} flags {flags} len {length}"), src_mac, dst_mac)

    switch.process_batch(first_out.port, [tcp(f"{backend.ip}:8080", f"{client.ip}:{client_port}",
                                              mac_bytes(backend.mac), mac_bytes(client.mac), "SA")], 1.1)
    data = tcp(f"{client.ip}:{client_port}", f"{vip_text}:80", mac_bytes(client.mac), gateway,
               "PA", 1400)
    switch.process_batch(1, [data], 1.2)  # completes the handshake in the pipeline
    later = []
    for _ in range(500):
        start = time.perf_counter()
        out = switch.process_batch(1, [data], 2.0)
        later.append(time.perf_counter() - start)
        assert len(out) == 1, "an established packet was not forwarded"
    hits = switch.statistics()["dispositions"]["cache-hit"]
    return {
        "services": count,
        "program_s": round(programmed, 4),
        "first_packet_us_median": round(statistics.median(samples) * 1e6, 1),
        "first_packet_us_p90": round(sorted(samples)[int(len(samples) * 0.9)] * 1e6, 1),
        "established_packet_us_median": round(statistics.median(later) * 1e6, 1),
        "established_cache_hits": hits,
        "connections": connections,
    }


def measure_policies(unrelated: int, connections: int, accel_name: str) -> dict:
    """The first packet through the pipeline with ``unrelated`` + 1 policies, and the verdict
    and the compilation on their own."""
    policies = network_policies(unrelated)
    row = measure(SERVICES_WITH_POLICIES, connections, accel_name, policies)
    topology = parse_topology(TOPOLOGY, "bench.toml")
    labels = {namespace.name: namespace.labels for namespace in topology.namespaces}
    start = time.perf_counter()
    compiled = CompiledPolicies.build(policies, labels, topology.pods,
                                      [topology.node.gateway.packed])
    compile_s = time.perf_counter() - start
    client, backend = topology.pods[0].ip.packed, topology.pods[1].ip.packed
    checks = []
    for _ in range(connections):
        start = time.perf_counter()
        decision = compiled.check(client, backend, 6, BACKEND_PORT)
        checks.append(time.perf_counter() - start)
        assert decision.allowed, decision.explanation
    return {
        "policies": unrelated,
        "selecting": 1 if policies else 0,
        "compile_ms": round(compile_s * 1e3, 2),
        "check_us_median": round(statistics.median(checks) * 1e6, 2),
        "first_packet_us_median": row["first_packet_us_median"],
        "first_packet_us_p90": row["first_packet_us_p90"],
        "established_packet_us_median": row["established_packet_us_median"],
        "connections": connections,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="10,1000,10000")
    parser.add_argument("--policies", default="0,10,1000",
                        help="numbers of policies selecting none of the pods involved (plus "
                             "one that does); empty: no policy rows")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--accel", default="native", choices=("native", "pure"))
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "first-packet.json")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.services.split(",")]
    rows = [measure(count, args.connections, args.accel) for count in counts]
    base = rows[0]["first_packet_us_median"]
    print(f"{'services':>9}  {'program s':>9}  {'first packet µs (median)':>24}  {'p90':>7}  "
          f"{'vs fewest':>9}  {'established packet µs':>21}")
    for row in rows:
        print(f"{row['services']:>9}  {row['program_s']:>9.3f}  {row['first_packet_us_median']:>24.1f}  "
              f"{row['first_packet_us_p90']:>7.1f}  {row['first_packet_us_median'] / base:>8.2f}x  "
              f"{row['established_packet_us_median']:>21.1f}")
    policy_rows = [measure_policies(int(count), args.connections, args.accel)
                   for count in args.policies.split(",") if count]
    if policy_rows:
        print(f"\n{'policies':>9}  {'compile ms':>10}  {'verdict µs':>10}  "
              f"{'first packet µs (median)':>24}  {'p90':>7}  {'established packet µs':>21}")
        for row in policy_rows:
            label = f"{row['policies']}+{row['selecting']}" if row["selecting"] else "none"
            print(f"{label:>9}  {row['compile_ms']:>10.2f}  {row['check_us_median']:>10.2f}  "
                  f"{row['first_packet_us_median']:>24.1f}  {row['first_packet_us_p90']:>7.1f}  "
                  f"{row['established_packet_us_median']:>21.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "python": sys.version,
                                     "accel": args.accel, "rows": rows,
                                     "policy_rows": policy_rows}, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

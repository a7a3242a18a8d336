"""The cost of the first packet of a connection to a service, with 10, 1,000 and 10,000 services.

    python3 bench/first_packet.py [--services 10,1000,10000] [--connections 2000] [--json FILE]

kube-proxy's iptables mode walks a chain with a rule per service, so a new connection costs more
the more services exist; vswitch finds the frontend with one dict lookup. This benchmark runs the
real pipeline (sans-I/O, no TAPs) on the SYNs of many new connections from a client pod to random
services and reports microseconds per first packet, and the programming time of the service table.
It also times a 1400-byte data packet of an established connection (the per-connection fast
path), for scale. Numbers are CPU time of the Python
pipeline on this machine; the test suite makes no timing assertions.
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
from vswitch.model import Cluster, Service, ServicePort, Uplink, mac_for_ip
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

TOPOLOGY = """
[node]
name = "bench"
pod_cidr = "10.244.1.0/24"
[[pods]]
name = "client"
[[pods]]
name = "web-1"
labels = { app = "web" }
[[pods]]
name = "web-2"
labels = { app = "web" }
"""


def service_ip(index: int) -> IPv4Address:
    return IPv4Address(int(IPv4Address("10.96.0.0")) + 10 + index)


def build(count: int, accel_name: str) -> tuple[Switch, float]:
    base = parse_topology(TOPOLOGY, "bench.toml")
    selector = MappingProxyType({"app": "web"})
    services = tuple(Service(f"svc-{i}", cluster_ip=service_ip(i), selector=selector,
                             ports=(ServicePort("http", "tcp", 80, 8080),))
                     for i in range(count))
    topology = dataclasses.replace(
        base, services=services,
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


def measure(count: int, connections: int, accel_name: str) -> dict:
    switch, programmed = build(count, accel_name)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", default="10,1000,10000")
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
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": platform.platform(), "python": sys.version,
                                     "accel": args.accel, "rows": rows}, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

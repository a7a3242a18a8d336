"""Memory of a busy node: 250 pods, 10,000 services and 262,144 tracked connections.

    python3 bench/memory.py [--pods 250] [--services 10000] [--connections 262144]
                            [--accel native] [--tracemalloc] [--json FILE]

Issue 9 sets a target of RSS < 150 MB for this state (a tracked connection then costs ~1.4 KB;
Linux's conntrack ~0.3 KB). The script builds it with the real pipeline, sans-I/O, as
``first_packet.py`` does: a ``Switch`` with a port per pod, no TAPs and no daemon, frames handed
to ``Switch.process_batch`` in memory. Steps, with the process's RSS (``VmRSS`` of
``/proc/self/status``) read after each:

``baseline``
    the interpreter with the package and the native module imported.
``pods``
    a ``Switch`` on a topology of ``--pods`` pods (a /23 pod CIDR inside a [cluster]), a port per
    pod, and one ARP request from each, so that the FDB and the neighbour table hold every pod.
``services``
    ``--services`` ClusterIP services programmed the way the daemon programs them
    (``programming.program``), each with one TCP port 80 -> 8080 and a selector that picks a group
    of three pods, so ~3 endpoints each.
``connections``
    ``--connections`` SYNs, each the first packet of a new connection from a pod (round robin,
    the source port moving on after every pass over the pods) to a random service's cluster IP,
    in bursts of 64 per port through ``Switch.process_batch``; each must come out DNATed to a
    backend, so each leaves a tracked connection (SYN_SENT, unreplied) and whatever the pipeline
    keeps for it (flow-cache entries, deadline heap items, indexes). 262,144 is also the default
    size of the connection table, so the last SYN fills it exactly and nothing is evicted.

Frames are built from one template per pod and patched (cluster IP, source port, both checksums)
burst by burst, so that the frames never held at once stay small next to what is measured. All
SYNs carry the same timestamp, well inside SYN_SENT's timeout, and no timer runs: nothing expires.

The figure per connection is (RSS after connections - RSS after services) / connections.
``--tracemalloc`` starts Python's allocation tracer just before the connections step and prints
where the memory of that step went, by source line, top 15 (and the total the tracer saw, which
leaves out what C code allocates outside Python's allocator). Tracing slows the pipeline and adds
its own memory, so its RSS figures are not the ones to report: run once without it for RSS, once
with it for the breakdown.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import linecache
import platform
import random
import struct
import sys
import time
import tracemalloc
from ipaddress import IPv4Address
from pathlib import Path
from types import MappingProxyType

from vswitch import accel
from vswitch.config import parse_topology
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.switch import Switch
from vswitch.model import Service, ServicePort
from vswitch.wire import headers as h
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes
from vswitch.wire.text import build_frame, parse_packet

REPO = Path(__file__).resolve().parent.parent
RSS_TARGET_MB = 150
POD_CIDR = "10.244.0.0/23"
SERVICE_BASE = IPv4Address("10.96.0.10")
SERVICE_PORT, TARGET_PORT = 80, 8080
ENDPOINTS_PER_SERVICE = 3
FIRST_CLIENT_PORT = 10000
BURST = 64
SYN_TIME = 1.0
# Offsets in a frame as process_batch takes it: virtio-net header, Ethernet, IPv4 (no options),
# TCP. The template's IP header has no options, so these hold for every frame built from it.
IP_START = len(h.ZERO_VNET_HDR) + 14
IP_CHECKSUM = IP_START + 10
IP_DST = IP_START + 16
TCP_START = IP_START + 20
TCP_CHECKSUM = TCP_START + 16
TOP_LINES = 15


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def topology_text(pods: int) -> str:
    """``pods`` pods, labelled in groups of three (``group = "gN"``), in a cluster."""
    lines = ['[node]', 'name = "mem"', f'pod_cidr = "{POD_CIDR}"', "",
             "[cluster]", 'cidr = "10.244.0.0/16"', 'service_cidr = "10.96.0.0/12"']
    for n in range(pods):
        lines += ["", "[[pods]]", f'name = "p{n}"',
                  f'labels = {{ group = "g{n // ENDPOINTS_PER_SERVICE}" }}']
    return "\n".join(lines) + "\n"


def services(count: int, pods: int) -> list[Service]:
    """``count`` ClusterIP services, service ``i`` selecting group ``i`` modulo the full groups."""
    groups = max(1, pods // ENDPOINTS_PER_SERVICE)
    return [Service(f"svc-{i}", cluster_ip=service_ip(i),
                    selector=MappingProxyType({"group": f"g{i % groups}"}),
                    ports=(ServicePort("http", "tcp", SERVICE_PORT, TARGET_PORT),))
            for i in range(count)]


def service_ip(index: int) -> IPv4Address:
    return SERVICE_BASE + index


def add_pods(switch: Switch) -> None:
    """A port per pod and one ARP request from each for its gateway: FDB and neighbours learn it."""
    gateway = switch.topology.node.gateway
    for port_id, pod in enumerate(switch.topology.pods, start=1):
        switch.add_port(PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, True))
        arp = build_frame(parse_packet(f"arp who-has {gateway} tell {pod.ip}"),
                          mac_bytes(pod.mac), BROADCAST_MAC)
        switch.process_batch(port_id, [h.ZERO_VNET_HDR + arp], 0.0)


class SynFactory:
    """SYNs from each pod to any cluster IP, patched from one template frame per pod."""

    def __init__(self, switch: Switch):
        self._accel = switch.accel
        gateway_mac = mac_bytes(switch.topology.node.gateway_mac)
        self.templates = [
            bytearray(h.ZERO_VNET_HDR + build_frame(
                parse_packet(f"tcp {pod.ip}:{FIRST_CLIENT_PORT} > {service_ip(0)}:{SERVICE_PORT}"
                             " flags S"), mac_bytes(pod.mac), gateway_mac))
            for pod in switch.topology.pods]

    def syn(self, pod_index: int, source_port: int, service: int) -> bytes:
        frame = self.templates[pod_index]
        frame[IP_DST:IP_DST + 4] = service_ip(service).packed
        struct.pack_into("!H", frame, IP_CHECKSUM, 0)
        struct.pack_into("!H", frame, IP_CHECKSUM,
                         self._accel.checksum(bytes(frame[IP_START:TCP_START])))
        struct.pack_into("!H", frame, TCP_START, source_port)
        struct.pack_into("!H", frame, TCP_CHECKSUM, 0)
        src, dst = bytes(frame[IP_START + 12:IP_START + 16]), bytes(frame[IP_DST:IP_DST + 4])
        struct.pack_into("!H", frame, TCP_CHECKSUM,
                         self._accel.l4_checksum(src, dst, 6, bytes(frame[TCP_START:])))
        return bytes(frame)


def open_connections(switch: Switch, count: int, service_count: int, seed: int) -> int:
    """``count`` SYNs through the pipeline, bursts of ``BURST`` from one pod at a time; returns
    how many came out (each must: one SYN, one DNATed frame towards a backend)."""
    factory = SynFactory(switch)
    pods = len(factory.templates)
    rng = random.Random(seed)
    forwarded = 0
    opened = 0
    source_port = FIRST_CLIENT_PORT
    while opened < count:
        for pod_index in range(pods):
            size = min(BURST, count - opened)
            if size <= 0:
                break
            burst = [factory.syn(pod_index, source_port + k, rng.randrange(service_count))
                     for k in range(size)]
            forwarded += len(switch.process_batch(pod_index + 1, burst, SYN_TIME))
            opened += size
        source_port += BURST
    return forwarded


def tracemalloc_top(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
                    connections: int) -> dict:
    diff = after.compare_to(before, "lineno")
    grown = [stat for stat in diff if stat.size_diff > 0]
    total = sum(stat.size_diff for stat in diff)
    return {
        "traced_bytes": total,
        "traced_bytes_per_connection": total / connections,
        "top_lines": [
            {"line": f"{_relative(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
             "code": linecache.getline(stat.traceback[0].filename,
                                       stat.traceback[0].lineno).strip(),
             "bytes": stat.size_diff, "bytes_per_connection": stat.size_diff / connections,
             "blocks": stat.count_diff}
            for stat in grown[:TOP_LINES]],
    }


def _relative(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else filename


def run(args: argparse.Namespace, log) -> dict:
    module = accel.load(args.accel)
    steps: list[dict] = []

    def step(name: str, started: float, **extra) -> None:
        gc.collect()
        steps.append({"step": name, "rss_kib": rss_kib(),
                      "seconds": round(time.perf_counter() - started, 2), **extra})
        log(f"{name}: RSS {steps[-1]['rss_kib'] / 1024:.1f} MiB "
            f"({steps[-1]['seconds']} s)")

    step("baseline", time.perf_counter())
    started = time.perf_counter()
    topology = parse_topology(topology_text(args.pods), "memory.toml")
    switch = Switch(topology, module)
    add_pods(switch)
    step("pods", started, pods=len(topology.pods))
    started = time.perf_counter()
    programmed = services(args.services, args.pods)
    switch.programming.program(topology.pods, programmed, 0.0)
    del programmed
    step("services", started, services=args.services)
    started = time.perf_counter()
    if args.tracemalloc:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
    forwarded = open_connections(switch, args.connections, args.services, args.seed)
    breakdown = None
    if args.tracemalloc:
        gc.collect()
        breakdown = tracemalloc_top(before, tracemalloc.take_snapshot(), args.connections)
        del before
        tracemalloc.stop()
    step("connections", started, connections=args.connections, forwarded=forwarded,
         tracked=len(switch.conntrack),
         flow_cache_entries=switch.flow_cache.statistics().entries)
    if forwarded != args.connections or len(switch.conntrack) != args.connections:
        raise SystemExit(f"{forwarded} of {args.connections} SYNs came out, "
                         f"{len(switch.conntrack)} connections are tracked: the state measured "
                         "is not the one asked for")
    by_name = {s["step"]: s["rss_kib"] for s in steps}
    per_connection = (by_name["connections"] - by_name["services"]) * 1024 / args.connections
    return {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "parameters": {"pods": args.pods, "services": args.services,
                       "connections": args.connections, "accel": module.NAME,
                       "tracemalloc": args.tracemalloc, "seed": args.seed},
        "steps": steps,
        "rss_total_mib": by_name["connections"] / 1024,
        "rss_target_mib": RSS_TARGET_MB,
        "bytes_per_connection": per_connection,
        "tracemalloc": breakdown,
    }


def render(results: dict) -> str:
    lines = [f"{'step':<12}  {'RSS MiB':>8}  {'+MiB':>7}  {'s':>6}"]
    previous = None
    for s in results["steps"]:
        grown = "" if previous is None else f"{(s['rss_kib'] - previous) / 1024:+.1f}"
        lines.append(f"{s['step']:<12}  {s['rss_kib'] / 1024:>8.1f}  {grown:>7}  "
                     f"{s['seconds']:>6.1f}")
        previous = s["rss_kib"]
    total = results["rss_total_mib"]
    verdict = "met" if total < results["rss_target_mib"] else "missed"
    lines.append(f"bytes per tracked connection (RSS): {results['bytes_per_connection']:.0f}")
    lines.append(f"RSS in total: {total:.1f} MiB; target < {results['rss_target_mib']} MB: "
                 f"{verdict}")
    breakdown = results["tracemalloc"]
    if breakdown:
        lines.append("")
        lines.append(f"traced by tracemalloc during the connections step: "
                     f"{breakdown['traced_bytes'] / 2**20:.1f} MiB, "
                     f"{breakdown['traced_bytes_per_connection']:.0f} bytes per connection")
        lines.append(f"{'bytes/conn':>10}  {'blocks':>8}  line")
        for row in breakdown["top_lines"]:
            lines.append(f"{row['bytes_per_connection']:>10.1f}  {row['blocks']:>8}  "
                         f"{row['line']}  {row['code']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=262144)
    parser.add_argument("--accel", default="native", choices=("native", "pure"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the connections step's allocations by line (slower; its "
                             "RSS figures include the tracer's own memory)")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default bench/results/memory-<time>.json)")
    args = parser.parse_args(argv)
    if args.pods < ENDPOINTS_PER_SERVICE or args.services < 1 or args.connections < 1:
        parser.error(f"--pods must be at least {ENDPOINTS_PER_SERVICE}, --services and "
                     "--connections positive")
    if args.json is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json = Path(__file__).resolve().parent / "results" / f"memory-{stamp}.json"

    def log(message: str) -> None:
        print(f"[memory] {message}", file=sys.stderr, flush=True)

    results = run(args, log)
    print(render(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

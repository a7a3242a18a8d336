#!/usr/bin/env python3
"""New TCP connections per second from one pod: straight over a bridge, pod to pod through
vswitchd, and through a ClusterIP.

Usage::

    sudo python3 bench/conn_rate.py [--rounds 3] [--duration 5] [--workers 2] [--endpoints 3]
                                    [--mode echo|open] [--variants bridge,vswitch-pod,...]
                                    [--json bench/results/conn-rate-<timestamp>.json]

Issue 9 asks for the rate of new connections through a ClusterIP next to the same client
straight to the pod over the bridge. Every packet of a bulk transfer after the first few is the
flow cache's business; a new connection through a service is not: its SYN, SYN-ACK, FIN and the
ACKs around them change its tracked state, so they go through the pipeline (conntrack, the
endpoint choice, the NAT decision), and this rate is what the slow path costs. Pod to pod, the
cache carries every frame, so that variant shows what the per-frame wake-ups cost alone.

The client, ``conn_client.c`` (compiled with gcc into a temporary directory for the run, as
``tap_loop.c`` is), runs ``--workers`` threads in namespace ``a``, each opening a connection,
in ``echo`` mode writing one byte and reading it back (``open``: nothing), closing, and starting
over at once, for ``--duration`` seconds. The server, the same program in ``serve`` mode, accepts
in four threads in each backend namespace, echoes the byte if one comes, and closes.

Variants:

``bridge``
    namespaces ``a`` and ``b`` joined by a Linux bridge and two veth pairs (``bench.py``'s
    reference); the client connects to ``b``'s address.
``vswitch-pod``
    ``vswitchd`` with two pods, offloads on; the client connects to pod ``b``'s address: switched,
    not tracked.
``vswitch-clusterip``
    ``vswitchd`` with pod ``a`` and ``--endpoints`` backend pods ``b1``... selected by a ClusterIP
    service (port 80 -> the server's port); the client connects to the cluster IP, so every
    connection is tracked, gets an endpoint and is DNATed (and its replies reverse-NATed).

The client's namespace is tuned, inside that namespace only (the host's settings are never
touched): ``ip_local_port_range`` 1024-65535 and ``tcp_tw_reuse`` 1, so that a source port
whose connection is in TIME_WAIT can be reused one second later and the client does not run out
of ports at tens of thousands of connections per second.

Before anything is timed, echoes from ``a`` must reach each server with the TTL unchanged (as
``bench.py`` checks), and a half-second run of the client must complete connections (through
the service for ``vswitch-clusterip``, where every backend must have been chosen); this also
resolves neighbours. Then the variants are measured interleaved over ``--rounds`` rounds, and the
median rate per variant is reported with its ratio to the bridge, the median duration of a
connection (p50, p99) and every failure summed over the rounds: connect errors (refused,
timeout: no answer within 1 s, no local port), resets, and connections the server closed
without answering. For ``vswitchd`` also: its CPU time per connection (``/proc/PID/stat``
around each round) and the frames per connection it received, and how many of those the flow
cache did not carry (its dispositions, from ``vswitchctl stats``, around each round).

Addresses are random /24s inside 10.200.0.0/13 that nothing on the host overlaps (the ClusterIP
variant takes a second one for its service CIDR); all names carry a random suffix; everything
created is removed on exit, on failure, on Ctrl-C and on SIGTERM. The building blocks
(namespaces, the bridge, the daemon, the forwarding check, cleanup) are ``bench.py``'s.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Callable

import bench
from bench import BenchError, Pair, Processes

VARIANTS = ("bridge", "vswitch-pod", "vswitch-clusterip")
CLIENT_SOURCE = Path(__file__).resolve().parent / "conn_client.c"
SERVER_PORT = 5301
SERVICE_PORT = 80
SERVER_THREADS = 4
CHECK_SECONDS = 0.5
# Inside the client's namespace only: every port a client may use, and TIME_WAIT ports reusable
# one second after their connection closed (tcp_tw_reuse = 1; the default 2 is loopback only).
CLIENT_SYSCTLS = {"net/ipv4/ip_local_port_range": "1024 65535", "net/ipv4/tcp_tw_reuse": "1"}
CACHE_HIT = "cache-hit"  # the disposition of frames the flow cache carried
FAILURES = ("refused", "timeout", "reset", "no_local_port", "closed", "other")


@dataclass(frozen=True)
class Target:
    """Where the client runs and what it connects to; the servers' namespaces and addresses."""

    variant: str
    ns_client: str
    host: str
    port: int
    servers: tuple[tuple[str, str], ...]  # (namespace, address) of each backend
    client_ip: str
    log_paths: tuple[Path, ...] = ()
    daemon_pid: int | None = None  # vswitchd's, whose CPU time per connection is reported
    socket_path: Path | None = None  # vswitchd's control socket


def subnets_needed(variant: str) -> tuple[int, ...]:
    return (24, 24) if variant == "vswitch-clusterip" else (24,)


def backend_names(variant: str, endpoints: int) -> list[str]:
    return [f"b{n}" for n in range(1, endpoints + 1)] if variant == "vswitch-clusterip" else ["b"]


def vswitch_topology(variant: str, node: str, subnets: list[IPv4Network], endpoints: int,
                     workdir: Path) -> str:
    """Pod ``a`` and the backends on one segment; for the ClusterIP variant a service that
    selects every backend."""
    text = textwrap.dedent(
        f"""\
        [node]
        name = "{node}"
        pod_cidr = "{subnets[0]}"
        mtu = 1500

        [host_port]
        enabled = false

        [dataplane]
        offloads = true

        [control]
        socket = "{workdir / 'ctl.sock'}"
        state_dir = "{workdir / 'state'}"

        [[pods]]
        name = "a"
        """
    )
    clusterip = variant == "vswitch-clusterip"
    for name in backend_names(variant, endpoints):
        labels = '\nlabels = { app = "conn" }' if clusterip else ""
        text += f'\n[[pods]]\nname = "{name}"{labels}\n'
    if clusterip:
        text += textwrap.dedent(
            f"""
            [cluster]
            cidr = "{subnets[0]}"
            service_cidr = "{subnets[1]}"

            [[services]]
            name = "conn"
            cluster_ip = "{bench.cluster_ip(subnets)}"
            selector = {{ app = "conn" }}
            ports = [ {{ name = "tcp", protocol = "tcp", port = {SERVICE_PORT}, \
            target_port = {SERVER_PORT} }} ]
            """
        )
    return text


def build(stack: contextlib.ExitStack, procs: Processes, variant: str, suffix: str,
          subnets: list[IPv4Network], endpoints: int) -> Target:
    if variant == "bridge":
        pair = bench.build_bridge(stack, suffix, subnets[0])
        return Target(variant, pair.ns_a, pair.ip_b, SERVER_PORT, ((pair.ns_b, pair.ip_b),),
                      pair.ip_a)
    # Node names go into namespace names: one letter per variant, as bench.py's.
    node = f"k{suffix}{'p' if variant == 'vswitch-pod' else 's'}"
    workdirs: list[Path] = []

    def render(workdir: Path) -> str:
        workdirs.append(workdir)
        return vswitch_topology(variant, node, subnets, endpoints, workdir)

    topology, log_path = bench.start_vswitchd(stack, procs, variant, node, render)
    client = topology.pod("a")
    servers = tuple((topology.pod(name).netns, str(topology.pod(name).ip))
                    for name in backend_names(variant, endpoints))
    if variant == "vswitch-clusterip":
        host, port = bench.cluster_ip(subnets), SERVICE_PORT
    else:
        host, port = servers[0][1], SERVER_PORT
    socket_path = workdirs[0] / "ctl.sock"
    return Target(variant, client.netns, host, port, servers, str(client.ip), (log_path,),
                  daemon_pid(procs, socket_path), socket_path)


def vswitchctl(procs: Processes, socket_path: Path, *command: str) -> object:
    result = procs.run([*bench.VSWITCHCTL, "--socket", str(socket_path), *command, "--json"],
                       timeout=60)
    if result.returncode != 0:
        raise BenchError(f"vswitchctl {' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    return json.loads(result.stdout)


def daemon_pid(procs: Processes, socket_path: Path) -> int:
    status = vswitchctl(procs, socket_path, "status")
    assert isinstance(status, dict)
    return int(status["pid"])


def endpoint_spread(procs: Processes, target: Target) -> dict[str, int]:
    """How many of the tracked connections through the service went to each backend."""
    assert target.socket_path is not None
    rows = vswitchctl(procs, target.socket_path, "conntrack", "--filter", "service=default/conn")
    assert isinstance(rows, list)
    spread = {ip: 0 for _, ip in target.servers}
    for row in rows:
        dnat = row.get("dnat") or {}
        if dnat.get("ip") in spread:
            spread[dnat["ip"]] += 1
    return spread


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compile_client(stack: contextlib.ExitStack) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="vswbench-conn-"))
    stack.callback(shutil.rmtree, workdir, True)
    binary = workdir / "conn_client"
    compiled = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary),
                               str(CLIENT_SOURCE)], capture_output=True, text=True, timeout=120)
    if compiled.returncode != 0:
        raise BenchError(f"gcc could not compile {CLIENT_SOURCE}:\n{compiled.stderr}")
    return binary


def tune_client_namespace(procs: Processes, ns: str) -> None:
    script = "; ".join(f"echo '{value}' > /proc/sys/{key}" for key, value in CLIENT_SYSCTLS.items())
    result = procs.run(bench.in_netns(ns, "sh", "-ec", script), timeout=10)
    if result.returncode != 0:
        raise BenchError(f"cannot set {', '.join(CLIENT_SYSCTLS)} in {ns}: {result.stderr}")


def start_servers(stack: contextlib.ExitStack, procs: Processes, binary: Path,
                  target: Target) -> None:
    """One server per backend namespace, stopped before the namespaces go."""
    for ns, _ in target.servers:
        server = procs.start(bench.in_netns(ns, str(binary), "serve", str(SERVER_PORT),
                                            str(SERVER_THREADS)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True)
        stack.callback(_stop, server)
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            server.kill()
            _, err = server.communicate()
            raise BenchError(f"the server in {ns} did not start:\n{err}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def run_client(procs: Processes, binary: Path, target: Target, seconds: float, workers: int,
               mode: str) -> dict:
    argv = bench.in_netns(target.ns_client, str(binary), "connect", target.host, str(target.port),
                          str(seconds), str(workers), mode)
    result = procs.run(argv, timeout=seconds + 30)
    if result.returncode != 0:
        raise BenchError(f"conn_client failed on {target.variant}:\n{result.stderr}")
    return json.loads(result.stdout)


def check(procs: Processes, binary: Path, target: Target, workers: int,
          mode: str) -> dict[str, int] | None:
    """Echoes to every server, untouched TTL; then connections must complete through the target
    and, through the service, reach every backend. Returns how they spread over the backends."""
    for ns, ip in target.servers:
        bench.check_forwarding(procs, Pair(target.variant, target.ns_client, ns, target.client_ip,
                                           ip), target.log_paths)
    outcome = run_client(procs, binary, target, CHECK_SECONDS, workers, mode)
    if not outcome["connections"]:
        raise BenchError(f"{target.variant}: no connection to {target.host}:{target.port} "
                         f"completed in {CHECK_SECONDS} s (failures: {outcome['failures']})"
                         f"{bench.log_tail(target.log_paths)}")
    if target.variant != "vswitch-clusterip":
        return None
    spread = endpoint_spread(procs, target)
    if not all(spread.values()):
        raise BenchError(f"{target.variant}: {outcome['connections']} connections through "
                         f"{target.host}:{target.port} reached only some backends: {spread}"
                         f"{bench.log_tail(target.log_paths)}")
    return spread


def dispositions(procs: Processes, target: Target) -> dict[str, int]:
    """vswitchd's dispositions so far: every frame received is counted in exactly one."""
    assert target.socket_path is not None
    stats = vswitchctl(procs, target.socket_path, "stats")
    assert isinstance(stats, dict)
    return dict(stats["dispositions"])


def measure(procs: Processes, binary: Path, target: Target, seconds: float, workers: int,
            mode: str) -> dict:
    """One round: the client's figures; for vswitchd, its CPU time per completed connection and
    the frames per connection it received, and of those, the ones the flow cache did not carry
    (each went through the pipeline)."""
    if target.daemon_pid is None:
        return run_client(procs, binary, target, seconds, workers, mode)
    counted = dispositions(procs, target)
    before = cpu_seconds(target.daemon_pid)
    outcome = run_client(procs, binary, target, seconds, workers, mode)
    spent = cpu_seconds(target.daemon_pid) - before
    grown = {name: n - counted.get(name, 0) for name, n in dispositions(procs, target).items()}
    if outcome["connections"]:
        per_connection = 1 / outcome["connections"]
        outcome["daemon_cpu_us_per_connection"] = spent * 1e6 * per_connection
        outcome["frames_per_connection"] = sum(grown.values()) * per_connection
        outcome["pipeline_frames_per_connection"] = (
            sum(n for name, n in grown.items() if name != CACHE_HIT) * per_connection)
    outcome["dispositions"] = grown
    return outcome


def summarize(rounds: list[dict]) -> dict:
    def median_of(key: str) -> float | None:
        values = [r[key] for r in rounds if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "per_second": statistics.median(r["per_second"] for r in rounds),
        "daemon_cpu_us_per_connection": median_of("daemon_cpu_us_per_connection"),
        "frames_per_connection": median_of("frames_per_connection"),
        "pipeline_frames_per_connection": median_of("pipeline_frames_per_connection"),
        "duration_us_p50": statistics.median(r["duration_us_p50"] for r in rounds),
        "duration_us_p99": statistics.median(r["duration_us_p99"] for r in rounds),
        "connections": sum(r["connections"] for r in rounds),
        "failures": {kind: sum(r["failures"][kind] for r in rounds) for kind in FAILURES},
    }


def render(medians: dict[str, dict]) -> str:
    base = medians.get("bridge", {}).get("per_second")
    header = ["variant", "conn/s", "vs bridge", "p50 µs", "p99 µs", "vswitchd CPU µs/conn",
              "frames/conn", "pipeline/conn", "connections", "failures"]
    rows = [header]
    for variant, m in medians.items():
        failures = ", ".join(f"{kind} {n}" for kind, n in m["failures"].items() if n) or "0"
        rows.append([variant, f"{m['per_second']:.0f}",
                     f"{m['per_second'] / base:.2f}×" if base else "-",
                     f"{m['duration_us_p50']:.0f}", f"{m['duration_us_p99']:.0f}",
                     _cell(m["daemon_cpu_us_per_connection"], "{:.0f}"),
                     _cell(m["frames_per_connection"], "{:.1f}"),
                     _cell(m["pipeline_frames_per_connection"], "{:.1f}"),
                     str(m["connections"]), failures])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of connections per round and variant (default 5)")
    parser.add_argument("--workers", type=int, default=2,
                        help="client threads, each one connection at a time (default 2)")
    parser.add_argument("--endpoints", type=int, default=3,
                        help="backend pods behind the ClusterIP (default 3)")
    parser.add_argument("--mode", choices=("echo", "open"), default="echo",
                        help="echo: write a byte and read it back before closing; open: close "
                             "as soon as the connection is established (default echo)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="results file (default bench/results/conn-rate-<time>.json)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.duration <= 0 or not 1 <= args.workers <= 64:
        parser.error("--rounds and --duration must be positive, --workers 1 to 64")
    if not 1 <= args.endpoints <= 9:
        parser.error("--endpoints must be 1 to 9")
    if args.json_path is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json_path = str(bench.REPO / "bench" / "results" / f"conn-rate-{stamp}.json")
    return args


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark creates namespaces, veths and TAPs")
    for tool, package in (("nsenter", "util-linux"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found; install it (Debian: apt-get install {package})")


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    preflight()
    suffix = secrets.token_hex(3)
    procs = Processes()
    pool = iter(bench.free_subnets([n for v in args.variants for n in subnets_needed(v)]))
    subnets = {v: [next(pool) for _ in subnets_needed(v)] for v in args.variants}
    raw: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    started = time.time()
    machine = bench.machine_info()
    with contextlib.ExitStack() as stack:
        stack.callback(procs.end_all)
        binary = compile_client(stack)
        targets: dict[str, Target] = {}
        spreads: dict[str, dict[str, int]] = {}
        for variant in args.variants:
            log(f"building {variant} on {', '.join(map(str, subnets[variant]))}")
            target = build(stack, procs, variant, suffix, subnets[variant], args.endpoints)
            tune_client_namespace(procs, target.ns_client)
            start_servers(stack, procs, binary, target)
            if (spread := check(procs, binary, target, args.workers, args.mode)) is not None:
                log(f"{variant}: the check's connections per backend: {spread}")
                spreads[variant] = spread
            targets[variant] = target
        for round_no in range(1, args.rounds + 1):
            for variant, target in targets.items():
                log(f"round {round_no}/{args.rounds}: {variant}")
                raw[variant].append({"round": round_no, **measure(
                    procs, binary, target, args.duration, args.workers, args.mode)})
    medians = {variant: summarize(rounds) for variant, rounds in raw.items()}
    base = medians.get("bridge", {}).get("per_second")
    return {
        "started": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine,
        "parameters": {
            "rounds": args.rounds, "duration_s": args.duration, "workers": args.workers,
            "endpoints": args.endpoints, "mode": args.mode, "variants": args.variants,
            "subnets": {variant: [str(net) for net in nets] for variant, nets in subnets.items()},
        },
        "targets": {variant: {**asdict(t), "log_paths": [str(p) for p in t.log_paths],
                              "socket_path": t.socket_path and str(t.socket_path)}
                    for variant, t in targets.items()},
        "check_connections_per_backend": spreads,
        "rounds": raw,
        "medians": medians,
        "ratios_to_bridge": {variant: m["per_second"] / base if base else None
                             for variant, m in medians.items()},
    }


def main(argv: list[str] | None = None) -> int:
    return bench.script_main("conn-rate", parse_args(argv), run,
                             lambda results: print(render(results["medians"])))


if __name__ == "__main__":
    sys.exit(main())

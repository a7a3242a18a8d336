#!/usr/bin/env python3
"""A soak: traffic through every path of one node for a long time while the node is changed
under it, watching for growth without bound, broken connections and leftovers.

Usage::

    sudo python3 bench/soak.py [--duration 600] [--churn-interval 2] [--sample-interval 5]
                               [--rate 20M] [--json bench/results/soak-<timestamp>.json]

What runs, for ``--duration`` seconds (default 10 minutes):

* Three long TCP streams (iperf3, each paced at ``--rate``, so that the machine keeps room for
  the changes): pod ``client`` to pod ``sw`` on its segment (switched), to pod ``rt`` on a second
  segment (routed), and to the ClusterIP of service ``stream`` (DNAT to one of two backends;
  ClientIP affinity, since iperf3's control and data connections must meet the same server).
* A stream of short connections from ``client`` to the ClusterIP of service ``web`` (the same two
  backends' echo servers): connect, read the answer, close, every 50 ms. Each one opens and ends a
  tracked connection, so conntrack, the endpoint choice and the flow cache's installs and
  evictions are exercised the whole time.
* Every ``--churn-interval`` seconds the next change of a cycle: a pod added with
  ``vswitchctl pod add``, the oldest of those removed, a service added with ``vswitchctl apply``,
  one removed, a churn service's settings changed (``service set``), a pod flipped unready and
  ready, and the topology file rewritten (a file-declared churn pod renamed, a label changed) and
  reloaded with SIGHUP. Nothing the streams use is touched.

Every ``--sample-interval`` seconds the daemon's RSS, open file descriptors, threads, ports and
table sizes (FDB, neighbours, conntrack, flow cache, services, affinity) are sampled.

The run fails (exit status 1) when:

* a stream or a short connection broke: an iperf3 client ended with an error or moved no data,
  or a short connection failed;
* something grew without bound: over the second half of the run, RSS rose by more than 10 %
  plus 8 MiB, or file descriptors beyond the ports' own rose by more than 8, or a table grew past
  its first-half maximum by more than half (tables fill up at first: conntrack holds each short
  connection for TIME_WAIT, so judging needs a run of at least four minutes; shorter runs report
  without judging growth; the flow cache is one of them: its sweep removes the decisions nobody
  looked up for 10 s, so it holds about what the live connections need);
* the daemon left anything behind after SIGINT (which removes everything; SIGTERM would keep
  the pods for a restart): network namespaces, TAPs or processes of the node, or its control
  socket.

Addresses are random /24s inside 10.200.0.0/13 that nothing on the host overlaps; the host port
is off, so no test address appears in the root namespace, and there is no uplink: no traffic
leaves the machine. Everything created is removed on exit, on failure, on Ctrl-C and on SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (a sibling script, not a package)
from bench import VSWITCHCTL, BenchError, Processes, in_netns  # noqa: E402
from pyroute2 import IPRoute, netns  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ECHO_SERVER = REPO / "tests" / "programs" / "echo_server.py"
STREAM_PORT = 5201
ECHO_PORT = 8080
GROWTH_JUDGED_AFTER = 240.0  # seconds: shorter runs report growth without judging it
RSS_SLACK = (0.10, 8 * 1024 * 1024)  # relative and absolute growth allowed over the second half
FD_SLACK = 8
TABLE_SLACK = 0.5

# Runs in pod ``client``: short connections to ADDRESS:PORT every INTERVAL seconds until
# SIGTERM, then one JSON line with the counts and the first failures.
SHORT_CONNECTIONS = textwrap.dedent(
    r'''
    import json, signal, socket, sys, time
    address, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ok, failed, reasons, running = 0, 0, [], True
    def stop(signum, frame):
        global running
        running = False
    signal.signal(signal.SIGTERM, stop)
    while running:
        try:
            with socket.create_connection((address, port), timeout=3) as conn:
                answer = b""
                while chunk := conn.recv(256):
                    answer += chunk
            if not answer.endswith(b"\n"):
                raise OSError(f"short answer {answer!r}")
            ok += 1
        except OSError as exc:
            failed += 1
            if len(reasons) < 10:
                reasons.append(f"{time.strftime('%H:%M:%S')} {exc}")
        time.sleep(interval)
    print(json.dumps({"ok": ok, "failed": failed, "reasons": reasons}), flush=True)
    '''
)


@dataclass
class Node:
    name: str
    subnets: list[IPv4Network]
    workdir: Path
    config: Path
    socket: Path
    pid: int
    file_generation: int = 0
    runtime_pods: list[str] = field(default_factory=list)
    runtime_services: list[str] = field(default_factory=list)
    counter: int = 0

    def ctl(self, *args: str, check: bool = True) -> Any:
        done = subprocess.run([*VSWITCHCTL, "--socket", str(self.socket), "--json", *args],
                              capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise BenchError(f"vswitchctl {' '.join(args)} failed: {done.stderr.strip()}")
        return json.loads(done.stdout) if done.stdout.strip() else None


def topology_text(node: str, subnets: list[IPv4Network], workdir: Path, generation: int) -> str:
    """The node's file; ``generation`` renames the file's churn pod and relabels a backend-free
    pod, so that each reload replaces one pod and updates one in place."""
    churn = f"file-{generation % 2}"
    return textwrap.dedent(
        f"""\
        [node]
        name = "{node}"
        pod_cidr = "{subnets[0]}"

        [host_port]
        enabled = false

        [control]
        socket = "{workdir / 'ctl.sock'}"
        state_dir = "{workdir / 'state'}"

        [cluster]
        service_cidr = "{subnets[2]}"

        [[segments]]
        name = "r"
        cidr = "{subnets[1]}"

        [[pods]]
        name = "client"

        [[pods]]
        name = "sw"

        [[pods]]
        name = "rt"
        segment = "r"
        """
    ) + "".join(textwrap.dedent(
        f"""
        [[pods]]
        name = "be-{index}"
        labels = {{ app = "web" }}
        containers = [ {{ name = "echo", command = ["{sys.executable}", "{ECHO_SERVER}", "be-{index}", "tcp:{ECHO_PORT}"] }} ]
        """) for index in (1, 2)) + textwrap.dedent(
        f"""
        [[pods]]
        name = "{churn}"
        labels = {{ app = "churn", generation = "g{generation}" }}

        [[pods]]
        name = "idle"
        labels = {{ app = "idle", generation = "g{generation}" }}

        [[services]]
        name = "web"
        cluster_ip = "{subnets[2].network_address + 20}"
        selector = {{ app = "web" }}
        ports = [ {{ port = 80, target_port = {ECHO_PORT} }} ]

        [[services]]
        name = "stream"
        cluster_ip = "{subnets[2].network_address + 21}"
        selector = {{ app = "web" }}
        session_affinity = "ClientIP"
        ports = [ {{ port = {STREAM_PORT}, target_port = {STREAM_PORT} }} ]

        [[services]]
        name = "churn"
        selector = {{ app = "churn" }}
        ports = [ {{ port = 80 }} ]
        """)


def start_node(stack: contextlib.ExitStack, procs: Processes, suffix: str) -> Node:
    subnets = bench.free_subnets((24, 24, 24))
    name = f"k{suffix}"
    holder: dict[str, Path] = {}

    def render(workdir: Path) -> str:
        holder["workdir"] = workdir
        return topology_text(name, subnets, workdir, 0)

    bench.start_vswitchd(stack, procs, "soak", name, render)
    workdir = holder["workdir"]
    socket_path = workdir / "ctl.sock"
    status = Node(name, subnets, workdir, workdir / "topology.toml", socket_path, 0)
    status.pid = int(status.ctl("status")["pid"])
    return status


def pod_netns(node: Node, pod: str) -> str:
    return f"vsw-{node.name}.default.{pod}"


def pod_ip(node: Node, pod: str) -> str:
    return next(row["ip"] for row in node.ctl("pods") if row["name"] == pod)


def start_traffic(procs: Processes, node: Node, duration: float, rate: str
                  ) -> dict[str, subprocess.Popen]:
    """The iperf3 servers and clients and the short-connection client, all started."""
    targets = {"switched": ("sw", pod_ip(node, "sw")), "routed": ("rt", pod_ip(node, "rt")),
               "service": ("be-1", str(node.subnets[2].network_address + 21))}
    for server in ("sw", "rt", "be-1", "be-2"):
        procs.start(in_netns(pod_netns(node, server), "iperf3", "-s", "-p", str(STREAM_PORT)),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    clients = {}
    for path, (_, address) in targets.items():
        clients[path] = procs.start(
            in_netns(pod_netns(node, "client"), "iperf3", "-c", address, "-p", str(STREAM_PORT),
                     "-t", str(int(duration)), "-b", rate, "-J"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients["short"] = procs.start(
        in_netns(pod_netns(node, "client"), sys.executable, "-c", SHORT_CONNECTIONS,
                 str(node.subnets[2].network_address + 20), "80", "0.05"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return clients


def churn_step(node: Node, step: int) -> str:
    """The ``step``-th change of the cycle; returns what it did."""
    action = step % 7
    if action == 0:
        node.counter += 1
        pod = f"churn-{node.counter}"
        node.ctl("pod", "add", pod, "--label", "app=churn")
        node.runtime_pods.append(pod)
        return f"pod add {pod}"
    if action == 1 and node.runtime_pods:
        pod = node.runtime_pods.pop(0)
        node.ctl("pod", "del", pod)
        return f"pod del {pod}"
    if action == 2:
        node.counter += 1
        service = f"extra-{node.counter}"
        fragment = node.workdir / "fragment.toml"
        fragment.write_text(f'[[services]]\nname = "{service}"\nselector = {{ app = "churn" }}\n'
                            'ports = [ { port = 81 } ]\n')
        node.ctl("apply", str(fragment))
        node.runtime_services.append(service)
        return f"apply service {service}"
    if action == 3 and node.runtime_services:
        service = node.runtime_services.pop(0)
        node.ctl("service", "del", service)
        return f"service del {service}"
    if action == 4:
        mode = "ClientIP" if step % 14 == 4 else "None"
        node.ctl("service", "set", "churn", f"session_affinity={mode}")
        return f"service set churn session_affinity={mode}"
    if action == 5:
        node.ctl("pod", "unready", "idle")
        node.ctl("pod", "ready", "idle")
        return "pod unready/ready idle"
    node.file_generation += 1
    node.config.write_text(topology_text(node.name, node.subnets, node.workdir,
                                         node.file_generation))
    # The reload removes the pods and services added at runtime, as the file is the truth.
    node.runtime_pods.clear()
    node.runtime_services.clear()
    result = node.ctl("reload")
    return f"reload: {result.get('summary') if isinstance(result, dict) else result}"


def sample(node: Node, started: float) -> dict[str, Any]:
    proc = Path(f"/proc/{node.pid}")
    status = (proc / "status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stats = node.ctl("stats")
    conntrack = stats.get("conntrack", {})
    return {
        "t": round(time.monotonic() - started, 1),
        "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
        "fds": len(os.listdir(proc / "fd")),
        "threads": int(fields["Threads"]),
        "ports": len(stats.get("ports", {})),
        "fdb": stats.get("fdb", {}).get("entries", 0),
        "neighbors": stats.get("neighbors", {}).get("entries", 0),
        "conntrack": conntrack.get("entries", conntrack.get("count", 0)),
        "flow_cache": stats.get("flow_cache", {}).get("entries", 0),
        "flow_cache_capacity": stats.get("flow_cache", {}).get("capacity", 0),
        "services": stats.get("services", {}).get("programmed", 0),
        "affinity": stats.get("services", {}).get("affinity_entries", 0),
    }


# Tables that hold what the node's state holds: they must level off.
TABLES = ("fdb", "neighbors", "conntrack", "flow_cache", "services", "affinity", "threads")


def growth_problems(samples: list[dict[str, Any]], duration: float) -> list[str]:
    """What grew without bound over the second half of the run (see the module docstring)."""
    if duration < GROWTH_JUDGED_AFTER or len(samples) < 8:
        return []
    half = len(samples) // 2
    first, second = samples[:half], samples[half:]
    problems = []
    start_rss, end_rss = second[0]["rss_bytes"], max(s["rss_bytes"] for s in second[-3:])
    allowed = start_rss * RSS_SLACK[0] + RSS_SLACK[1]
    if end_rss - start_rss > allowed:
        problems.append(f"RSS rose from {start_rss >> 20} to {end_rss >> 20} MiB over the "
                        f"second half (allowed {int(allowed) >> 20} MiB)")
    own = [s["fds"] - s["ports"] for s in samples]
    if own[-1] - min(own[half:]) > FD_SLACK:
        problems.append(f"file descriptors beyond the ports' rose from {min(own[half:])} to "
                        f"{own[-1]} over the second half")
    for table in TABLES:
        ceiling = max(s[table] for s in first)
        peak = max(s[table] for s in second)
        if peak > ceiling * (1 + TABLE_SLACK) + 8:
            problems.append(f"{table} reached {peak} in the second half, past the first "
                            f"half's maximum {ceiling}")
    return problems


def traffic_problems(clients: dict[str, subprocess.Popen]) -> tuple[dict[str, Any], list[str]]:
    """Stop the clients (iperf3 ends by itself) and judge what each reports."""
    results: dict[str, Any] = {}
    problems = []
    short = clients.pop("short")
    short.send_signal(signal.SIGTERM)
    for path, client in clients.items():
        try:
            out, err = client.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            client.kill()
            out, err = client.communicate()
        try:
            report = json.loads(out)
        except ValueError:
            problems.append(f"{path} stream: iperf3 printed no JSON (exit {client.returncode}): "
                            f"{err.strip()[:300]}")
            continue
        received = report.get("end", {}).get("sum_received", {})
        results[path] = {"bytes": received.get("bytes", 0),
                         "gbit_s": round(received.get("bits_per_second", 0) / 1e9, 3),
                         "error": report.get("error")}
        if report.get("error") or not received.get("bytes"):
            problems.append(f"{path} stream broke: {report.get('error') or 'no data moved'}")
    out, err = short.communicate(timeout=30)
    try:
        counts = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        problems.append(f"short connections: no report ({err.strip()[:300]})")
    else:
        results["short"] = counts
        if counts["failed"] or not counts["ok"]:
            problems.append(f"short connections: {counts['failed']} of "
                            f"{counts['ok'] + counts['failed']} failed: {counts['reasons']}")
    return results, problems


def leftovers(node: Node, taps: set[str]) -> list[str]:
    found = [f"netns {name}" for name in netns.listnetns()
             if name.startswith(f"vsw-{node.name}.")]
    with IPRoute() as ipr:
        names = {link.get("IFLA_IFNAME") for link in ipr.get_links()}
    found += [f"tap {name}" for name in sorted(taps & names)]
    if node.socket.exists():
        found.append(f"control socket {node.socket}")
    if node.pid:
        found.append(f"vswitchd {node.pid} still running")
    return found


def stop_daemon(node: Node) -> int | None:
    """SIGINT the daemon (our child: stop and remove everything) and reap it; its exit status,
    or None if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(node.pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status = os.waitpid(node.pid, os.WNOHANG)
        if pid:
            node.pid = 0
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    return None


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    bench.preflight()
    suffix = secrets.token_hex(2)
    procs = Processes()
    with contextlib.ExitStack() as stack:
        stack.callback(procs.end_all)
        node = start_node(stack, procs, suffix)
        log(f"node {node.name} ready (pid {node.pid}); soaking for {args.duration:.0f} s")
        clients = start_traffic(procs, node, args.duration, args.rate)
        taps = {row["device"] for row in node.ctl("pods")}
        started = time.monotonic()
        samples = [sample(node, started)]
        changes: list[str] = []
        next_churn = started + args.churn_interval
        next_sample = started + args.sample_interval
        step = 0
        while time.monotonic() - started < args.duration:
            now = time.monotonic()
            if now >= next_churn:
                changes.append(churn_step(node, step))
                taps |= {row["device"] for row in node.ctl("pods")}
                step += 1
                next_churn = now + args.churn_interval
            if now >= next_sample:
                samples.append(sample(node, started))
                next_sample = now + args.sample_interval
                if len(samples) % 12 == 0:
                    last = samples[-1]
                    log(f"{last['t']:.0f} s: RSS {last['rss_bytes'] >> 20} MiB, "
                        f"{last['fds']} fds, conntrack {last['conntrack']}, "
                        f"{len(changes)} changes")
            time.sleep(0.1)
        samples.append(sample(node, started))
        traffic, problems = traffic_problems(clients)
        problems += growth_problems(samples, args.duration)
        code = stop_daemon(node)
        if code not in (0, None):
            problems.append(f"vswitchd exited with status {code} on SIGINT")
        left = leftovers(node, taps)
        problems += [f"left behind: {item}" for item in left]
    rss = [s["rss_bytes"] for s in samples]
    results = {
        "duration_s": args.duration,
        "changes": len(changes),
        "reloads": sum(1 for c in changes if c.startswith("reload")),
        "traffic": traffic,
        "rss_mib": {"start": round(rss[0] / 2**20, 1), "max": round(max(rss) / 2**20, 1),
                    "end": round(rss[-1] / 2**20, 1)},
        "samples": samples,
        "growth_judged": args.duration >= GROWTH_JUDGED_AFTER,
        "problems": problems,
        "machine": bench.machine_info(),
    }
    if problems:
        report(results)
        raise BenchError("the soak failed:\n  " + "\n  ".join(problems))
    return results


def report(results: dict) -> None:
    samples = results["samples"]
    print(f"soak of {results['duration_s']:.0f} s: {results['changes']} changes "
          f"({results['reloads']} reloads)")
    for path, figures in results["traffic"].items():
        print(f"  {path:9} {figures}")
    rss = results["rss_mib"]
    print(f"  RSS MiB start {rss['start']}, max {rss['max']}, end {rss['end']}")
    columns = ("t", "fds", "ports", "fdb", "neighbors", "conntrack", "flow_cache", "services",
               "affinity", "threads")
    print("  " + " ".join(f"{c:>10}" for c in columns))
    step = max(1, len(samples) // 10)
    for row in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print("  " + " ".join(f"{row[c]:>10}" for c in columns))
    if not results["growth_judged"]:
        print(f"  (growth not judged: runs shorter than {GROWTH_JUDGED_AFTER:.0f} s only report)")
    for problem in results["problems"]:
        print(f"  PROBLEM: {problem}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--churn-interval", type=float, default=2.0,
                        help="seconds between changes (default 2)")
    parser.add_argument("--sample-interval", type=float, default=5.0,
                        help="seconds between samples (default 5)")
    parser.add_argument("--rate", default="20M", help="each stream's iperf3 -b (default 20M)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="where to write the results (default bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if args.duration <= 10 or args.churn_interval <= 0 or args.sample_interval <= 0:
        parser.error("--duration must exceed 10 s; the intervals must be positive")
    if args.json_path is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json_path = str(REPO / "bench" / "results" / f"soak-{stamp}.json")
    return args


def main(argv: list[str] | None = None) -> int:
    return bench.script_main("soak", parse_args(argv), run, report)


if __name__ == "__main__":
    sys.exit(main())

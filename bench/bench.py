#!/usr/bin/env python3
"""Throughput and latency of vswitchd next to the kernel bridge, measured in the same run.

Usage::

    sudo python3 bench/bench.py [--rounds 3] [--duration 5] [--variants bridge,vswitch,...]
                                [--json bench/results/bench-<timestamp>.json]

Each variant joins two fresh network namespaces:

``bridge``
    a Linux bridge and two veth pairs, which is what the bridge CNI plugin builds; the reference.
``vswitch``
    ``vswitchd`` with two pods, started from a generated topology, offloads on.
``vswitch-nooffload``
    the same with ``dataplane.offloads = false``, to show what the virtio-net header buys.
``vswitch-routed``
    ``vswitchd`` with two segments (two /24s, both MTU 1500) and one pod on each, offloads on, so
    that every packet crosses the userspace router: route lookup, TTL decrement, MAC rewrite
    towards an ARP-resolved next hop. Its distance from ``vswitch`` is the router's per-packet cost.
``vswitch-clusterip``
    ``vswitchd`` with two pods and a ClusterIP service selecting ``b``: the client in ``a`` talks
    to the service's virtual IP, so every packet of the control connection, the data streams and
    the UDP test is tracked, DNATed to ``b`` and its replies reverse-NATed.
``vswitch-nodeport``
    ``vswitchd`` with an uplink whose far side is a namespace playing the internet; the client
    there talks to the node's address on a node port (externalTrafficPolicy Cluster), so every
    packet is DNATed to pod ``b``, SNATed to the node address and routed between the uplink and
    the pod segment.
``kernel-vxlan``, ``vswitch-overlay``
    pod ``a`` on one node, pod ``b`` on another, over VXLAN on a shared bridge underlay: two nodes
    made of kernel parts as flannel makes them, or two ``vswitchd`` nodes with an ``[overlay]``
    and each other as static peers (``cross_node.py``). Besides the ratios to the bridge, the run
    reports ``vswitch-overlay`` against ``vswitch`` (the cost of crossing nodes) and against
    ``kernel-vxlan`` (vswitch against the kernel's own VXLAN path).
``c-tap-loop``, ``vde``
    other userspace datapaths over TAPs (``peers.py``): a bare C loop (``tap_loop.c``, compiled
    for the run) that writes every frame of one TAP, virtio-net header and all, to the other;
    and ``vde_switch`` with a TAP on each of two ports. Skipped, with the reason, when gcc or
    ``vde_switch`` is not installed.
``ovs``
    Open vSwitch's userspace datapath with TSO, a netdev bridge and two internal ports, from a
    private ovsdb-server and ovs-vswitchd (``peers.py``); skipped when not installed.

Every variant is also given as a ratio to each of the userspace peers measured in the same run
(``c-tap-loop``, the floor a userspace datapath over TAPs stands on; ``vde``; ``ovs``).

iperf3 uses one port number for its TCP control connection and its data (TCP or UDP), so the
service variants map TCP and UDP port ``SERVICE_PORT`` to the same port on ``b``, and the server
listens there rather than on a random port. ICMP echo does not go through a service, so the
service variants have no RTT figure.

Before a variant is measured, echoes from ``a`` to ``b`` must come back, with the TTL the variant
promises (one less than ``b`` sent for the routed case, two less across nodes, untouched
otherwise), so that a datapath that does not forward, or forwards the wrong way, stops the run
with a clear error instead of producing figures. A service variant must in addition carry a
short iperf3 run through its service (and the node answers the internet's echoes for its own
address in the NodePort case).

All variants are built first, then measured interleaved (round 1 of every variant, then round 2…),
so that a slow minute of a noisy VM spreads over all of them instead of landing on one. Per round:
iperf3 TCP throughput, iperf3 UDP with 64-byte payloads at unlimited rate (packets/s received and
loss), and the round-trip time of small ICMP echoes. The figure reported is the median over rounds,
and each is given as a ratio to the bridge measured in the same run, since absolute numbers move
with the machine and ratios are what can be compared across runs.

Traffic only flows between the namespaces of a variant, on addresses of random /24s inside
10.200.0.0/13 that nothing on the host uses (one per variant; two for the routed and the
ClusterIP one, whose service CIDR takes the second; three for the NodePort one, whose uplink
takes the third; a /24 underlay and a /23 cluster for each cross-node one). Everything
created (namespaces, bridge, veths, TAPs, daemons, iperf3 processes, the compiled loop) carries
a random suffix and is removed on exit, on failure, on Ctrl-C and on SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pyroute2 import IPRoute, netns

import cross_node
import peers
from vswitch.config import ConfigError, load_topology
from vswitch.model import Topology

REPO = Path(__file__).resolve().parent.parent
TEST_SUPERNET = IPv4Network("10.200.0.0/13")
VARIANTS = ("bridge", "vswitch", "vswitch-nooffload", "vswitch-routed", "vswitch-clusterip",
            "vswitch-nodeport", *cross_node.VARIANTS, *peers.VARIANTS)
SERVICE_VARIANTS = ("vswitch-clusterip", "vswitch-nodeport")
SERVICE_PORT = 5201  # iperf3's default; the service port and the target port on ``b``
NODE_PORT = 30201  # for TCP and UDP alike: iperf3 sends both to one port number
# The routed variant's second segment, where pod ``b`` lives.
ROUTED_SEGMENT = "b"
READY_MARKER = "vswitchd ready"
READY_TIMEOUT = 30.0
# ``sys.exit`` around the entry point, as the console-script wrapper does: the functions return
# the exit status, and a bare call would turn every failure into status 0.
VSWITCHD = (sys.executable, "-c", "import sys; from vswitch.cli import vswitchd_main as m; sys.exit(m())")
VSWITCHCTL = (sys.executable, "-c", "import sys; from vswitch.cli import vswitchctl_main as m; sys.exit(m())")
UDP_PAYLOAD = 64

# Runs inside a namespace. It sends echoes at a fixed interval and measures each round trip with
# perf_counter, so the figure includes one Python send and receive on top of the datapath; that
# overhead is the same for every variant. iputils ping is not assumed to be installed.
PING_SCRIPT = textwrap.dedent(
    r'''
    import json, os, select, socket, struct, sys, time

    def checksum(data):
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    target, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts, ttls, lost = [], [], 0
    for seq in range(1, count + 1):
        payload = b"vswitch-bench-rtt-%06d" % seq
        header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
        start = time.perf_counter()
        sock.sendto(packet, (target, 0))
        deadline = start + 1.0
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                lost += 1
                break
            data, (source, _) = sock.recvfrom(4096)
            now = time.perf_counter()
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind == 0 and rid == ident and rseq == seq and source == target:
                rtts.append((now - start) * 1e6)
                ttls.append(data[8])
                break
        time.sleep(interval)
    print(json.dumps({"rtts_us": rtts, "ttls": ttls, "lost": lost}))
    '''
)


class BenchError(RuntimeError):
    """A setup or measurement step failed; the message says which and shows the tool's output."""


@dataclass(frozen=True)
class Pair:
    """Two namespaces that can reach each other through the datapath under test.

    ``hops`` is the number of routers between them, which is what the TTL of a reply must show:
    a switch forwards frames without touching the IP header, a router decrements the TTL.

    A service variant's client does not talk to ``ip_b`` but to ``target_ip:target_port`` (the
    cluster IP, or the node's address and node port), which the daemon translates to
    ``ip_b:server_port``. ``ping_ip`` is what the forwarding check pings from ``a``: ``ip_b``
    where ``a`` is a pod, the node's own address from the internet namespace.
    """

    variant: str
    ns_a: str
    ns_b: str
    ip_a: str
    ip_b: str
    hops: int = 0
    target_ip: str | None = None
    target_port: int | None = None
    server_port: int | None = None
    ping_ip: str | None = None

    @property
    def via_service(self) -> bool:
        return self.target_ip is not None


# ---------------------------------------------------------------------------------------------
# Names, addresses, processes
# ---------------------------------------------------------------------------------------------


def taken_networks() -> list[IPv4Network]:
    networks: list[IPv4Network] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=2):
            networks.append(
                IPv4Network(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False))
        for msg in ipr.get_routes(family=2):
            if msg.get("RTA_DST") is not None and msg["dst_len"] > 0:
                networks.append(IPv4Network(f"{msg.get('RTA_DST')}/{msg['dst_len']}", strict=False))
    return networks


def subnets_needed(variant: str) -> tuple[int, ...]:
    """The prefix lengths of the networks a variant takes, in the order it uses them."""
    if variant in cross_node.VARIANTS:
        return cross_node.PREFIX_LENGTHS
    return {"vswitch-routed": (24, 24), "vswitch-clusterip": (24, 24),
            "vswitch-nodeport": (24, 24, 24)}.get(variant, (24,))


def free_subnets(prefix_lengths: Sequence[int]) -> list[IPv4Network]:
    """Distinct random networks of these prefix lengths in 10.200.0.0/13 that overlap nothing on
    this host, in the order asked."""
    taken = taken_networks()
    chosen: list[IPv4Network] = []
    for prefixlen in prefix_lengths:
        size = 2 ** (32 - prefixlen)
        for _ in range(1000):
            index = random.randrange(TEST_SUPERNET.num_addresses // size)
            net = IPv4Network((int(TEST_SUPERNET.network_address) + index * size, prefixlen))
            if not any(net.overlaps(other) for other in taken + chosen):
                chosen.append(net)
                break
        else:
            raise BenchError(f"no free /{prefixlen} left in {TEST_SUPERNET}")
    return chosen


def in_netns(name: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{name}", *cmd]


class Processes:
    """Every child process the benchmark starts, so that cleanup can end them all by pid."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **kwargs)
        self._children.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        proc = self.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise BenchError(f"{' '.join(argv)} timed out after {timeout} s\n{out}{err}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def end_all(self) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._children.clear()


# ---------------------------------------------------------------------------------------------
# Datapaths
# ---------------------------------------------------------------------------------------------


def _configure_pod_side(ns: str, ifname: str, address: str, prefixlen: int) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, ifname="eth0")
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def build_bridge(stack: contextlib.ExitStack, suffix: str, subnet: IPv4Network) -> Pair:
    """Two namespaces, each with a veth whose other end is a port of one Linux bridge."""
    ns_a, ns_b = f"vbench-{suffix}-a", f"vbench-{suffix}-b"
    bridge = f"vbbr-{suffix}"
    ip_a, ip_b = str(subnet.network_address + 10), str(subnet.network_address + 11)
    for ns in (ns_a, ns_b):
        netns.create(ns)
        stack.callback(_remove_netns, ns)
    with IPRoute() as ipr:
        ipr.link("add", ifname=bridge, kind="bridge")
        stack.callback(_delete_link, bridge)
        bridge_index = ipr.link_lookup(ifname=bridge)[0]
        ipr.link("set", index=bridge_index, state="up")
        for n, ns in enumerate((ns_a, ns_b)):
            host_end, pod_end = f"vbh{n}-{suffix}", f"vbp{n}-{suffix}"
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": pod_end, "net_ns_fd": ns})
            stack.callback(_delete_link, host_end)
            index = ipr.link_lookup(ifname=host_end)[0]
            ipr.link("set", index=index, master=bridge_index, state="up")
    _configure_pod_side(ns_a, f"vbp0-{suffix}", ip_a, subnet.prefixlen)
    _configure_pod_side(ns_b, f"vbp1-{suffix}", ip_b, subnet.prefixlen)
    return Pair("bridge", ns_a, ns_b, ip_a, ip_b)


def uplink_netns(node: str) -> str:
    """The internet namespace of the NodePort variant; not ``vsw-``, which names pods' namespaces."""
    return f"vbi-{node}"


def cluster_ip(subnets: list[IPv4Network]) -> str:
    return str(subnets[1].network_address + 10)


def uplink_addresses(subnets: list[IPv4Network]) -> tuple[str, str]:
    """(node address, gateway): the node owns network + 2, the internet namespace network + 1."""
    return str(subnets[2].network_address + 2), str(subnets[2].network_address + 1)


def service_sections(variant: str, node: str, subnets: list[IPv4Network]) -> str:
    """``[cluster]``, the uplink for NodePort, and one service selecting pod ``b``."""
    nodeport = variant == "vswitch-nodeport"
    text = textwrap.dedent(
        f"""
        [cluster]
        cidr = "{subnets[0]}"
        service_cidr = "{subnets[1]}"
        """
    )
    if nodeport:
        address, gateway = uplink_addresses(subnets)
        text += textwrap.dedent(
            f"""
            [uplink]
            address = "{address}/{subnets[2].prefixlen}"
            gateway = "{gateway}"
            netns = "{uplink_netns(node)}"
            """
        )
    node_port = f", node_port = {NODE_PORT}" if nodeport else ""
    ports = ", ".join(
        f'{{ name = "{proto}", protocol = "{proto}", port = {SERVICE_PORT}, '
        f'target_port = {SERVICE_PORT}{node_port} }}' for proto in ("tcp", "udp"))
    return text + textwrap.dedent(
        f"""
        [[services]]
        name = "iperf"
        cluster_ip = "{cluster_ip(subnets)}"
        type = "{'NodePort' if nodeport else 'ClusterIP'}"
        selector = {{ app = "iperf" }}
        """
    ) + f"ports = [ {ports} ]\n"


def vswitch_topology(variant: str, node: str, subnets: list[IPv4Network], offloads: bool,
                     workdir: Path) -> str:
    """Pod ``a`` on the default segment; pod ``b`` on it too, or on a second segment for the
    routed variant; for the service variants, a service selecting ``b`` (and an uplink).

    Both segments keep MTU 1500, so that the routed variant differs from ``vswitch`` only by the
    router's work and not by smaller segments.
    """
    # The host port stays off: the benchmark measures pod to pod, and no address of the test /24s
    # should appear in the root namespace.
    routed = variant == "vswitch-routed"
    segment = textwrap.dedent(
        f"""\

        [[segments]]
        name = "{ROUTED_SEGMENT}"
        cidr = "{subnets[1]}"
        mtu = 1500
        """
    ) if routed else ""
    pod_b_segment = f'segment = "{ROUTED_SEGMENT}"' if routed else ""
    pod_b_labels = 'labels = { app = "iperf" }' if variant in SERVICE_VARIANTS else ""
    services = service_sections(variant, node, subnets) if variant in SERVICE_VARIANTS else ""
    return textwrap.dedent(
        f"""\
        [node]
        name = "{node}"
        pod_cidr = "{subnets[0]}"
        mtu = 1500

        [host_port]
        enabled = false

        [dataplane]
        offloads = {"true" if offloads else "false"}

        [control]
        socket = "{workdir / 'ctl.sock'}"
        state_dir = "{workdir / 'state'}"
        """
    ) + segment + services + textwrap.dedent(
        f"""\

        [[pods]]
        name = "a"

        [[pods]]
        name = "b"
        {pod_b_segment}
        {pod_b_labels}
        """
    )


def start_vswitchd(stack: contextlib.ExitStack, procs: Processes, variant: str, node: str,
                   render: Callable[[Path], str], hint: str = "") -> tuple[Topology, Path]:
    """Start vswitchd for ``node`` on the topology ``render(workdir)`` writes and wait until it is
    ready; returns the loaded topology and the daemon's log file. ``hint`` explains a failure."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vswbench-{node}-"))
    stack.callback(shutil.rmtree, workdir, True)
    (workdir / "state").mkdir()
    config = workdir / "topology.toml"
    config.write_text(render(workdir))
    explained = f"\n{hint}" if hint else ""
    # The daemon's own loader says which addresses and namespaces the pods get, so the benchmark
    # does not repeat its allocation rules; it also rejects a bad topology before anything starts.
    try:
        topology = load_topology(config)
    except ConfigError as exc:
        raise BenchError(f"generated topology for {variant} is invalid: {exc}"
                         f"{explained}") from None
    log_path = workdir / "vswitchd.log"
    log = open(log_path, "wb")
    stack.callback(log.close)
    # --no-standby: the hot standby forwards nothing while it waits; started right after the
    # daemon is ready, its imports would only add CPU to the first seconds of a measurement.
    daemon = procs.start([*VSWITCHD, "--config", str(config), "--no-standby"], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir)
    if variant == "vswitch-nodeport":
        # The daemon creates the internet namespace and removes it when it stops; this removes
        # it should the daemon have been unable to (callbacks run last-registered first).
        stack.callback(_remove_netns, uplink_netns(node))
    stack.callback(_stop_daemon, daemon, config, workdir / "ctl.sock", node)
    deadline = time.monotonic() + READY_TIMEOUT
    while READY_MARKER not in log_path.read_text(errors="replace"):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"vswitchd {node} ({variant}) did not become ready; log:\n"
                             f"{log_path.read_text(errors='replace')}{explained}")
        time.sleep(0.05)
    return topology, log_path


def build_vswitch(stack: contextlib.ExitStack, procs: Processes, variant: str, suffix: str,
                  subnets: list[IPv4Network], offloads: bool) -> tuple[Pair, Path]:
    """Start vswitchd on a generated topology; returns the pair and the daemon's log file."""
    # The node name goes into namespace names, so each variant needs its own letter.
    letter = {"vswitch": "", "vswitch-nooffload": "n", "vswitch-routed": "r",
              "vswitch-clusterip": "c", "vswitch-nodeport": "p"}[variant]
    node = f"b{suffix}{letter}"
    topology, log_path = start_vswitchd(
        stack, procs, variant, node,
        lambda workdir: vswitch_topology(variant, node, subnets, offloads, workdir))
    pod_a, pod_b = topology.pod("a"), topology.pod("b")
    if variant == "vswitch-clusterip":
        pair = Pair(variant, pod_a.netns, pod_b.netns, str(pod_a.ip), str(pod_b.ip),
                    target_ip=cluster_ip(subnets), target_port=SERVICE_PORT,
                    server_port=SERVICE_PORT)
    elif variant == "vswitch-nodeport":
        address, gateway = uplink_addresses(subnets)
        pair = Pair(variant, uplink_netns(node), pod_b.netns, gateway, str(pod_b.ip),
                    target_ip=address, target_port=NODE_PORT, server_port=SERVICE_PORT,
                    ping_ip=address)
    else:
        pair = Pair(variant, pod_a.netns, pod_b.netns, str(pod_a.ip), str(pod_b.ip),
                    hops=1 if variant == "vswitch-routed" else 0)
    return pair, log_path


def build_cross_node(stack: contextlib.ExitStack, procs: Processes, variant: str, suffix: str,
                     subnets: list[IPv4Network]) -> tuple[Pair, list[Path]]:
    """A pod on node one and a pod on node two (see cross_node.py); returns the daemons' logs."""
    logs: list[Path] = []
    if variant == cross_node.KERNEL_VXLAN:
        ends = cross_node.build_kernel_vxlan(stack, subnets)
    else:
        def start(variant: str, node: str, render: Callable[[Path], str]) -> tuple[Topology, Path]:
            return start_vswitchd(stack, procs, variant, node, render, cross_node.OVERLAY_HINT)

        ends, logs = cross_node.build_vswitch_overlay(stack, start, suffix, subnets)
    return Pair(variant, ends.ns_a, ends.ns_b, ends.ip_a, ends.ip_b, hops=ends.hops), logs


def build_peer(stack: contextlib.ExitStack, procs: Processes, variant: str, suffix: str,
               subnet: IPv4Network) -> Pair:
    """Two namespaces joined by a peer datapath (see peers.py), addressed as the bridge's."""
    try:
        joined = peers.build(stack, procs.start, variant, suffix)
    except peers.PeerError as exc:
        raise BenchError(f"{variant}: {exc}") from None
    ip_a, ip_b = str(subnet.network_address + 10), str(subnet.network_address + 11)
    _configure_pod_side(joined.ns_a, joined.port_a, ip_a, subnet.prefixlen)
    _configure_pod_side(joined.ns_b, joined.port_b, ip_b, subnet.prefixlen)
    return Pair(variant, joined.ns_a, joined.ns_b, ip_a, ip_b)


def _stop_daemon(daemon: subprocess.Popen, config: Path, socket_path: Path, node: str) -> None:
    """SIGINT: the daemon stops and removes its pods (SIGTERM would keep them for a restart)."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    if any(name.startswith(f"vsw-{node}.") for name in netns.listnetns()):
        subprocess.run([*VSWITCHCTL, "--socket", str(socket_path), "clean", "--config", str(config)],
                       capture_output=True, timeout=60)
    for name in netns.listnetns():
        if name.startswith(f"vsw-{node}."):
            _remove_netns(name)


def _remove_netns(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


def _delete_link(name: str) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def iperf_server(procs: Processes, pair: Pair, port: int) -> Iterator[None]:
    """A one-off iperf3 server in namespace b, listening before the block starts."""
    server = procs.start(
        in_netns(pair.ns_b, "iperf3", "-s", "-1", "-B", pair.ip_b, "-p", str(port), "--forceflush"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )
    assert server.stdout is not None
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        seen.append(line)
        if "Server listening" in line:
            break
        if not line and server.poll() is not None:
            break
    else:
        server.kill()
    if not seen or "Server listening" not in seen[-1]:
        server.kill()
        server.wait()
        raise BenchError(f"iperf3 server in {pair.ns_b} did not start:\n{''.join(seen)}")
    try:
        yield
    finally:
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def iperf_client(procs: Processes, pair: Pair, port: int, duration: float, *extra: str) -> dict:
    """iperf3 from ``a`` to the server on ``b``: directly, or through the variant's service."""
    host = pair.target_ip or pair.ip_b
    port = pair.target_port or port
    argv = in_netns(pair.ns_a, "iperf3", "-c", host, "-p", str(port), "-t", str(duration),
                    "-J", *extra)
    result = procs.run(argv, timeout=duration + 60)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 printed no JSON:\n{result.stdout}{result.stderr}") from None
    if result.returncode != 0 or "error" in report:
        raise BenchError(f"iperf3 {' '.join(extra)} failed on {pair.variant}: "
                         f"{report.get('error', result.stderr)}")
    return report["end"]


def server_port(pair: Pair) -> int:
    """A service targets one fixed port; a direct pair takes a fresh one per test."""
    return pair.server_port or random.randrange(20000, 60000)


def measure_tcp(procs: Processes, pair: Pair, duration: float) -> dict:
    port = server_port(pair)
    with iperf_server(procs, pair, port):
        end = iperf_client(procs, pair, port, duration)
    return {
        "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits"),
    }


def measure_udp(procs: Processes, pair: Pair, duration: float) -> dict:
    """64-byte datagrams as fast as the sender can: what the datapath delivers per second.

    The receiver's count is what matters; at an unlimited rate the sender always outruns a
    one-frame-per-syscall datapath, and the loss shows by how much.
    """
    port = server_port(pair)
    with iperf_server(procs, pair, port):
        end = iperf_client(procs, pair, port, duration, "-u", "-l", str(UDP_PAYLOAD), "-b", "0")
    received = end["sum_received"]
    sent_packets = end["sum_sent"]["packets"]
    delivered = max(sent_packets - received["lost_packets"], 0)
    seconds = received["seconds"] or duration
    return {
        "sent_kpps": sent_packets / seconds / 1e3,
        "received_kpps": delivered / seconds / 1e3,
        "loss_percent": received["lost_percent"],
    }


def run_pinger(procs: Processes, pair: Pair, count: int, interval: float) -> dict:
    """Echoes from ``a`` to ``b``: ``{"rtts_us": [...], "ttls": [...], "lost": n}``."""
    result = procs.run(
        in_netns(pair.ns_a, sys.executable, "-c", PING_SCRIPT, pair.ping_ip or pair.ip_b, str(count),
                 str(interval)),
        timeout=count * (interval + 1.0) + 30,
    )
    if result.returncode != 0:
        raise BenchError(f"pinger failed on {pair.variant}:\n{result.stderr}")
    return json.loads(result.stdout)


def measure_rtt(procs: Processes, pair: Pair, count: int, interval: float) -> dict:
    data = run_pinger(procs, pair, count, interval)
    rtts = sorted(data["rtts_us"])
    if not rtts:
        raise BenchError(f"no echo reply at all on {pair.variant}")
    p99_index = min(len(rtts) - 1, max(0, round(0.99 * len(rtts)) - 1))
    return {
        "median_us": statistics.median(rtts),
        "p99_us": rtts[p99_index],
        "lost": data["lost"],
    }


def default_ttl(procs: Processes, ns: str) -> int:
    """The TTL the kernel in ``ns`` puts on what it sends; the sysctl is per namespace."""
    result = procs.run(in_netns(ns, "cat", "/proc/sys/net/ipv4/ip_default_ttl"), timeout=10)
    if result.returncode != 0:
        raise BenchError(f"cannot read ip_default_ttl in {ns}: {result.stderr}")
    return int(result.stdout)


def check_forwarding(procs: Processes, pair: Pair, log_paths: Sequence[Path]) -> None:
    """Refuse to measure a datapath that does not forward, or that forwards the wrong way.

    The echoes also resolve neighbours (the pods' ARP for each other or for their gateway, and
    the router's ARP for its next hop) and fill the flow cache, so that none of that is timed.
    """
    count = 10
    data = run_pinger(procs, pair, count, 0.01)
    target = pair.ping_ip or pair.ip_b
    where = f"{pair.variant}: {pair.ip_a} ({pair.ns_a}) -> {target}"
    if not data["rtts_us"]:
        raise BenchError(f"{where}: none of {count} echoes was answered within 1 s; the datapath "
                         f"does not forward{log_tail(log_paths)}")
    if pair.via_service:
        check_service(procs, pair, log_paths)
    if target != pair.ip_b:
        return  # the node answered for its own address; b's TTL says nothing about that
    expected = default_ttl(procs, pair.ns_b) - pair.hops
    wrong = sorted({ttl for ttl in data["ttls"] if ttl != expected})
    if wrong:
        path = (f"{pair.hops} router hop{'s' * (pair.hops != 1)} on the path" if pair.hops
                else "no router on the path")
        raise BenchError(f"{where}: echo replies arrive with TTL {wrong}, expected {expected} "
                         f"({path}){log_tail(log_paths)}")


def check_service(procs: Processes, pair: Pair, log_paths: Sequence[Path]) -> None:
    """One second of iperf3 through the service: the control connection and a data stream must
    reach ``b`` and come back translated, or the run stops here."""
    try:
        with iperf_server(procs, pair, server_port(pair)):
            end = iperf_client(procs, pair, server_port(pair), 1.0)
    except BenchError as exc:
        raise BenchError(f"{pair.variant}: nothing gets through {pair.target_ip}:"
                         f"{pair.target_port} to {pair.ip_b}: {exc}"
                         f"{log_tail(log_paths)}") from None
    if not end["sum_received"]["bytes"]:
        raise BenchError(f"{pair.variant}: iperf3 through the service moved no data"
                         f"{log_tail(log_paths)}")


def log_tail(log_paths: Sequence[Path], lines: int = 30) -> str:
    text = ""
    for log_path in log_paths:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
        text += f"\nlast lines of the vswitchd log {log_path}:\n" + "\n".join(tail)
    return text


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

FIGURES: tuple[tuple[str, str, str, str], ...] = (
    # (measurement, key, column title, format)
    ("tcp", "gbit_s", "TCP Gbit/s", "{:.2f}"),
    ("udp", "received_kpps", "UDP 64B kpps rx", "{:.0f}"),
    ("udp", "loss_percent", "UDP loss %", "{:.1f}"),
    ("rtt", "median_us", "RTT med µs", "{:.0f}"),
    ("rtt", "p99_us", "RTT p99 µs", "{:.0f}"),
)
RATIO_FIGURES = {("tcp", "gbit_s"), ("udp", "received_kpps"), ("rtt", "median_us")}
RATIO_ORDER = tuple((m, k) for m, k, _, _ in FIGURES if (m, k) in RATIO_FIGURES)


def machine_info() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO)
        except OSError:
            return ""
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "iperf3": first_line(["iperf3", "--version"]),
        "vswitch_commit": first_line(["git", "rev-parse", "--short", "HEAD"]),
        "loadavg_at_start": list(os.getloadavg()),
    }


def median_figures(rounds: list[dict]) -> dict:
    result: dict[str, dict[str, float]] = {}
    for measurement, key, _, _ in FIGURES:
        values = [r[measurement][key] for r in rounds if r.get(measurement)]
        if values:
            result.setdefault(measurement, {})[key] = statistics.median(values)
    return result


def ratios(medians: dict[str, dict], reference: str) -> dict:
    base = medians.get(reference)
    if base is None:
        return {}
    result: dict[str, dict[str, float | None]] = {}
    for variant, figures in medians.items():
        for measurement, key in RATIO_ORDER:
            ours, theirs = figures.get(measurement, {}).get(key), base.get(measurement, {}).get(key)
            ratio = ours / theirs if ours is not None and theirs else None
            result.setdefault(variant, {})[f"{measurement}.{key}"] = ratio
    return result


def render_table(medians: dict, ratio_table: dict) -> str:
    header = ["variant"] + [title for _, _, title, _ in FIGURES]
    rows = [header]
    for variant, figures in medians.items():
        row = [variant]
        for measurement, key, _, fmt in FIGURES:
            value = figures.get(measurement, {}).get(key)
            cell = "-" if value is None else fmt.format(value)
            ratio = ratio_table.get(variant, {}).get(f"{measurement}.{key}")
            if ratio is not None and variant != "bridge":
                cell += f" ({ratio:.2f}×)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_ratio_lines(heading: str, rows: dict[str, dict[str, float | None]]) -> str:
    """A heading, then one line per row: ``vswitch-overlay/vswitch  TCP 0.83×  UDP 0.70× ...``."""
    titles = {f"{m}.{k}": title.split()[0] for m, k, title, _ in FIGURES}
    lines = [heading]
    width = max((len(name) for name in rows), default=0)
    for name, row in rows.items():
        cells = [f"{titles[key]} {'-' if value is None else f'{value:.2f}×'}"
                 for key, value in row.items()]
        lines.append(f"{name.ljust(width)}  " + "  ".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per iperf3 test (default 5)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--pings", type=int, default=50, help="echoes per RTT measurement")
    parser.add_argument("--ping-interval", type=float, default=0.01, help="seconds between echoes")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="where to write the results (default bench/results/bench-<time>.json)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.duration <= 0 or args.pings < 1:
        parser.error("--rounds, --duration and --pings must be positive")
    if args.json_path is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json_path = str(REPO / "bench" / "results" / f"bench-{stamp}.json")
    return args


def preflight() -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark creates namespaces, veths and TAPs")
    for tool in ("iperf3", "nsenter"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found; install it (Debian: apt-get install {tool})")


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that ``kill`` cleans up as Ctrl-C does.

    pyroute2 forks helper processes (to open sockets inside namespaces) and ends them with SIGTERM.
    A fork inherits this handler; if it raised there, the helper would run the benchmark's cleanup
    and delete the namespaces from under the parent. So only the original process raises, and a
    forked copy takes the default action and simply exits.
    """
    owner = os.getpid()

    def handle(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handle)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    preflight()
    skipped = {variant: reason for variant in args.variants
               if (reason := peers.missing(variant)) is not None}
    for variant, reason in skipped.items():
        log(f"skipping {variant}: {reason}")
    args.variants = [variant for variant in args.variants if variant not in skipped]
    if not args.variants:
        raise BenchError("nothing left to measure")
    suffix = secrets.token_hex(3)
    procs = Processes()
    pool = iter(free_subnets([length for v in args.variants for length in subnets_needed(v)]))
    subnets = {v: [next(pool) for _ in subnets_needed(v)] for v in args.variants}
    raw: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    started = time.time()
    machine = machine_info()
    with contextlib.ExitStack() as stack:
        stack.callback(procs.end_all)
        pairs: dict[str, Pair] = {}
        for variant in args.variants:
            log(f"building {variant} on {', '.join(map(str, subnets[variant]))}")
            log_paths: list[Path] = []
            if variant == "bridge":
                pairs[variant] = build_bridge(stack, suffix, subnets[variant][0])
            elif variant in peers.VARIANTS:
                pairs[variant] = build_peer(stack, procs, variant, suffix, subnets[variant][0])
            elif variant in cross_node.VARIANTS:
                pairs[variant], log_paths = build_cross_node(
                    stack, procs, variant, suffix, subnets[variant])
            else:
                pairs[variant], log_path = build_vswitch(
                    stack, procs, variant, suffix, subnets[variant],
                    offloads=(variant != "vswitch-nooffload"))
                log_paths = [log_path]
            check_forwarding(procs, pairs[variant], log_paths)
        for round_no in range(1, args.rounds + 1):
            for variant, pair in pairs.items():
                log(f"round {round_no}/{args.rounds}: {variant}")
                raw[variant].append({
                    "round": round_no,
                    "tcp": measure_tcp(procs, pair, args.duration),
                    "udp": measure_udp(procs, pair, args.duration),
                    # ICMP echo is not a service's business: no RTT through one.
                    "rtt": (None if pair.via_service else
                            measure_rtt(procs, pair, args.pings, args.ping_interval)),
                })
    medians = {variant: median_figures(rounds) for variant, rounds in raw.items()}
    return {
        "started": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine,
        "parameters": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "variants": args.variants,
            "udp_payload_bytes": UDP_PAYLOAD,
            "pings": args.pings,
            "ping_interval_s": args.ping_interval,
            "subnets": {variant: [str(net) for net in nets] for variant, nets in subnets.items()},
        },
        "pairs": {variant: asdict(pair) for variant, pair in pairs.items()},
        "rounds": raw,
        "medians": medians,
        "skipped": skipped,
        "ratios_to_bridge": ratios(medians, "bridge"),
        "ratios_to_peers": {peer: ratios(medians, peer) for peer in peers.VARIANTS
                            if peer in medians},
        "cross_node_ratios": cross_node.ratios(
            medians, RATIO_ORDER),
    }


def script_main(tag: str, args: argparse.Namespace, run_bench: Callable[..., dict],
                report: Callable[[dict], None]) -> int:
    """What every benchmark script does around its run: log lines tagged on stderr, SIGTERM
    and Ctrl-C clean up and exit 130, a BenchError exits 1; then ``report`` prints the results
    and they are written as JSON to ``args.json_path``."""
    interrupt_on_sigterm()

    def log(message: str) -> None:
        print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    try:
        results = run_bench(args, log)
    except KeyboardInterrupt:
        log("interrupted; everything created has been removed")
        return 130
    except BenchError as exc:
        log(f"failed: {exc}")
        return 1
    report(results)
    path = Path(args.json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results written to {path}")
    return 0


def report(results: dict) -> None:
    print(render_table(results["medians"], results["ratios_to_bridge"]))
    peer_ratios = {f"{variant}/{peer}": row
                   for peer, table in results["ratios_to_peers"].items()
                   for variant, row in table.items() if variant != peer}
    if peer_ratios:
        print()
        print(render_ratio_lines(
            "ratios to the userspace peers (variant/peer; RTT: lower is better)", peer_ratios))
    if results["cross_node_ratios"]:
        print()
        print(render_ratio_lines("cross-node ratios (variant/reference; RTT: lower is better)",
                                 results["cross_node_ratios"]))


def main(argv: list[str] | None = None) -> int:
    return script_main("bench", parse_args(argv), run, report)


if __name__ == "__main__":
    sys.exit(main())

"""What the service tests need on top of ``harness``: a topology with services and an uplink, the
programs that run in pods and in the internet namespace, and their cleanup.

The harness renders pods without labels and knows nothing of ``[cluster]``, ``[uplink]`` and
``[[services]]``; :class:`ServiceNodeSpec` extends its ``NodeSpec`` with them, so that the harness's
``Daemon`` (which only calls ``spec.render()``) runs such a node unchanged.

Addresses: the pod CIDR, the service CIDR and the uplink network are three distinct random /24s
inside 10.200.0.0/13 that nothing on the host uses. The uplink's far side (the "internet") lives
in a namespace named ``vsi-<node>``, which the daemon creates because it does not exist yet; the
node owns uplink network + 2, the internet namespace has + 1 (the gateway). Nothing here sends a
packet to an address outside those namespaces.

Every server in a pod answers a request with one line, ``<name> <peer ip>:<peer port>
<proto>:<local port>``: the tests learn from it which backend answered, which source address the
backend saw, and which target port the service translated to.
"""
from __future__ import annotations

import dataclasses
import json as jsonlib
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Mapping, Sequence

from pyroute2 import netns

from harness import (
    NETNS_DIR,
    PYTHON,
    Daemon,
    NodeSpec,
    PodSpec,
    cleanup_node,
    make_node_spec,
    netns_inode,
    pids_in_netns,
    random_pod_cidr,
    with_checksum,
)

HAIRPIN_ADDRESS = "169.254.169.5"  # the config's default [cluster] hairpin_address

# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePodSpec(PodSpec):
    """A pod with labels, a readiness flag and named container ports (of its first container)."""

    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ready: bool = True
    ports: Mapping[str, tuple[str, int]] = dataclasses.field(default_factory=dict)


def q(value: str) -> str:
    """A TOML basic string; JSON string literals are valid ones."""
    return jsonlib.dumps(value)


def inline_table(values: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return q(v)
        if isinstance(v, Mapping):
            return inline_table(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(item) for item in v) + "]"
        raise TypeError(f"cannot render {v!r} as TOML")

    return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in values.items()) + " }"


def render_pod(pod: PodSpec) -> list[str]:
    lines = ["", "[[pods]]", f"name = {q(pod.name)}"]
    if pod.ip is not None:
        lines.append(f"ip = {q(pod.ip)}")
    if pod.segment is not None:
        lines.append(f"segment = {q(pod.segment)}")
    if isinstance(pod, ServicePodSpec):
        if pod.labels:
            lines.append(f"labels = {inline_table(pod.labels)}")
        if not pod.ready:
            lines.append("ready = false")
    containers = []
    for index, (name, command) in enumerate(pod.containers):
        entry: dict[str, Any] = {"name": name, "command": list(command)}
        if index == 0 and isinstance(pod, ServicePodSpec) and pod.ports:
            entry["ports"] = [{"name": port_name, "protocol": proto, "port": number}
                              for port_name, (proto, number) in pod.ports.items()]
        containers.append(inline_table(entry))
    if containers:
        lines.append(f"containers = [ {', '.join(containers)} ]")
    return lines


@dataclass(frozen=True)
class ServiceNodeSpec(NodeSpec):
    """A harness node plus ``[cluster]``, ``[uplink]`` and ``[[services]]``.

    ``services`` are tables as ``[[services]]`` holds them (dicts), rendered inline-table style.
    """

    service_cidr: IPv4Network | None = None
    uplink_network: IPv4Network | None = None
    uplink_netns: str | None = None
    conntrack_max: int | None = None
    services: tuple[Mapping[str, Any], ...] = ()

    @property
    def node_address(self) -> IPv4Address:
        assert self.uplink_network is not None
        return self.uplink_network.network_address + 2

    @property
    def internet_address(self) -> IPv4Address:
        """The uplink's far side: the gateway, and the only address the internet namespace has."""
        assert self.uplink_network is not None
        return self.uplink_network.network_address + 1

    def cluster_ip(self, offset: int) -> str:
        assert self.service_cidr is not None
        return str(self.service_cidr.network_address + offset)

    def render(self) -> str:
        base = NodeSpec.render(dataclasses.replace(self, pods=()))
        lines = [base.rstrip("\n"), "", "[cluster]", f"cidr = {q(str(self.pod_cidr))}"]
        if self.service_cidr is not None:
            lines.append(f"service_cidr = {q(str(self.service_cidr))}")
        if self.conntrack_max is not None:
            lines.append(f"conntrack_max = {self.conntrack_max}")
        if self.uplink_network is not None:
            lines += ["", "[uplink]",
                      f"address = {q(f'{self.node_address}/{self.uplink_network.prefixlen}')}",
                      f"gateway = {q(str(self.internet_address))}"]
            if self.uplink_netns is not None:
                lines.append(f"netns = {q(self.uplink_netns)}")
        for pod in self.pods:
            lines += render_pod(pod)
        for service in self.services:
            lines += ["", "[[services]]"]
            for key, value in service.items():
                rendered = inline_table({key: value})[2:-2]  # "key = value"
                lines.append(rendered)
        return "\n".join(lines) + "\n"


def make_service_node(workdir: Path, *, uplink: bool = True,
                      conntrack_max: int | None = None) -> ServiceNodeSpec:
    """A node spec with random names and three distinct random /24s, and no pods yet."""
    base = make_node_spec(workdir, ())
    service_cidr = random_pod_cidr(avoid=[base.pod_cidr])
    uplink_network = random_pod_cidr(avoid=[base.pod_cidr, service_cidr]) if uplink else None
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(NodeSpec)}
    return ServiceNodeSpec(**fields, service_cidr=service_cidr, uplink_network=uplink_network,
                           uplink_netns=f"vsi-{base.name}" if uplink else None,
                           conntrack_max=conntrack_max)


# --------------------------------------------------------------------------------------------
# Programs
# --------------------------------------------------------------------------------------------

# The server every backend pod runs as its container. Arguments: its name, then one listener per
# argument: ``tcp:P`` answers one line and closes; ``udp:P`` answers each datagram with one line;
# ``sink:P`` (TCP) greets with one line, reads to EOF, then answers with the byte count and the
# SHA-256 of what arrived; ``mute:P`` (UDP) receives and never answers, so its flows stay
# unreplied in conntrack.
ECHO_SERVER = textwrap.dedent(
    r'''
    import hashlib, json, socket, sys, threading

    name = sys.argv[1]

    def line(peer, proto, port):
        return f"{name} {peer[0]}:{peer[1]} {proto}:{port}\n".encode()

    def tcp_answer(conn, peer, port):
        with conn:
            conn.sendall(line(peer, "tcp", port))

    def sink(conn, peer, port):
        with conn:
            conn.settimeout(120)
            conn.sendall(line(peer, "sink", port))
            digest, count = hashlib.sha256(), 0
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                digest.update(chunk)
                count += len(chunk)
            try:
                conn.sendall(json.dumps({"bytes": count, "sha256": digest.hexdigest()}).encode())
            except (BrokenPipeError, ConnectionResetError):
                return  # a readiness probe reads the greeting and hangs up; it wants no report

    def serve_tcp(port, handler):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(128)
        while True:
            conn, peer = server.accept()
            threading.Thread(target=handler, args=(conn, peer, port), daemon=True).start()

    def serve_udp(port, answer):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("0.0.0.0", port))
        while True:
            data, peer = sock.recvfrom(2048)
            if answer:
                sock.sendto(line(peer, "udp", port), peer)

    threads = []
    for spec in sys.argv[2:]:
        kind, port = spec.split(":")
        port = int(port)
        target, args = {
            "tcp": (serve_tcp, (port, tcp_answer)),
            "sink": (serve_tcp, (port, sink)),
            "udp": (serve_udp, (port, True)),
            "mute": (serve_udp, (port, False)),
        }[kind]
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for thread in threads:
        thread.start()
    print(f"{name} serving {' '.join(sys.argv[2:])}", flush=True)
    for thread in threads:
        thread.join()
    '''
)

# Requests to host:port, each on a new socket (so each is a new flow with its own source port).
# Arguments: proto, host, port, count, timeout, [fixed source port or 0], [pause between requests].
# Prints {"answers": [...], "errors": [...]}, one entry per request in order (None in the other list).
REQUESTS = textwrap.dedent(
    r'''
    import errno, json, socket, sys, time
    proto, host, port, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    sport = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    pause = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    answers, errors = [], []
    for _ in range(count):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(timeout)
        try:
            if sport:
                sock.bind(("0.0.0.0", sport))
            sock.connect((host, port))
            if proto == "udp":
                sock.send(b"hello")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            answers.append(data.decode().strip())
            errors.append(None)
        except OSError as exc:
            answers.append(None)
            errors.append(errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__)
        finally:
            sock.close()
        if pause:
            time.sleep(pause)
    print(json.dumps({"answers": answers, "errors": errors}))
    '''
)

# One UDP datagram of ``size`` payload bytes to host:port, sent as two IP fragments in reverse
# order (the later one first) through a raw socket, as a reordering network would deliver it.
# Arguments: host, port, size. Prints {"answer": line or None, "sport": source port}.
REORDERED_UDP = with_checksum(textwrap.dedent(
    r'''
    import json, os, random, socket, struct, sys

    __CHECKSUM__

    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("0.0.0.0", 0))
    receiver.settimeout(5)
    sport = receiver.getsockname()[1]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((host, port))
    src = probe.getsockname()[0]
    probe.close()
    length = 8 + size
    udp = struct.pack("!HHHH", sport, port, length, 0) + os.urandom(size)
    pseudo = socket.inet_aton(src) + socket.inet_aton(host) + struct.pack("!BBH", 0, 17, length)
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ident = random.randrange(1, 65536)

    def fragment(body, offset, more):
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident,
                             (0x2000 if more else 0) | offset // 8, 64, 17, 0,
                             socket.inet_aton(src), socket.inet_aton(host))
        return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + body

    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(fragment(udp[1480:], 1480, False), (host, 0))
    raw.sendto(fragment(udp[:1480], 0, True), (host, 0))
    try:
        answer = receiver.recv(2048).decode().strip()
    except socket.timeout:
        answer = None
    print(json.dumps({"answer": answer, "sport": sport}))
    '''
))

# One attempt that must be refused: a TCP connect, or a datagram on a connected UDP socket
# followed by a receive (the kernel reports an ICMP port unreachable as ECONNREFUSED there).
# Arguments: proto, host, port, timeout. Prints {"error": "ECONNREFUSED" | ..., "elapsed": s}.
REFUSAL = textwrap.dedent(
    r'''
    import errno, json, socket, sys, time
    proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    error, answer = None, None
    try:
        sock.connect((host, port))
        if proto == "udp":
            sock.send(b"anyone?")
        answer = sock.recv(512).decode()
    except socket.timeout:
        error = "timeout"
    except OSError as exc:
        error = errno.errorcode.get(exc.errno, str(exc.errno))
    print(json.dumps({"error": error, "answer": answer, "elapsed": time.monotonic() - start}))
    '''
)

# A TCP stream to a ``sink`` listener: prints the greeting as its first line, then sends random
# data for ``duration`` seconds in 16 KB writes, closes its side and prints JSON with what it sent
# and what the sink reported. With duration < 0 the connection is held idle until a line arrives
# on stdin, and then 1 MB is sent: a connection kept open while the test inspects or disturbs
# the node, which must still carry data afterwards.
STREAM = textwrap.dedent(
    r'''
    import hashlib, json, os, socket, sys, time
    host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    conn = socket.create_connection((host, port), timeout=30)
    greeting = b""
    while not greeting.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        greeting += chunk
    print(greeting.decode().strip(), flush=True)
    digest, sent = hashlib.sha256(), 0
    if duration < 0:
        sys.stdin.readline()
        for _ in range(64):
            block = os.urandom(16384)
            conn.sendall(block)
            digest.update(block)
            sent += len(block)
    else:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            block = os.urandom(16384)
            conn.sendall(block)
            digest.update(block)
            sent += len(block)
            time.sleep(0.002)
    conn.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    conn.close()
    print(json.dumps({"sent": sent, "sha256": digest.hexdigest(), "sink": json.loads(answer)}), flush=True)
    '''
)

# A long-running UDP client with one fixed source port, as a DNS resolver or a metrics collector is:
# one unconnected socket (so ICMP errors do not end it), a datagram every ``interval``, each
# answer logged with the wall-clock time it arrived. It stops at a line on stdin, or after
# ``duration`` seconds at the latest. Arguments: host, port, source port, duration, interval.
FIXED_PORT_UDP = textwrap.dedent(
    r'''
    import json, select, socket, sys, time
    host, port, sport, duration, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", sport))
    print("started", flush=True)
    events, sent, stop = [], 0, False
    end = time.monotonic() + duration
    while time.monotonic() < end and not stop:
        sock.sendto(b"tick", (host, port))
        sent += 1
        deadline = time.monotonic() + interval
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready = select.select([sock, sys.stdin], [], [], left)[0]
            if sys.stdin in ready:
                sys.stdin.readline()
                stop = True
                break
            if not ready:
                break
            try:
                data = sock.recv(512)
            except OSError:
                continue
            events.append([time.time(), data.decode().strip()])
    print(json.dumps({"sent": sent, "events": events}), flush=True)
    '''
)

# One datagram from each of ``count`` source ports (20000 upwards, one socket at a time, so the
# file-descriptor limit plays no part): ``count`` distinct flows. Paced at about 2,000 flows per
# second: each first packet takes the switch's slow path, and a burst faster than that would
# overflow the pod's transmit queue, so fewer flows would reach the switch than were sent.
FLOOD_UDP = textwrap.dedent(
    r'''
    import json, socket, sys, time
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ports = set()
    for sport in range(20000, 20000 + count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", sport))
        ports.add(sock.getsockname()[1])
        sock.sendto(b"flow", (host, port))
        sock.close()
        time.sleep(0.0005)
    print(json.dumps({"flows": len(ports)}))
    '''
)


@dataclass(frozen=True)
class Answer:
    """One parsed server line."""

    name: str
    peer_ip: str
    peer_port: int
    proto: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Answer":
        name, peer, local = text.split()
        peer_ip, peer_port = peer.rsplit(":", 1)
        proto, port = local.split(":")
        return cls(name, peer_ip, int(peer_port), proto, int(port))


def finish_stream(held: subprocess.Popen) -> dict:
    """Tell a STREAM client held open with its stdin to finish, and return its JSON report."""
    assert held.stdin is not None
    held.stdin.write("go\n")
    held.stdin.flush()
    out, err = held.communicate(timeout=30)
    assert held.returncode == 0, err
    return jsonlib.loads(out.splitlines()[-1])


def parse_answers(result: Mapping[str, Any]) -> list[Answer]:
    """Every request must have been answered; the errors are shown if not."""
    failed = [(i, e) for i, e in enumerate(result["errors"]) if e is not None]
    assert not failed, f"requests failed (index, error): {failed[:10]}"
    return [Answer.parse(text) for text in result["answers"]]


# --------------------------------------------------------------------------------------------
# The running node
# --------------------------------------------------------------------------------------------


class ServiceNode:
    """A daemon for a :class:`ServiceNodeSpec`, the server script, and the internet namespace's
    processes; :meth:`close` removes all of it (and reports what the daemon itself left)."""

    def __init__(self, daemon: Daemon, server_script: Path):
        self.daemon = daemon
        self.server_script = server_script
        self.internet_procs: list[subprocess.Popen] = []
        self.internet_inode: int | None = None

    @property
    def spec(self) -> ServiceNodeSpec:
        spec = self.daemon.spec
        assert isinstance(spec, ServiceNodeSpec)
        return spec

    def server_command(self, name: str, *listeners: str) -> tuple[str, ...]:
        return (PYTHON, str(self.server_script), name, *listeners)

    def ip(self, pod: str) -> str:
        """A pod's address: as the topology promises, or as the daemon reports for a pod added
        at runtime."""
        promised = self.spec.pod_ips()
        if pod in promised:
            return str(promised[pod])
        for row in self.ctl("pods"):
            if row["name"] == pod:
                return row["ip"]
        raise AssertionError(f"no pod {pod!r} in the topology or in vswitchctl pods")

    # ---- vswitchctl ----------------------------------------------------------------------------

    def ctl(self, *args: str, json: bool = True) -> Any:
        return self.daemon.ctl(*args, json=json)

    def service(self, name: str) -> dict:
        for row in self.ctl("services"):
            if row["name"] == name:
                return row
        raise AssertionError(f"service {name!r} missing from vswitchctl services")

    def endpoints(self, service: str) -> list[dict]:
        return [row for row in self.ctl("endpoints")
                if row["service"] in (service, f"default/{service}")]

    def conntrack(self, **filters: str) -> list[dict]:
        args = []
        for key, value in filters.items():
            args += ["--filter", f"{key}={value}"]
        return self.ctl("conntrack", *args)

    def conntrack_stats(self) -> dict:
        return self.ctl("stats")["conntrack"]

    # ---- programs ------------------------------------------------------------------------------

    def run_in(self, pod: str, script: str, *args: Any, timeout: float = 60.0) -> Any:
        return self.daemon.python_in(pod, script, *map(str, args), timeout=timeout)

    def popen_in(self, pod: str, script: str, *args: Any, **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return self.daemon.popen_in(pod, PYTHON, "-c", script, *map(str, args), **kwargs)

    def requests(self, pod: str, proto: str, host: str, port: int, count: int,
                 timeout: float = 5.0, sport: int = 0, pause: float = 0.0) -> list[Answer]:
        result = self.run_in(pod, REQUESTS, proto, host, port, count, timeout, sport, pause,
                             timeout=count * (timeout + pause) + 30)
        return parse_answers(result)

    def internet_argv(self, *argv: str) -> list[str]:
        assert self.spec.uplink_netns is not None
        return ["nsenter", f"--net={NETNS_DIR / self.spec.uplink_netns}", *argv]

    def run_in_internet(self, script: str, *args: Any, timeout: float = 60.0) -> Any:
        done = subprocess.run(self.internet_argv(PYTHON, "-c", script, *map(str, args)),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"in the internet namespace: {done.stderr}"
        return jsonlib.loads(done.stdout)

    def start_internet_server(self, *listeners: str) -> None:
        """The echo server inside the internet namespace, listening before this returns."""
        assert self.spec.uplink_netns is not None
        self.internet_inode = netns_inode(self.spec.uplink_netns)
        proc = subprocess.Popen(
            self.internet_argv(*self.server_command("internet", *listeners)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        self.internet_procs.append(proc)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "serving" in first, f"the internet server did not start: {first}"

    def wait_for_servers(self, targets: Sequence[tuple[str, str, int]], timeout: float = 20.0,
                         probe_from: str = "client") -> None:
        """Containers start after the daemon reports ready; wait until each (pod, proto, port)
        answers a direct request from ``probe_from``."""
        deadline = time.monotonic() + timeout
        for pod, proto, port in targets:
            while True:
                result = self.run_in(probe_from, REQUESTS, proto, self.ip(pod), port, 1, 1.0)
                if result["errors"] == [None]:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{pod} does not answer {proto}:{port}: "
                                         f"{result['errors']}\n{self.daemon.log()[-3000:]}")
                time.sleep(0.2)

    # ---- cleanup -------------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything; return what had to be removed by force (a leak of the daemon)."""
        for proc in self.internet_procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        problems = []
        left = cleanup_node(self.daemon)
        if left:
            problems.append(f"node objects left behind: {left}")
        name = self.spec.uplink_netns
        if name is not None:
            deadline = time.monotonic() + 2.0
            while name in netns.listnetns() and time.monotonic() < deadline:
                time.sleep(0.1)
            inodes = {i for i in (self.internet_inode, netns_inode(name)) if i is not None}
            stray = pids_in_netns(inodes)
            for pid in stray:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if stray:
                problems.append(f"processes left in the internet namespace: {stray}")
            if name in netns.listnetns():
                problems.append(f"the daemon did not remove the uplink namespace {name}")
                try:
                    netns.remove(name)
                except FileNotFoundError:
                    pass
        return problems


def write_server_script(workdir: Path) -> Path:
    path = workdir / "echo_server.py"
    path.write_text(ECHO_SERVER)
    return path


def service_port(name: str, proto: str, port: int, target: int | str,
                 node_port: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "protocol": proto, "port": port, "target_port": target}
    if node_port is not None:
        entry["node_port"] = node_port
    return entry


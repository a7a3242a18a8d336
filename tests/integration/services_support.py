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
    program,
    random_pod_cidr,
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

# The programs of tests/programs these tests run in pods and in the internet namespace; each
# file's docstring gives its arguments and output.
ECHO_SERVER = program("echo_server")
REQUESTS = program("requests")
REORDERED_UDP = program("reordered_udp")
REFUSAL = program("refusal")
STREAM = program("stream")
FIXED_PORT_UDP = program("fixed_port_udp")
FLOOD_UDP = program("flood_udp")


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

    def __init__(self, daemon: Daemon, server_script: str = ECHO_SERVER):
        self.daemon = daemon
        self.server_script = server_script
        self.internet_procs: list[subprocess.Popen] = []
        self.pod_procs: list[subprocess.Popen] = []
        self.internet_inode: int | None = None

    def serve_iperf(self, pod: str, port: int) -> None:
        """An iperf3 server in ``pod`` on TCP ``port``, listening when this returns; ``close``
        stops it."""
        server = self.daemon.popen_in(pod, "iperf3", "-s", "-p", str(port),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pod_procs.append(server)
        self.daemon.wait_listening(pod, port)

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
        return self.daemon.popen_in(pod, PYTHON, script, *map(str, args), **kwargs)

    def requests(self, pod: str, proto: str, host: str, port: int, count: int,
                 timeout: float = 5.0, sport: int = 0, pause: float = 0.0) -> list[Answer]:
        result = self.run_in(pod, REQUESTS, proto, host, port, count, timeout, sport, pause,
                             timeout=count * (timeout + pause) + 30)
        return parse_answers(result)

    def internet_argv(self, *argv: str) -> list[str]:
        assert self.spec.uplink_netns is not None
        return ["nsenter", f"--net={NETNS_DIR / self.spec.uplink_netns}", *argv]

    def run_in_internet(self, script: str, *args: Any, timeout: float = 60.0) -> Any:
        done = subprocess.run(self.internet_argv(PYTHON, script, *map(str, args)),
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
        for proc in (*self.pod_procs, *self.internet_procs):
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


def service_port(name: str, proto: str, port: int, target: int | str,
                 node_port: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "protocol": proto, "port": port, "target_port": target}
    if node_port is not None:
        entry["node_port"] = node_port
    return entry


"""Run the real daemon against real namespaces and TAPs, and leave nothing behind.

The integration tests treat ``vswitchd`` and ``vswitchctl`` as a user would: as processes started
from a TOML file, talked to over the control socket. This module holds what every such test needs:
unique names, a topology writer, a :class:`Daemon` wrapper that owns one ``vswitchd`` process, the
paths of the Python programs that run inside pods (ping, TCP and UDP peers, in
tests/programs), and the leak check.

Rules that keep the suite safe on a shared machine:

- Every node name is random (``t`` plus six hex digits) and every pod CIDR is a random /24 inside
  10.200.0.0/13 that no address or route of the root namespace overlaps, so two runs, or two
  developers, never collide.
- Cleanup only ever touches objects derived from the test's own node name: namespaces
  ``vsw-{node}.*``, the TAP devices the daemon reported, and processes living in those namespaces.
- Setup and cleanup use pyroute2, never the ``ip`` command.
- ``ping`` from iputils is not assumed to be installed, so pings are sent by a short Python program
  over a raw ICMP socket; it runs inside the pod's own kernel stack just the same.
"""
from __future__ import annotations

import dataclasses
import json as jsonlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Iterable, Sequence

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")
TEST_SUPERNET = IPv4Network("10.200.0.0/13")
READY_MARKER = "vswitchd ready"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PYTHON = sys.executable

# ``sys.exit`` around the entry point, as the console-script wrapper does: the functions return
# the exit status, and a bare call would turn every failure into status 0.
VSWITCHD = (PYTHON, "-c", "import sys; from vswitch.cli import vswitchd_main as m; sys.exit(m())")
VSWITCHCTL = (PYTHON, "-c", "import sys; from vswitch.cli import vswitchctl_main as m; sys.exit(m())")


# --------------------------------------------------------------------------------------------
# Names and addresses
# --------------------------------------------------------------------------------------------


def unique_node_name() -> str:
    """Short, so that every name derived from it (netns, TAP, socket path) stays within limits."""
    return "t" + secrets.token_hex(3)


def _root_networks() -> list[IPv4Network]:
    """Every IPv4 network the root namespace already has an address or a route in."""
    taken: list[IPv4Network] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=2):
            taken.append(
                IPv4Network(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False)
            )
        for msg in ipr.get_routes(family=2):
            dst = msg.get("RTA_DST")
            if dst is not None and msg["dst_len"] > 0:
                taken.append(IPv4Network(f"{dst}/{msg['dst_len']}", strict=False))
    return taken


def random_pod_cidr(avoid: Iterable[IPv4Network] = ()) -> IPv4Network:
    """A /24 inside 10.200.0.0/13 that overlaps nothing already configured on this host.

    Overlap would route the test's traffic somewhere it must never go, so a collision is retried
    rather than tolerated. ``avoid`` adds networks the caller has already picked, so that one
    node's segments (and static routes) get distinct /24s.
    """
    return _free_24(TEST_SUPERNET, avoid)


def mac_for(ip: IPv4Address) -> str:
    """The contract's MAC for an address, written out here so the tests do not trust the model's."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)


# --------------------------------------------------------------------------------------------
# Topology files
# --------------------------------------------------------------------------------------------


TEST_ACCEL = os.environ.get("VSWITCH_TEST_ACCEL", "native")
# The daemons most tests share run once with each datapath: the C poll thread and pure Python.
DATAPATHS = ("native", "pure")

@dataclass(frozen=True)
class PodSpec:
    name: str
    ip: str | None = None
    containers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    segment: str | None = None  # None: the default segment (node.pod_cidr)
    mtu: int | None = None  # None: the segment's
    namespace: str | None = None  # None: "default" (the key is left out of the TOML)
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """How the daemon names the pod: NAME in the default namespace, else NAMESPACE/NAME."""
        if self.namespace in (None, "default"):
            return self.name
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SegmentSpec:
    """An extra ``[[segments]]`` entry; its gateway is always the first address (network + 1)."""

    name: str
    cidr: IPv4Network
    mtu: int | None = None

    @property
    def gateway(self) -> IPv4Address:
        return self.cidr.network_address + 1


@dataclass(frozen=True)
class RouteSpec:
    dst: IPv4Network
    via: IPv4Address


@dataclass(frozen=True)
class UplinkSpec:
    """An ``[uplink]``: the node address is network + 2, the far side (gateway) network + 1."""

    network: IPv4Network
    netns: str | None = None

    @property
    def address(self) -> IPv4Address:
        return self.network.network_address + 2

    @property
    def gateway(self) -> IPv4Address:
        return self.network.network_address + 1


UPLINK_SUPERNET = IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking space, never routed


def random_uplink_network(avoid: Iterable[IPv4Network] = ()) -> IPv4Network:
    """A /24 in 198.18.0.0/15 that overlaps nothing the host has, for an uplink's far side.

    The far side usually sits in its own namespace, but a test may also leave it in the root
    namespace, where an overlap would send the host's own traffic into the test.
    """
    return _free_24(UPLINK_SUPERNET, avoid)


def _free_24(supernet: IPv4Network, avoid: Iterable[IPv4Network]) -> IPv4Network:
    taken = _root_networks() + list(avoid)
    subnets = supernet.num_addresses // 256
    for _ in range(64):
        index = random.randrange(subnets)
        candidate = IPv4Network((int(supernet.network_address) + index * 256, 24))
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise RuntimeError(f"no free /24 in {supernet}: the host already uses all tried ones")


@dataclass(frozen=True)
class NodeSpec:
    """What a test asks for; :meth:`render` turns it into the TOML the daemon reads."""

    name: str
    pod_cidr: IPv4Network
    pods: tuple[PodSpec, ...]
    socket: str
    state_dir: str
    host_port: bool = True
    offloads: bool = True
    mtu: int | None = 1500  # None: the loader's default (with an overlay, its MTU)
    segments: tuple[SegmentSpec, ...] = ()
    routes: tuple[RouteSpec, ...] = ()
    uplink: UplinkSpec | None = None
    # [[namespaces]] entries: (name, labels).
    namespaces: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    extra_toml: str = ""  # appended as is: services, network policies, ...
    # Which datapath the daemon runs: the C poll thread ("native") or everything in Python
    # ("pure"); VSWITCH_TEST_ACCEL picks it for a whole run, so the suite runs with either.
    accel: str = field(default_factory=lambda: TEST_ACCEL)

    @property
    def gateway(self) -> IPv4Address:
        return self.pod_cidr.network_address + 1

    @property
    def host_address(self) -> IPv4Address:
        return self.pod_cidr.broadcast_address - 1

    def segment_cidr(self, segment: str | None) -> IPv4Network:
        if segment in (None, "default"):
            return self.pod_cidr
        return next(s.cidr for s in self.segments if s.name == segment)

    def segment_gateway(self, segment: str | None) -> IPv4Address:
        return self.segment_cidr(segment).network_address + 1

    def segment_mtu(self, segment: str | None) -> int:
        if segment in (None, "default"):
            return self.mtu
        found = next(s for s in self.segments if s.name == segment)
        return found.mtu if found.mtu is not None else self.mtu

    def pod_segment(self, pod: str) -> str:
        return next(p.segment or "default" for p in self.pods if p.key == pod)

    def pod_ips(self) -> dict[str, IPv4Address]:
        """The addresses the contract promises, by pod key: explicit ones, else network+10, +11,
        … in order.

        Each segment counts on its own from its own network + 10. The tests never place an
        explicit address in the automatic range, so skipping taken addresses is not modelled.
        """
        result: dict[str, IPv4Address] = {}
        next_auto: dict[str, int] = {}
        for pod in self.pods:
            segment = pod.segment or "default"
            if pod.ip is not None:
                result[pod.key] = IPv4Address(pod.ip)
            else:
                offset = next_auto.get(segment, 10)
                result[pod.key] = self.segment_cidr(segment).network_address + offset
                next_auto[segment] = offset + 1
        return result

    def netns(self, pod: str) -> str:
        """The network namespace of the pod ``pod`` (a key: NAME or NAMESPACE/NAME)."""
        namespace, _, name = pod.rpartition("/")
        return f"vsw-{self.name}.{namespace or 'default'}.{name}"

    def render(self) -> str:
        def q(value: str) -> str:
            return jsonlib.dumps(value)  # a JSON string literal is a valid TOML basic string

        lines = [
            "[node]",
            f"name = {q(self.name)}",
            f"pod_cidr = {q(str(self.pod_cidr))}",
            *([f"mtu = {self.mtu}"] if self.mtu is not None else []),
            "",
            "[host_port]",
            f"enabled = {'true' if self.host_port else 'false'}",
            "",
            "[dataplane]",
            f"offloads = {'true' if self.offloads else 'false'}",
            f"accel = {q(self.accel)}",
            "",
            "[control]",
            f"socket = {q(self.socket)}",
            f"state_dir = {q(self.state_dir)}",
        ]
        for segment in self.segments:
            lines += ["", "[[segments]]", f"name = {q(segment.name)}",
                      f"cidr = {q(str(segment.cidr))}"]
            if segment.mtu is not None:
                lines.append(f"mtu = {segment.mtu}")
        for route in self.routes:
            lines += ["", "[[routes]]", f"dst = {q(str(route.dst))}", f"via = {q(str(route.via))}"]
        if self.uplink is not None:
            lines += ["", "[uplink]",
                      f"address = {q(f'{self.uplink.address}/{self.uplink.network.prefixlen}')}",
                      f"gateway = {q(str(self.uplink.gateway))}"]
            if self.uplink.netns is not None:
                lines.append(f"netns = {q(self.uplink.netns)}")
        for namespace, labels in self.namespaces:
            lines += ["", "[[namespaces]]", f"name = {q(namespace)}"]
            if labels:
                lines.append("labels = { " + ", ".join(f"{q(k)} = {q(v)}" for k, v in labels)
                             + " }")
        for pod in self.pods:
            lines += ["", "[[pods]]", f"name = {q(pod.name)}"]
            if pod.namespace is not None:
                lines.append(f"namespace = {q(pod.namespace)}")
            if pod.labels:
                lines.append("labels = { " + ", ".join(f"{q(k)} = {q(v)}" for k, v in pod.labels)
                             + " }")
            if pod.ip is not None:
                lines.append(f"ip = {q(pod.ip)}")
            if pod.segment is not None:
                lines.append(f"segment = {q(pod.segment)}")
            if pod.mtu is not None:
                lines.append(f"mtu = {pod.mtu}")
            if pod.containers:
                rendered = ", ".join(
                    f"{{ name = {q(name)}, command = [{', '.join(q(a) for a in cmd)}] }}"
                    for name, cmd in pod.containers
                )
                lines.append(f"containers = [ {rendered} ]")
        if self.extra_toml:
            lines += ["", self.extra_toml]
        return "\n".join(lines) + "\n"


def make_node_spec(
    workdir: Path,
    pods: Sequence[PodSpec],
    *,
    host_port: bool = True,
    offloads: bool = True,
) -> NodeSpec:
    """A node with fresh random names; its socket and state live in ``workdir``.

    A Unix socket path is limited to 107 bytes and pytest's tmp_path can be longer, so the socket
    goes to a short directory under /tmp when needed; :func:`cleanup_node` removes it.
    """
    name = unique_node_name()
    socket_path = workdir / "ctl.sock"
    if len(str(socket_path)) > 100:
        short = Path("/tmp") / f"vsw-{name}"
        short.mkdir(mode=0o700, exist_ok=True)
        socket_path = short / "ctl.sock"
    state_dir = workdir / "state"
    state_dir.mkdir(exist_ok=True)
    return NodeSpec(
        name=name,
        pod_cidr=random_pod_cidr(),
        pods=tuple(pods),
        socket=str(socket_path),
        state_dir=str(state_dir),
        host_port=host_port,
        offloads=offloads,
    )


# --------------------------------------------------------------------------------------------
# Inspecting the kernel
# --------------------------------------------------------------------------------------------


def node_namespaces(node: str) -> list[str]:
    prefix = f"vsw-{node}."
    return sorted(name for name in netns.listnetns() if name.startswith(prefix))


def tun_devices() -> dict[str, int]:
    """TUN/TAP devices of the root namespace, name → ifindex."""
    found: dict[str, int] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun":
                found[link.get("IFLA_IFNAME")] = link["index"]
    return found


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except FileNotFoundError:
        return None


def processes_with_argument(marker: str) -> dict[int, list[str]]:
    """Every process, in any namespace, with ``marker`` as one of its arguments.

    Pod commands in the lifecycle tests carry a unique marker, so a duplicate left running by a
    restart is found even when the namespace it lives in has lost its name.
    """
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        if marker in argv:
            found[int(entry)] = argv
    return found


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Until ``pid`` (not necessarily our child) has exited; False if ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def pids_in_netns(inodes: Iterable[int]) -> dict[int, list[str]]:
    """Processes whose network namespace is one of ``inodes``, pid → command line.

    This finds pod processes even after the namespace's name under /run/netns is gone, which is
    exactly the leak a crash-cleanup bug produces: a process keeps the namespace alive.
    """
    wanted = set(inodes)
    root_dev = os.stat("/proc/self/ns/net").st_dev
    found: dict[int, list[str]] = {}
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            if st.st_dev != root_dev or st.st_ino not in wanted:
                continue
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found[int(entry)] = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return found


@dataclass(frozen=True)
class Leftovers:
    """What of a node still exists after its daemon is gone; empty (false) when nothing does."""

    namespaces: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    processes: dict[int, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.taps or self.processes)


# --------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------


def expected_devices(config_path: Path) -> set[str]:
    """The TAP names the config derives for this node (empty for a config that does not load).

    Knowing them before the daemon runs means a daemon that dies during start-up can still be
    checked for the devices it made.
    """
    from vswitch.config import ConfigError, load_topology

    try:
        topology = load_topology(config_path)
    except ConfigError:
        return set()
    uplink = {topology.uplink.name} if topology.uplink is not None else set()
    return {topology.host_port.name, *(pod.tap for pod in topology.pods), *uplink}


class DaemonError(AssertionError):
    """Raised with the daemon's log attached, so a failed start explains itself in the report."""


class Daemon:
    """One ``vswitchd`` process for one topology, plus what it made, for the cleanup.

    Kernel objects are remembered as they are seen (namespace inodes, TAP names reported by
    ``vswitchctl ports``), so that cleanup and the leak check can find them even after the daemon
    has been killed and can no longer be asked.

    Daemons run with ``--no-standby`` unless ``standby`` is true: most tests start many daemons
    on a small machine, and a hot standby is a second Python process per node. With a standby, a
    ``kill`` hands the node to it (``wait_takeover``); from then on the daemon is that process,
    ``pid``, which is not this process's child (``proc`` stays the one ``start`` started), so its
    exit status is not known.
    """

    def __init__(self, spec: NodeSpec, workdir: Path, *, standby: bool = False):
        self.spec = spec
        self.workdir = workdir
        self.standby = standby
        self.config_path = workdir / f"{spec.name}.toml"
        self.config_path.write_text(spec.render())
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # the daemon that runs the node now
        self._ready_seen = 0  # "ready" lines of the current log already waited for
        self.starts = 0
        self.known_inodes: set[int] = set()
        self.known_taps: set[str] = set()
        self._log_path: Path | None = None
        self._log_file = None
        self.known_taps.update(expected_devices(self.config_path))

    def replace_pods(self, pods: Sequence[PodSpec]) -> None:
        """Rewrite the topology's pods before the first start (pods may depend on the node name)."""
        self.update_spec(pods=tuple(pods))

    def update_spec(self, **changes: Any) -> None:
        """Rewrite any part of the topology before the first start (segments and routes use the
        node's random CIDRs, so they are chosen after the spec exists)."""
        assert self.proc is None, "the topology can only be changed before the daemon starts"
        self.rewrite(**changes)

    def rewrite(self, **changes: Any) -> None:
        """Rewrite the topology while no daemon runs, for the next start (a restart with a
        changed file)."""
        assert not self.running(), "the file is rewritten between runs only"
        self.spec = dataclasses.replace(self.spec, **changes)
        self.config_path.write_text(self.spec.render())
        self.known_taps.update(expected_devices(self.config_path))

    # ---- process control ------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        assert self._log_path is not None, "the daemon was never started"
        return self._log_path

    def log(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return self._log_path.read_text(errors="replace")

    def start(self, *, wait: bool = True, extra_args: Sequence[str] = ()) -> None:
        assert not self.running(), "already running"
        self.starts += 1
        self._log_path = self.workdir / f"vswitchd-{self.starts}.log"
        self._log_file = open(self._log_path, "wb")
        self._ready_seen = 0
        standby = () if self.standby else ("--no-standby",)
        self.proc = subprocess.Popen(
            [*VSWITCHD, "--config", str(self.config_path), *standby, *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the daemon logs "ready" once more than it had when last waited for."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.log().count(READY_MARKER)
            if seen > self._ready_seen:
                self._ready_seen = seen
                self.remember_objects()
                return
            # After a kill, the standby that is taking over is the one to wait for.
            if not self.running() and not self.vswitchd_processes():
                status = self.proc.returncode if self.pid == self.proc.pid else "unknown"
                raise DaemonError(
                    f"vswitchd exited with status {status} before it was ready; "
                    f"log:\n{self.log()}"
                )
            time.sleep(0.01)
        raise DaemonError(f"vswitchd not ready after {timeout:.0f} s; log:\n{self.log()}")

    def wait_takeover(self, timeout: float = READY_TIMEOUT) -> None:
        """After ``kill`` with a standby: until the standby runs the node; it is ``pid`` then."""
        assert self.standby, "the daemon runs without a standby"
        self.wait_ready(timeout)
        holder = self.lock_holder()
        assert holder is not None and holder != self.proc.pid, self.log()
        self.pid = holder

    def wait_standby(self, timeout: float = READY_TIMEOUT) -> int:
        """Until the daemon's standby is ready to take over (``vswitchctl status``); its pid."""
        deadline = time.monotonic() + timeout
        while True:
            standby = self.ctl("status").get("standby") or {}
            if standby.get("state") == "waiting":
                return standby["pid"]
            assert time.monotonic() < deadline, f"no standby waiting: {standby}\n{self.log()}"
            time.sleep(0.1)

    def lock_holder(self) -> int | None:
        """The pid written in the node's lock file (the daemon that holds it), if any."""
        try:
            text = (Path(self.spec.state_dir) / f"{self.spec.name}.lock").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def running(self) -> bool:
        if self.pid is None or self.proc is None:
            return False
        if self.pid == self.proc.pid:
            return self.proc.poll() is None
        return process_alive(self.pid)

    def vswitchd_processes(self) -> dict[int, list[str]]:
        """Every vswitchd process of this node's file (the daemon, a standby), by pid."""
        return {pid: argv for pid, argv in processes_with_argument(str(self.config_path)).items()
                if any("vswitchd" in arg for arg in argv) and process_alive(pid)}

    def standby_processes(self) -> dict[int, list[str]]:
        """The vswitchd processes of this file besides the daemon: standbys. (One that took
        over keeps ``--standby`` in its command line; it is the daemon then.)"""
        daemon = {self.pid, self.lock_holder()}
        return {pid: argv for pid, argv in self.vswitchd_processes().items()
                if pid not in daemon}

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, timeout: float = STOP_TIMEOUT, signum: int = signal.SIGINT) -> int | None:
        """SIGINT (stop and remove everything; SIGTERM would keep the pods for a restart), then
        SIGKILL if it has not exited in ``timeout``; returns the exit status (None for a daemon
        that took over from a standby: it is not our child)."""
        if self.proc is None:
            return None
        if self.pid != self.proc.pid:
            if process_alive(self.pid):
                os.kill(self.pid, signum)
                if not wait_for_exit(self.pid, timeout):
                    os.kill(self.pid, signal.SIGKILL)
                    wait_for_exit(self.pid, timeout)
            self._close_log()
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def clean(self) -> subprocess.CompletedProcess:
        """``vswitchctl clean --config FILE``: remove what a stopped daemon kept or left."""
        return self.ctl_run("clean", "--config", str(self.config_path))

    def kill(self) -> None:
        """SIGKILL, the way a crash or an OOM kill ends the daemon: no chance to clean up. With a
        standby, the standby takes over (``wait_takeover``)."""
        assert self.proc is not None and self.pid is not None
        if self.pid != self.proc.pid:
            if process_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
            wait_for_exit(self.pid, STOP_TIMEOUT)
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_log()

    # ---- the control socket -----------------------------------------------------------------

    def ctl_argv(self) -> list[str]:
        return [*VSWITCHCTL, "--socket", self.spec.socket]

    def ctl_run(self, *args: str, timeout: float = 30.0, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``vswitchctl --socket S ARGS`` and return the completed process, whatever its status."""
        return subprocess.run(
            [*self.ctl_argv(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def ctl(self, *args: str, json: bool = True, timeout: float = 30.0) -> Any:
        """Run a vswitchctl command that must succeed; decoded JSON, or the text output."""
        argv = ["--json", *args] if json else list(args)
        result = self.ctl_run(*argv, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(
                f"vswitchctl {' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\ndaemon log:\n{self.log()}"
            )
        if not json:
            return result.stdout
        try:
            return jsonlib.loads(result.stdout)
        except ValueError as exc:
            raise AssertionError(
                f"vswitchctl {' '.join(argv)} printed no valid JSON ({exc}):\n{result.stdout}"
            ) from None

    def exec(self, pod: str, *cmd: str, timeout: float = 60.0, check: bool = True, **kwargs: Any):
        """Run ``cmd`` inside the pod through ``vswitchctl exec`` (part of what is under test)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        result = subprocess.run(
            [*self.ctl_argv(), "exec", pod, "--", *cmd],
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"vswitchctl exec {pod} -- {' '.join(cmd)[:200]} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def wait_listening(self, pod: str, port: int, timeout: float = 10.0) -> None:
        """Until something listens on TCP ``port`` in the pod (servers whose output is buffered,
        such as iperf3, announce nothing: the socket tells)."""
        deadline = time.monotonic() + timeout
        while True:
            listening = subprocess.run(
                ["nsenter", f"--net={NETNS_DIR / self.spec.netns(pod)}", "ss", "-Hltn",
                 f"sport = :{port}"], capture_output=True, text=True).stdout
            if listening.strip():
                return
            assert time.monotonic() < deadline, f"nothing listens on TCP {port} in {pod}"
            time.sleep(0.1)

    def popen_in(self, pod: str, *cmd: str, **kwargs: Any) -> subprocess.Popen:
        """Start ``cmd`` in the pod's namespace with full Popen control (servers, streaming)."""
        path = NETNS_DIR / self.spec.netns(pod)
        return subprocess.Popen(["nsenter", f"--net={path}", *cmd], **kwargs)

    def python_in(self, pod: str, script: str, *args: str, timeout: float = 60.0) -> Any:
        """Run a program of tests/programs (its path, from ``program``) in the pod via
        ``vswitchctl exec``; its stdout is JSON."""
        result = self.exec(pod, PYTHON, script, *args, timeout=timeout)
        return jsonlib.loads(result.stdout)

    # ---- bookkeeping for cleanup --------------------------------------------------------------

    def remember_objects(self) -> None:
        """Note the namespaces and TAPs of this node while they are visible."""
        for name in node_namespaces(self.spec.name):
            inode = netns_inode(name)
            if inode is not None:
                self.known_inodes.add(inode)
        try:
            listings = [self.ctl("pods", "-A"), self.ctl("ports")]
        except (AssertionError, subprocess.TimeoutExpired):
            return  # a test that checks these commands reports their failure itself
        for listing in listings:
            for entry in as_list(listing, "ports"):
                if isinstance(entry, dict):
                    for key in ("device", "tap", "ifname"):
                        value = entry.get(key)
                        if isinstance(value, str) and value and value != "eth0":
                            self.known_taps.add(value)

    def leftovers(self) -> Leftovers:
        """What is left of the node: its namespaces, TAPs, the processes in them, and any
        vswitchd process of its file (a standby that outlived its daemon is a leak too)."""
        taps = sorted(name for name in tun_devices() if name in self.known_taps)
        namespaces = node_namespaces(self.spec.name)
        # The kernel reuses a destroyed namespace's inode number: one remembered from a pod that
        # is gone may now be another node's (another test's, on a shared machine) namespace.
        foreign = {netns_inode(name) for name in netns.listnetns()
                   if not name.startswith(f"vsw-{self.spec.name}.")}
        inodes = set(self.known_inodes) - foreign
        inodes.update(i for i in (netns_inode(n) for n in namespaces) if i is not None)
        return Leftovers(
            namespaces=namespaces,
            taps=taps,
            processes={**pids_in_netns(inodes), **self.vswitchd_processes()},
        )


def cleanup_node(daemon: Daemon) -> Leftovers:
    """Stop the daemon (SIGINT: remove everything), then remove by force whatever of this node is
    left; return what was left. A test that stops its daemon with SIGTERM or SIGKILL at the end
    cleans up itself (``Daemon.clean``), or its pods count as leftovers.

    The return value is what the daemon itself failed to remove, which the fixture turns into a
    failure when the test passed: a leak is a bug even if the test's own assertions held.
    """
    if daemon.proc is not None:
        daemon.stop()
    # Namespace teardown in the kernel is asynchronous; give a clean shutdown a moment to finish.
    deadline = time.monotonic() + 2.0
    left = daemon.leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = daemon.leftovers()
    for pid in left.processes:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in node_namespaces(daemon.spec.name):
        try:
            netns.remove(name)
        except FileNotFoundError:
            pass
    if left.taps:
        with IPRoute() as ipr:
            for name in left.taps:
                for index in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=index)
    # A socket file left by a killed daemon is harmless (the next start replaces it) but it is
    # still ours to remove.
    try:
        os.unlink(daemon.spec.socket)
    except FileNotFoundError:
        pass
    short_dir = Path("/tmp") / f"vsw-{daemon.spec.name}"
    if short_dir.is_dir():
        for child in short_dir.iterdir():
            child.unlink()
        short_dir.rmdir()
    return left


# --------------------------------------------------------------------------------------------
# Programs that run inside pods: files under tests/programs, each run as ``python3 PATH ARGS``;
# each file's docstring gives its arguments and output (mostly one JSON document on stdout).
# --------------------------------------------------------------------------------------------

PROGRAMS_DIR = Path(__file__).resolve().parent.parent / "programs"


def program(name: str) -> str:
    """The absolute path of ``tests/programs/NAME.py``, so that it runs from any directory."""
    path = PROGRAMS_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no program {path}")
    return str(path)


PING_SCRIPT = program("ping")
TCP_SINK_SCRIPT = program("tcp_sink")
TCP_SOURCE_SCRIPT = program("tcp_source")
UDP_SINK_SCRIPT = program("udp_sink")
UDP_SOURCE_SCRIPT = program("udp_source")
RAW_UDP_SCRIPT = program("raw_udp")


def ping_from_root(targets: Sequence[str], timeout: float = 2.0) -> dict[str, float | None]:
    """Ping from the test process's own namespace (the root namespace, i.e. the node)."""
    result = subprocess.run(
        [PYTHON, PING_SCRIPT, str(timeout), *targets],
        capture_output=True,
        text=True,
        timeout=timeout * len(targets) + 30,
        check=True,
    )
    return jsonlib.loads(result.stdout)


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """The next line a child prints on stdout, waiting at most ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no output from {proc.args!r} within {timeout} s")
    return proc.stdout.readline().strip()


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def as_list(value: Any, key: str) -> list:
    """Accept both a bare JSON list and an object wrapping it under ``key``."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get(key), list):
        return value[key]
    if isinstance(value, dict):
        return [dict(v, name=k) if isinstance(v, dict) and "name" not in v else v
                for k, v in value.items()]
    return []


def flatten_numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document, keyed by its dotted path; counters are compared this way."""
    flat: dict[str, float] = {}
    if isinstance(value, bool):
        return flat
    if isinstance(value, (int, float)):
        flat[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            flat.update(flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            label = item.get("name", index) if isinstance(item, dict) else index
            flat.update(flatten_numbers(item, f"{prefix}[{label}]"))
    return flat

"""The kernel side of the runtime against the real kernel: namespaces, TAPs, routes, processes.

Every test works on a node with a random name (so namespaces are ``vsw-t<hex>-...``), a pod CIDR
that no route on this machine uses yet, and a private state directory; the ``node`` fixture removes
whatever carries the node's names afterwards, also when a test fails. Traffic only goes to the
namespaces created here.
"""
from __future__ import annotations

import json
import logging
import os
import random
import secrets
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType

import pytest
import trio

from vswitch.model import (Container, Control, Dataplane, HostPort, Node, Pod, Topology,
                           first_host, kernel_name, last_host, mac_for_ip, netns_name)

from harness import program

pytestmark = pytest.mark.integration

VNET_HDR = bytes(10)
ETH_P_ARP = 0x0806
IFF_UP = 0x1


# ---------------------------------------------------------------------------------------------
# Building topologies (also imported by the crash child process, so no fixtures in here).


def build_topology(node_name: str, pod_cidr: IPv4Network, state_dir: str, *, pods: int = 2,
                   mtu: int = 1400, offloads: bool = True,
                   containers: dict[str, tuple[Container, ...]] | None = None) -> Topology:
    containers = containers or {}
    gateway = first_host(pod_cidr)
    hosts = list(pod_cidr.hosts())
    pod_objs = []
    for i in range(pods):
        name = f"p{i}"
        ip = hosts[10 + i]
        pod_objs.append(Pod(name=name, ip=ip, mac=mac_for_ip(ip), netns=netns_name(node_name, "default", name),
                            tap=kernel_name("vsp", node_name, name),
                            containers=containers.get(name, ())))
    host_ip = last_host(pod_cidr)
    return Topology(
        source="<test>",
        node=Node(name=node_name, pod_cidr=pod_cidr, gateway=gateway,
                  gateway_mac="0a:58:00:00:00:01", mtu=mtu),
        pods=tuple(pod_objs),
        host_port=HostPort(enabled=True, name=kernel_name("vsh", node_name),
                           address=IPv4Interface(f"{host_ip}/{pod_cidr.prefixlen}"),
                           mac=mac_for_ip(host_ip)),
        dataplane=Dataplane(offloads=offloads),
        control=Control(socket=os.path.join(state_dir, f"{node_name}.sock"), state_dir=state_dir),
    )


def container(name: str, *command: str, **env: str) -> Container:
    return Container(name=name, command=tuple(command), env=MappingProxyType(dict(env)))


# ---------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def netns_capable() -> None:
    """Skip without root and namespaces; in CI (CI=true) that is a failure instead."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root"
    elif not os.path.exists("/dev/net/tun"):
        reason = "needs /dev/net/tun"
    else:
        from pyroute2 import netns

        probe = f"vswprobe-{secrets.token_hex(3)}"
        try:
            netns.create(probe)
            netns.remove(probe)
        except OSError as exc:
            reason = f"cannot create a network namespace: {exc}"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _routed_networks() -> list[IPv4Network]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes = ipr.get_routes(family=socket.AF_INET)
    nets = []
    for r in routes:
        dst = r.get("dst") or "0.0.0.0"
        if r["dst_len"] == 0:
            continue
        nets.append(IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
    return nets


def _free_network(within: str, prefixlen: int = 24) -> IPv4Network:
    """A random subnet of ``within`` that overlaps no route on this machine."""
    used = _routed_networks()
    candidates = list(IPv4Network(within).subnets(new_prefix=prefixlen))
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /{prefixlen} in {within}")


@dataclass(frozen=True)
class NodeUnderTest:
    name: str
    pod_cidr: IPv4Network
    state_dir: str

    def topology(self, **kwargs) -> Topology:
        return build_topology(self.name, self.pod_cidr, self.state_dir, **kwargs)


def _scrub(node: NodeUnderTest) -> None:
    """Remove everything carrying the node's names, whatever state a failed test left."""
    from pyroute2 import IPRoute, netns

    from vswitch.runtime.netns import kill_netns_processes

    for name in netns.listnetns():
        # Test node names are unique random hex strings, so the prefix cannot match another node.
        if name.startswith(f"vsw-{node.name}."):
            kill_netns_processes(name, grace=0.5)
            netns.remove(name)
    topo = node.topology(pods=8)
    with IPRoute() as ipr:
        for name in [*(p.tap for p in topo.pods), topo.host_port.name]:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)


@pytest.fixture
def node(netns_capable, tmp_path) -> NodeUnderTest:
    test_node = NodeUnderTest(name=f"t{secrets.token_hex(3)}", pod_cidr=_free_network("10.200.0.0/16"),
                         state_dir=str(tmp_path / "state"))
    try:
        yield test_node
    finally:
        _scrub(test_node)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def pod_log(node):
    log = logging.getLogger(f"test.pods.{node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = ListHandler()
    log.addHandler(handler)
    try:
        yield log, handler.messages
    finally:
        log.removeHandler(handler)


# ---------------------------------------------------------------------------------------------
# Helpers that look at the kernel.


def netns_exists(name: str) -> bool:
    from pyroute2 import netns

    return name in netns.listnetns()


def root_link(name: str):
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.get_links(ifname=name) if ipr.link_lookup(ifname=name) else []
    return found[0] if found else None


def in_netns(name: str):
    from pyroute2 import IPRoute

    return IPRoute(netns=name, flags=0)


def main_routes(ipr) -> list:
    return [r for r in ipr.get_routes(family=socket.AF_INET) if r.get("table") == 254]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def arp_request(src_mac: str, src_ip: IPv4Address, target_ip: IPv4Address) -> bytes:
    mac = bytes.fromhex(src_mac.replace(":", ""))
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, src_ip.packed, bytes(6),
                      target_ip.packed)
    return eth + arp


async def read_arp_reply(fd: int, vnet_hdr: bool, timeout: float = 3.0) -> tuple:
    from vswitch.runtime.tap import read_burst

    with trio.fail_after(timeout):
        while True:
            await trio.lowlevel.wait_readable(fd)
            for frame in read_burst(fd, 16):
                if vnet_hdr:
                    frame = frame[len(VNET_HDR):]
                if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
                    continue  # IPv6 neighbour discovery and the like from the pod's kernel
                fields = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
                if fields[4] == 2:
                    return frame[:6], fields


# ---------------------------------------------------------------------------------------------
# Pods and the host port.


async def test_pod_namespace_has_eth0_with_mac_ip_mtu_and_default_route(node):
    from vswitch.runtime.kernel import Kernel

    topo = node.topology(mtu=1400)
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            assert netns_exists(pod.netns)
            assert root_link(pod.tap) is None, "the TAP must have moved into the pod"
            with in_netns(pod.netns) as ipr:
                (eth0,) = ipr.get_links(ifname="eth0")
                assert eth0.get("address") == pod.mac
                assert eth0.get("mtu") == 1400
                assert eth0["flags"] & IFF_UP
                (lo,) = ipr.get_links(ifname="lo")
                assert lo["flags"] & IFF_UP
                addrs = [(a.get("address"), a["prefixlen"]) for a in
                         ipr.get_addr(family=socket.AF_INET, index=eth0["index"])]
                assert addrs == [(str(pod.ip), node.pod_cidr.prefixlen)]
                defaults = [r for r in main_routes(ipr) if r["dst_len"] == 0]
                assert len(defaults) == 1
                assert defaults[0].get("gateway") == str(topo.node.gateway)
                assert defaults[0].get("oif") == eth0["index"]
        finally:
            os.close(fd)
        await kernel.delete_pod(pod)
        assert not netns_exists(pod.netns)


@pytest.mark.parametrize("offloads", [True, False], ids=["vnet_hdr", "plain"])
async def test_pod_kernel_answers_arp_written_into_the_tap(node, offloads):
    from vswitch.runtime.kernel import Kernel
    from vswitch.runtime.tap import write_frame

    topo = node.topology(offloads=offloads)
    pod = topo.pods[1]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            request = arp_request(topo.node.gateway_mac, topo.node.gateway, pod.ip)
            assert write_frame(fd, (VNET_HDR if offloads else b"") + request)
            eth_dst, arp = await read_arp_reply(fd, offloads)
        finally:
            os.close(fd)
    gateway_mac = bytes.fromhex(topo.node.gateway_mac.replace(":", ""))
    assert eth_dst == gateway_mac
    assert arp[5] == bytes.fromhex(pod.mac.replace(":", ""))  # sender MAC
    assert IPv4Address(arp[6]) == pod.ip  # sender IP
    assert IPv4Address(arp[8]) == topo.node.gateway  # target IP
    assert not netns_exists(pod.netns), "leaving Kernel.open tears the pod down"


async def test_host_port_gets_address_connected_route_and_extra_routes(node):
    from vswitch.runtime.kernel import Kernel

    topo = node.topology(mtu=1450)
    port = topo.host_port
    extra = _free_network("10.201.0.0/16")
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_host_port()
        try:
            link = root_link(port.name)
            assert link is not None
            assert link.get("address") == port.mac
            assert link.get("mtu") == 1450
            assert link["flags"] & IFF_UP
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                addrs = [(a.get("address"), a["prefixlen"]) for a in
                         ipr.get_addr(family=socket.AF_INET, index=link["index"])]
                assert addrs == [(str(port.address.ip), port.address.network.prefixlen)]
                # The kernel's connected route is what lets the node reach its pods.
                connected = [r for r in main_routes(ipr) if r.get("oif") == link["index"]
                             and r["dst_len"] == node.pod_cidr.prefixlen]
                assert [r.get("dst") for r in connected] == [str(node.pod_cidr.network_address)]
            await kernel.add_host_route(extra, topo.node.gateway)
            with IPRoute() as ipr:
                routed = [r for r in main_routes(ipr) if r.get("dst") == str(extra.network_address)
                          and r["dst_len"] == extra.prefixlen]
                assert len(routed) == 1
                assert routed[0].get("gateway") == str(topo.node.gateway)
                assert routed[0].get("oif") == link["index"]
            await kernel.teardown()
            assert root_link(port.name) is None
            assert extra not in _routed_networks()
            await kernel.teardown()  # idempotent
        finally:
            os.close(fd)
    assert not os.path.exists(os.path.join(node.state_dir, f"{node.name}.state"))


async def test_journal_lists_objects_while_they_exist(node):
    from vswitch.runtime.kernel import Kernel

    topo = node.topology()
    state_file = os.path.join(node.state_dir, f"{node.name}.state")
    async with Kernel.open(topo) as kernel:
        fds = [await kernel.create_pod(p) for p in topo.pods]
        fds.append(await kernel.create_host_port())
        try:
            assert os.stat(node.state_dir).st_mode & 0o777 == 0o700
            with open(state_file) as f:
                data = json.load(f)
            assert data["netns"] == [p.netns for p in topo.pods]
            assert data["taps"] == [*(p.tap for p in topo.pods), topo.host_port.name]
            await kernel.delete_pod(topo.pods[0])
            with open(state_file) as f:
                data = json.load(f)
            assert data["netns"] == [topo.pods[1].netns]
        finally:
            for fd in fds:
                os.close(fd)
    assert not os.path.exists(state_file)


async def test_pod_creation_refuses_an_existing_namespace_and_keeps_it(node):
    from pyroute2 import netns

    from vswitch.runtime.kernel import Kernel, KernelError

    topo = node.topology()
    pod = topo.pods[0]
    netns.create(pod.netns)
    async with Kernel.open(topo) as kernel:
        with pytest.raises(KernelError, match="already exists"):
            await kernel.create_pod(pod)
        assert netns_exists(pod.netns)
        removed = await kernel.remove_leftovers()
        assert f"netns {pod.netns}" in removed
        fd = await kernel.create_pod(pod)
        os.close(fd)


async def test_second_kernel_for_the_same_node_is_refused(node):
    from vswitch.runtime.journal import NodeBusyError
    from vswitch.runtime.kernel import Kernel, clean_node

    topo = node.topology()
    async with Kernel.open(topo):
        with pytest.raises(NodeBusyError):
            async with Kernel.open(topo):
                pass
        with pytest.raises(NodeBusyError):
            clean_node(node.name, node.state_dir)


# ---------------------------------------------------------------------------------------------
# Processes in pods.


async def test_container_runs_in_the_pod_namespace_and_its_output_is_logged(node, pod_log):
    from vswitch.runtime.containers import ContainerSupervisor
    from vswitch.runtime.kernel import Kernel

    log, messages = pod_log
    topo = node.topology(containers={"p0": (container("probe", sys.executable,
                                                        program("container_probe"),
                                                        GREETING="hi"),)})
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            inode = os.stat(f"/run/netns/{pod.netns}").st_ino
            assert inode != os.stat("/proc/self/ns/net").st_ino
            supervisor = ContainerSupervisor(log)
            with trio.fail_after(15):
                await supervisor.run(pod)
        finally:
            os.close(fd)
    assert f"[p0/probe] netns {inode} p0 {pod.ip} hi /" in messages
    (info,) = supervisor.info("p0")
    assert info["name"] == "probe" and info["state"] == "exited(0)" and info["exit_code"] == 0
    assert isinstance(info["pid"], int)


async def test_containers_outlive_the_worker_threads_of_the_daemon(node, pod_log, monkeypatch):
    """PR_SET_PDEATHSIG fires when the forking *thread* exits. trio retires idle worker threads
    (after 10 s; shortened here), so a container forked from one would be killed with it."""
    import trio._core._thread_cache as thread_cache

    from vswitch.runtime.containers import run_container
    from vswitch.runtime.kernel import Kernel

    monkeypatch.setattr(thread_cache, "IDLE_TIMEOUT", 0.05)
    log, _ = pod_log
    topo = node.topology(containers={"p0": (container("sleeper", "sleep", "30"),)})
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            async with trio.open_nursery() as nursery:
                pid = await nursery.start(lambda task_status: run_container(
                    pod, pod.containers[0], log=log, task_status=task_status))
                for _ in range(4):  # let several worker threads start and retire
                    await trio.to_thread.run_sync(lambda: None)
                    await trio.sleep(0.2)
                assert pid_alive(pid), "the container died with a worker thread"
                nursery.cancel_scope.cancel()
        finally:
            os.close(fd)


async def test_two_containers_of_a_pod_talk_over_localhost(node, pod_log):
    from vswitch.runtime.containers import ContainerSupervisor
    from vswitch.runtime.kernel import Kernel

    log, messages = pod_log
    port = random.randrange(20000, 60000)
    topo = node.topology(containers={"p1": (
        container("server", sys.executable, program("localhost_server"), str(port)),
        container("client", sys.executable, program("localhost_client"), str(port)))})
    pod = topo.pods[1]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            supervisor = ContainerSupervisor(log)
            with trio.fail_after(15):
                await supervisor.run(pod)
        finally:
            os.close(fd)
    assert "[p1/client] got echo:hello" in messages, messages
    assert [i["state"] for i in supervisor.info("p1")] == ["exited(0)", "exited(0)"]


async def test_cancelled_container_gets_sigterm_then_sigkill_and_is_reaped(node, pod_log):
    from vswitch.runtime.containers import STOP_GRACE, ContainerSupervisor
    from vswitch.runtime.kernel import Kernel

    log, messages = pod_log
    topo = node.topology(containers={"p0": (
        container("polite", "sleep", "60"),
        # Ignores SIGTERM, and so does its sleep child: only SIGKILL ends it.
        container("stubborn", "sh", "-c", "trap '' TERM; sleep 60; sleep 60"),
    )})
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            supervisor = ContainerSupervisor(log)
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run, pod)
                pids = [i["pid"] for i in supervisor.info("p0")]
                assert [i["state"] for i in supervisor.info("p0")] == ["running", "running"]
                await trio.sleep(0.3)
                started = trio.current_time()
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - started
        finally:
            os.close(fd)
    assert STOP_GRACE - 0.5 < elapsed < STOP_GRACE + 3
    states = {i["name"]: i["state"] for i in supervisor.info("p0")}
    assert states == {"polite": f"exited({-signal.SIGTERM})", "stubborn": f"exited({-signal.SIGKILL})"}
    assert not any(pid_alive(pid) for pid in pids)
    assert "[p0/stubborn] killed by SIGKILL" in messages


async def test_container_that_cannot_start_is_reported_failed(node, pod_log):
    from vswitch.runtime.containers import ContainerSupervisor
    from vswitch.runtime.kernel import Kernel

    log, _ = pod_log
    topo = node.topology(containers={"p0": (container("typo", "/nonexistent/command"),
                                            container("fine", "true"))})
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            with trio.fail_after(10):
                await ContainerSupervisor(log).run(pod)
            supervisor = ContainerSupervisor(log)
            await supervisor.run(pod)
        finally:
            os.close(fd)
    typo, fine = supervisor.info("p0")
    assert typo["state"] == "failed" and "No such file" in typo["error"]
    assert fine["state"] == "exited(0)"


async def test_delete_pod_and_teardown_kill_processes_in_the_namespace(node, pod_log):
    from vswitch.runtime.containers import start_container
    from vswitch.runtime.kernel import Kernel
    from vswitch.runtime.netns import pids_in_netns

    log, _ = pod_log
    # setsid puts the sleep outside the container's process group: only the namespace finds it.
    escapee = container("escapee", "setsid", "-f", "sleep", "300")
    topo = node.topology()
    async with Kernel.open(topo) as kernel:
        fds = [await kernel.create_pod(p) for p in topo.pods]
        try:
            for pod in topo.pods:
                proc = await start_container(pod, escapee)
                await proc.wait()
            with trio.fail_after(5):
                while not all(pids_in_netns(p.netns) for p in topo.pods):
                    await trio.sleep(0.05)
            pids = {p.name: pids_in_netns(p.netns) for p in topo.pods}
            await kernel.delete_pod(topo.pods[0])
            assert not netns_exists(topo.pods[0].netns)
            assert not any(pid_alive(pid) for pid in pids["p0"])
            assert all(pid_alive(pid) for pid in pids["p1"])
            await kernel.teardown()
            assert not netns_exists(topo.pods[1].netns)
            assert not any(pid_alive(pid) for pid in pids["p1"])
        finally:
            for fd in fds:
                os.close(fd)


async def test_delete_pod_stops_supervised_containers_still_running(node, pod_log):
    from vswitch.runtime.containers import ContainerSupervisor
    from vswitch.runtime.kernel import Kernel

    log, _ = pod_log
    topo = node.topology(containers={"p0": (container("sleeper", "sleep", "300"),)})
    pod = topo.pods[0]
    async with Kernel.open(topo) as kernel:
        fd = await kernel.create_pod(pod)
        try:
            supervisor = ContainerSupervisor(log)
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    await nursery.start(supervisor.run, pod)
                    await kernel.delete_pod(pod)
        finally:
            os.close(fd)
    assert [i["state"] for i in supervisor.info("p0")] == [f"exited({-signal.SIGTERM})"]
    assert not netns_exists(pod.netns)


# ---------------------------------------------------------------------------------------------
# Crashes: a daemon killed with SIGKILL, then cleaned up by the next run or by `clean`.

async def crash_a_daemon(node: NodeUnderTest) -> Topology:
    """Run a daemon of ``node`` in a child process that SIGKILLs itself mid-run."""
    result = await trio.run_process(
        [sys.executable, program("crashing_kernel"), __file__, node.name, str(node.pod_cidr),
         node.state_dir], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    topo = node.topology()
    assert all(netns_exists(p.netns) for p in topo.pods)
    # The TAPs are persistent: the host port's outlives the dead daemon's fds, until cleanup.
    assert root_link(topo.host_port.name) is not None
    return topo


def assert_leftovers_then_return_pids(topo: Topology) -> list[int]:
    from vswitch.runtime.journal import read_journal
    from vswitch.runtime.netns import pids_in_netns

    entries = read_journal(topo.control.state_dir, topo.node.name)
    assert set(entries.netns) == {p.netns for p in topo.pods}
    # Containers outlive the daemon (no PR_SET_PDEATHSIG): the shell and its two children stay
    # in the namespace until cleanup.
    deadline = time.monotonic() + 10.0
    orphans = pids_in_netns(topo.pods[0].netns)
    while len(orphans) != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        orphans = pids_in_netns(topo.pods[0].netns)
    assert len(orphans) == 3, orphans
    return orphans


async def test_remove_leftovers_after_a_crash(node):
    from vswitch.runtime.kernel import Kernel

    topo = await crash_a_daemon(node)
    orphans = assert_leftovers_then_return_pids(topo)
    async with Kernel.open(topo) as kernel:
        removed = await kernel.remove_leftovers()
        assert {f"netns {p.netns}" for p in topo.pods} <= set(removed)
        assert {f"process {pid} in {topo.pods[0].netns}" for pid in orphans} <= set(removed)
        assert not any(netns_exists(p.netns) for p in topo.pods)
        assert not any(pid_alive(pid) for pid in orphans)
        assert root_link(topo.host_port.name) is None
        assert await kernel.remove_leftovers() == []
        fds = [await kernel.create_pod(p) for p in topo.pods]
        for fd in fds:
            os.close(fd)
    assert not os.path.exists(os.path.join(node.state_dir, f"{node.name}.state"))


async def test_clean_node_after_a_crash_uses_the_journal_alone(node):
    from vswitch.runtime.kernel import clean_node

    topo = await crash_a_daemon(node)
    orphans = assert_leftovers_then_return_pids(topo)
    removed = await trio.to_thread.run_sync(clean_node, node.name, node.state_dir)
    assert {f"netns {p.netns}" for p in topo.pods} <= set(removed)
    assert not any(netns_exists(p.netns) for p in topo.pods)
    assert not any(pid_alive(pid) for pid in orphans)
    assert root_link(topo.host_port.name) is None
    assert not os.path.exists(os.path.join(node.state_dir, f"{node.name}.state"))
    assert clean_node(node.name, node.state_dir) == []


async def test_remove_leftovers_finds_deterministic_names_without_a_journal(node):
    from pyroute2 import netns

    from vswitch.runtime.kernel import Kernel, clean_node

    topo = node.topology()
    netns.create(topo.pods[1].netns)
    # Not in any journal: only the topology's names lead to it.
    assert clean_node(node.name, node.state_dir) == []
    assert netns_exists(topo.pods[1].netns)
    async with Kernel.open(topo) as kernel:
        assert await kernel.remove_leftovers() == [f"netns {topo.pods[1].netns}"]
    assert not netns_exists(topo.pods[1].netns)

"""Several daemons on one host, as nodes on one L2 underlay: ``[uplink] bridge``.

The far sides of the nodes' uplinks are ports of one Linux bridge in one namespace; the bridge is
the gateway. The namespace and the bridge are shared: the last node out removes what the daemons
created, a node that stops or crashes (and is cleaned) never cuts the others off, and what was
there before any daemon stays.
"""
from __future__ import annotations

import os
import secrets
import signal
import threading
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from harness import (PING_SCRIPT, STOP_TIMEOUT, DaemonError, PodSpec, random_uplink_network,
                     tun_devices)
from multinode import Lab, Underlay, call_phase_passed, lab_factory, random_underlay_names

pytestmark = pytest.mark.integration


@pytest.fixture
def make_lab(netns_environment, tmp_path, request):
    with lab_factory(tmp_path, lambda: call_phase_passed(request)) as factory:
        yield factory


def uplink_device(node) -> str:
    from vswitch.config import load_topology

    return load_topology(node.daemon.config_path).uplink.name


def assert_answers(lab: Lab, *indices: int) -> None:
    targets = [str(lab[i].address) for i in indices]
    rtts = lab.underlay.ping(*targets)
    missing = [t for t in targets if rtts[t] is None]
    assert not missing, (f"no echo reply from {missing}:\n" +
                         "\n".join(lab[i].daemon.log() for i in indices))


def test_two_nodes_on_one_bridge(make_lab) -> None:
    lab = make_lab(2, [PodSpec("alpha")])
    underlay = lab.underlay
    assert not underlay.exists()
    lab.start()

    # Both far sides are ports of the bridge, which holds the gateway address.
    assert underlay.bridge_ports() == sorted(uplink_device(node) for node in lab.nodes)
    assert underlay.bridge_addresses() == [f"{underlay.gateway}/{underlay.network.prefixlen}"]
    assert_answers(lab, 0, 1)

    # A pod of node 0 reaches node 1's underlay address: masqueraded out of node 0's uplink,
    # switched by the bridge, answered by node 1's router.
    target = str(lab[1].address)
    result = lab[0].daemon.python_in("alpha", PING_SCRIPT, "2", target)
    assert result[target] is not None, lab[0].daemon.log()

    # Node 0 leaves; node 1 keeps its underlay.
    assert lab.stop(0) == 0
    assert underlay.bridge_exists()
    assert underlay.bridge_ports() == [uplink_device(lab[1])]
    assert_answers(lab, 1)

    # The last node out removes the namespace (and the bridge in it) the daemons created.
    assert lab.stop(1) == 0
    assert not underlay.exists()
    assert not any(uplink_device(node) in tun_devices() for node in lab.nodes)
    assert list(lab.state_dir.iterdir()) == []


def test_an_underlay_that_was_there_survives(make_lab) -> None:
    lab = make_lab(2)
    lab.create_underlay()
    lab.start()
    gateway = f"{lab.underlay.gateway}/{lab.underlay.network.prefixlen}"
    assert lab.underlay.bridge_addresses() == [gateway]
    assert_answers(lab, 0, 1)

    assert lab.stop(0) == 0
    assert lab.stop(1) == 0
    # The user's namespace and bridge stay; the gateway address the daemons added goes.
    assert lab.underlay.exists() and lab.underlay.bridge_exists()
    assert lab.underlay.bridge_ports() == []
    assert lab.underlay.bridge_addresses() == []
    assert list(lab.state_dir.iterdir()) == []


def test_nodes_started_and_stopped_at_the_same_moment(make_lab) -> None:
    lab = make_lab(3)
    lab.start(together=True)
    assert lab.underlay.bridge_ports() == sorted(uplink_device(node) for node in lab.nodes)
    assert lab.underlay.bridge_addresses() == [
        f"{lab.underlay.gateway}/{lab.underlay.network.prefixlen}"]
    assert_answers(lab, 0, 1, 2)

    # SIGINT removes everything (SIGTERM would keep the nodes' uplinks for a restart).
    for node in lab.nodes:
        node.daemon.proc.send_signal(signal.SIGINT)
    # Waited for, not stopped: a second signal at the end of a shutdown would kill the process.
    assert [node.daemon.proc.wait(STOP_TIMEOUT) for node in lab.nodes] == [0, 0, 0]
    assert not lab.underlay.exists()
    assert list(lab.state_dir.iterdir()) == []


def test_clean_after_a_crash_leaves_the_other_nodes_alone(make_lab) -> None:
    lab = make_lab(2, [PodSpec("alpha")])
    lab.start()
    lab[0].daemon.kill()
    # The killed node's far side is persistent: it stays a port of the bridge (for a restart to
    # re-attach) until clean; the other node still has its underlay.
    assert lab.underlay.bridge_ports() == sorted(uplink_device(node) for node in lab.nodes)
    assert_answers(lab, 1)

    cleaned = lab[0].daemon.ctl_run("clean", "--config", str(lab[0].daemon.config_path))
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"netns vsw-{lab[0].name}.default.alpha" in cleaned.stdout
    assert lab.underlay.bridge_ports() == [uplink_device(lab[1])]
    assert lab.underlay.bridge_exists()
    assert_answers(lab, 1)
    target = str(lab.underlay.gateway)
    assert lab[1].daemon.python_in("alpha", PING_SCRIPT, "2", target)[target] is not None

    assert lab.stop(1) == 0
    assert not lab.underlay.exists()
    assert list(lab.state_dir.iterdir()) == []


def test_every_node_gets_its_own_names(make_lab) -> None:
    """Nothing of one node is another's: sockets, TAPs, namespaces, journals."""
    lab = make_lab(2, [PodSpec("alpha")])
    lab.start()
    first, second = ({port["device"] for port in node.daemon.ctl("ports")} for node in lab.nodes)
    assert first and second and not first & second
    assert lab[0].socket != lab[1].socket
    # One journal per node in the shared state directory, plus the underlay's record.
    names = sorted(path.name for path in lab.state_dir.iterdir())
    assert f"{lab[0].name}.state" in names and f"{lab[1].name}.state" in names
    assert f"underlay.netns.{lab.underlay.netns}.state" in names


def test_a_link_with_the_bridge_name_that_is_no_bridge_is_refused(make_lab) -> None:
    lab = make_lab(1)
    netns.create(lab.underlay.netns)
    lab.underlay_was_there = True
    with IPRoute(netns=lab.underlay.netns, flags=0) as ipr:
        ipr.link("add", ifname=lab.underlay.bridge, kind="veth", peer=f"{lab.underlay.bridge}p")
    with pytest.raises(DaemonError, match=f"vswitchd: uplink.bridge: {lab.underlay.bridge} "
                                          "exists and is not a bridge \\(it is a veth link\\)"):
        lab.start()
    assert lab[0].daemon.proc.wait(STOP_TIMEOUT) == 1
    assert lab.underlay.exists() and list(lab.state_dir.iterdir()) == []


def test_joining_and_leaving_at_the_same_moment_do_not_race(tmp_path: Path) -> None:
    """Many nodes' kernel layers join, then leave, one underlay at once, each in its own thread
    (as separate daemons would): every join succeeds and the last leaver removes everything."""
    from vswitch.model import Uplink, kernel_name, mac_for_ip
    from vswitch.runtime.kernel import NodeNames, NodeObjects
    from vswitch.runtime.netlink import NetlinkSession

    underlay = Underlay(random_uplink_network(), *random_underlay_names())
    state_dir = str(tmp_path / "state")
    token = secrets.token_hex(3)
    count = 6
    barrier = threading.Barrier(count)
    fds: dict[int, int] = {}
    errors: list[BaseException] = []

    def uplink(index: int) -> Uplink:
        address = underlay.address(index)
        return Uplink(address=IPv4Interface(f"{address}/{underlay.network.prefixlen}"),
                      gateway=underlay.gateway, netns=underlay.netns,
                      name=kernel_name("vsu", f"r{index}{token}"), mac=mac_for_ip(address),
                      far_mac=mac_for_ip(underlay.gateway), bridge=underlay.bridge)

    def node(index: int, leave: threading.Event) -> None:
        try:
            with NetlinkSession() as session:
                objects = NodeObjects(f"r{index}{token}", state_dir)
                barrier.wait()
                fds[index] = objects.create_uplink(session, uplink(index), False)
                leave.wait()
                barrier.wait()
                os.close(fds.pop(index))
                objects.remove_all(session, NodeNames())
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    leave = threading.Event()
    threads = [threading.Thread(target=node, args=(i, leave)) for i in range(count)]
    try:
        for thread in threads:
            thread.start()
        while len(fds) < count and not errors:
            threading.Event().wait(0.05)
        assert not errors, errors
        assert underlay.bridge_ports() == sorted(uplink(i).name for i in range(count))
        assert underlay.bridge_addresses() == [f"{underlay.gateway}/24"]
        leave.set()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert not underlay.exists()
        assert os.listdir(state_dir) == []
    finally:
        leave.set()
        barrier.abort()
        for thread in threads:
            thread.join(60)
        for fd in fds.values():
            os.close(fd)
        underlay.remove()


def test_a_bridge_in_the_root_namespace_is_shared_the_same_way(tmp_path: Path) -> None:
    """Without ``netns`` the bridge lives in the host, which then is the gateway itself."""
    from vswitch.model import Uplink, kernel_name, mac_for_ip
    from vswitch.runtime.kernel import NodeNames, NodeObjects
    from vswitch.runtime.netlink import NetlinkSession

    network = random_uplink_network()
    bridge = f"ulbr-{secrets.token_hex(3)}"
    gateway = network.network_address + 1
    state_dir = str(tmp_path / "state")
    nodes, fds = [], []

    def ports() -> list[str]:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=bridge)
            if not found:
                return []
            return sorted(link.get("IFLA_IFNAME") for link in ipr.get_links()
                          if link.get("IFLA_MASTER") == found[0])

    def bridge_exists() -> bool:
        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=bridge))

    try:
        with NetlinkSession() as session:
            for index in range(2):
                address = network.network_address + index + 2
                name = f"r{index}{secrets.token_hex(3)}"
                uplink = Uplink(address=IPv4Interface(f"{address}/24"), gateway=gateway,
                                netns=None, name=kernel_name("vsu", name),
                                mac=mac_for_ip(address), far_mac=mac_for_ip(gateway),
                                bridge=bridge)
                objects = NodeObjects(name, state_dir)
                fds.append(objects.create_uplink(session, uplink, False))
                nodes.append((objects, uplink))
            assert ports() == sorted(uplink.name for _, uplink in nodes)
            os.close(fds.pop(0))
            nodes[0][0].remove_all(session, NodeNames())
            assert ports() == [nodes[1][1].name]
            os.close(fds.pop(0))
            # The TAP is persistent: removing it is part of leaving, as removing the bridge is.
            assert nodes[1][0].remove_all(session, NodeNames()) == [
                f"link {nodes[1][1].name}", f"bridge {bridge} in the root namespace"]
            assert not bridge_exists()
            assert os.listdir(state_dir) == []
    finally:
        for fd in fds:
            os.close(fd)
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=bridge):
                ipr.link("del", index=index)

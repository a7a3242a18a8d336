"""The uplink with real kernels: a far-side namespace playing the internet, the node address
owned by the daemon's router, and pods added and removed while the daemon runs."""
from __future__ import annotations

import json
import secrets
import subprocess
from ipaddress import IPv4Network

import pytest
from pyroute2 import IPRoute, netns

from harness import (PING_SCRIPT, PYTHON, NETNS_DIR, PodSpec, UplinkSpec, node_namespaces,
                     random_uplink_network, tun_devices)

pytestmark = pytest.mark.integration


def far_side_name() -> str:
    # Not "vsw-": the loader keeps that prefix for pod namespaces.
    return f"inet-{secrets.token_hex(3)}"


def ping_from(namespace: str, *targets: str, timeout: float = 2.0) -> dict:
    result = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / namespace}", PYTHON, PING_SCRIPT, str(timeout),
         *targets], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def routes_in(namespace: str) -> list[IPv4Network]:
    """Destinations of the main table's IPv4 routes inside ``namespace``."""
    with IPRoute(netns=namespace, flags=0) as ipr:
        return [IPv4Network(f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}")
                for r in ipr.get_routes(family=2, table=254)]


def addresses_in(namespace: str) -> dict[str, list[str]]:
    with IPRoute(netns=namespace, flags=0) as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        found: dict[str, list[str]] = {}
        for msg in ipr.get_addr(family=2):
            found.setdefault(names[msg["index"]], []).append(
                f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        return found


@pytest.fixture
def far_side():
    """A namespace name for the far side; removed at the end if the daemon left it."""
    name = far_side_name()
    try:
        yield name
    finally:
        if name in netns.listnetns():
            netns.remove(name)


def start_with_uplink(make_daemon, namespace: str | None, pods=()):
    daemon = make_daemon(pods, start=False)
    daemon.update_spec(uplink=UplinkSpec(random_uplink_network([daemon.spec.pod_cidr]), namespace))
    daemon.start()
    return daemon


def test_uplink_far_side_is_created_answered_and_removed(make_daemon, far_side):
    assert far_side not in netns.listnetns()
    daemon = start_with_uplink(make_daemon, far_side, [PodSpec("alpha")])
    uplink = daemon.spec.uplink
    try:
        assert far_side in netns.listnetns()
        # The far side holds the uplink TAP with the gateway's address, and nothing else but lo.
        assert addresses_in(far_side) == {"lo": ["127.0.0.1/8"],
                                          _uplink_device(daemon): [f"{uplink.gateway}/24"]}
        # The internet knows the uplink network and nothing beyond: no route to the pods or a
        # default route back into the node.
        assert routes_in(far_side) == [uplink.network]

        # The daemon's router owns the node address on the uplink and answers ping for it.
        rtts = ping_from(far_side, str(uplink.address))
        assert rtts[str(uplink.address)] is not None, daemon.log()
        # Pods are not reachable from there: the far side has no route to them at all.
        unrouted = subprocess.run(
            ["nsenter", f"--net={NETNS_DIR / far_side}", PYTHON, PING_SCRIPT, "0.5",
             str(daemon.spec.pod_ips()["alpha"])], capture_output=True, text=True, timeout=60)
        assert unrouted.returncode != 0 and "Network is unreachable" in unrouted.stderr

        ports = {p["name"]: p for p in daemon.ctl("ports")}
        assert ports["uplink"]["kind"] == "uplink"
        routes = {r["prefix"]: r for r in daemon.ctl("routes")}
        assert routes[str(uplink.network)]["kind"] == "connected"
        assert routes["0.0.0.0/0"]["via"] == str(uplink.gateway)
    finally:
        daemon.stop()
    # The namespace was ours: it goes with the daemon, and the TAP in it with the fd.
    assert far_side not in netns.listnetns()
    assert _uplink_device(daemon) not in tun_devices()


def test_an_existing_far_side_namespace_is_left_alone(make_daemon, far_side):
    netns.create(far_side)
    daemon = start_with_uplink(make_daemon, far_side)
    try:
        assert _uplink_device(daemon) in addresses_in(far_side)
        assert ping_from(far_side, str(daemon.spec.uplink.address))[
            str(daemon.spec.uplink.address)] is not None
    finally:
        daemon.stop()
    assert far_side in netns.listnetns()
    # Only the TAP went: closing the daemon's fd removed it.
    assert _uplink_device(daemon) not in addresses_in(far_side)


def test_pods_added_and_removed_at_runtime(make_daemon, far_side):
    daemon = start_with_uplink(make_daemon, far_side, [PodSpec("alpha")])
    added = daemon.ctl("pod", "add", "bravo", "--label", "app=web")
    bravo = added["pod"]
    assert bravo["ip"] == str(daemon.spec.pod_cidr.network_address + 11)
    namespace = daemon.spec.netns("bravo")
    assert namespace in node_namespaces(daemon.spec.name)
    daemon.known_taps.add(bravo["device"])
    pods = {p["name"]: p for p in daemon.ctl("pods")}
    assert pods["bravo"]["ready"] is True and pods["bravo"]["labels"] == {"app": "web"}

    # The new pod works: it reaches its gateway and the pod that was there from the start.
    gateway, alpha = str(daemon.spec.gateway), str(daemon.spec.pod_ips()["alpha"])
    result = daemon.python_in("bravo", PING_SCRIPT, "2", gateway, alpha)
    assert result[gateway] is not None and result[alpha] is not None, daemon.log()

    refused = daemon.ctl_run("pod", "add", "charlie", "--ip", alpha)
    assert refused.returncode == 1
    assert f"pod add: pod.ip: {alpha} is the address of pod alpha" in refused.stderr

    unready = daemon.ctl("pod", "unready", "bravo")
    assert unready["ready"] is False
    assert {p["name"]: p["ready"] for p in daemon.ctl("pods")}["bravo"] is False

    daemon.ctl("pod", "del", "bravo")
    assert namespace not in node_namespaces(daemon.spec.name)
    assert bravo["device"] not in tun_devices()
    assert [p["name"] for p in daemon.ctl("pods")] == ["alpha"]
    assert "bravo" not in {p["name"] for p in daemon.ctl("ports")}


def _uplink_device(daemon) -> str:
    from vswitch.config import load_topology

    return load_topology(daemon.config_path).uplink.name

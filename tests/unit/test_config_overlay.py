"""The topology loader: the overlay, static peers, the cluster store, pod_cidr = "auto", the
uplink's bridge and the remote endpoints of services; accepted files and every error with its
key path."""
from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch import model
from vswitch.config import ConfigError, load_topology, parse_pod, parse_topology, update_service
from vswitch.runtime.daemon import restart_differences

from .config_support import CONFIG_DIR, NODE, UPLINK, errors_of, only_error

OVERLAY = NODE + UPLINK + "[overlay]\n"
PEER = '[[peers]]\nname = "lab2"\naddress = "192.0.2.3"\npod_cidr = "10.244.2.0/24"\n'
CLUSTER = '[cluster]\ncidr = "10.244.0.0/16"\n'
ETCD = ('[cluster]\ncidr = "10.244.0.0/16"\nstore = "etcd"\n'
        'etcd_endpoints = ["http://192.0.2.10:2379"]\n')


def peer(name: str = "lab2", address: str = "192.0.2.3", pod_cidr: str = "10.244.2.0/24",
         *extra: str) -> str:
    lines = [f'name = "{name}"', f'address = "{address}"', f'pod_cidr = "{pod_cidr}"', *extra]
    return "[[peers]]\n" + "\n".join(lines) + "\n"


# -- the example ----------------------------------------------------------------------------


def test_the_static_overlay_example_validates_with_vswitchd_check() -> None:
    path = CONFIG_DIR / "overlay-static.toml"
    done = subprocess.run([sys.executable, "-m", "vswitch.cli", "vswitchd", "--check", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=CONFIG_DIR.parent)
    assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
    assert done.stdout.startswith(f"{path}: ok")


def test_the_static_overlay_example_loads() -> None:
    topology = load_topology(CONFIG_DIR / "overlay-static.toml")
    assert topology.overlay == model.Overlay(vni=1, port=4789, mtu=1450,
                                             vtep_mac="0a:58:c0:00:02:02")
    assert topology.peers == (model.Peer("lab2", IPv4Address("192.0.2.3"),
                                         IPv4Network("10.244.2.0/24"), "0a:58:c0:00:02:03"),)
    assert topology.uplink is not None and topology.uplink.bridge == "lab-br0"
    assert topology.node.mtu == 1450 and topology.all_segments()[0].mtu == 1450
    assert topology.services[0].endpoints == (IPv4Address("10.244.1.10"),
                                              IPv4Address("10.244.2.10"))


# -- [overlay] ------------------------------------------------------------------------------


def test_overlay_defaults_follow_the_uplink() -> None:
    topology = parse_topology(OVERLAY)
    assert topology.overlay == model.Overlay(vni=1, port=4789, mtu=1450,
                                             vtep_mac=model.mac_for_ip(IPv4Address("192.0.2.2")))
    assert topology.uplink is not None and topology.uplink.mtu == 1500


def test_without_overlay_nothing_changes() -> None:
    topology = parse_topology(NODE + UPLINK)
    assert topology.overlay is None and topology.peers == ()
    assert topology.node.mtu == 1500 and topology.cluster is not None
    assert topology.cluster.store == "static" and topology.uplink is not None
    assert topology.uplink.bridge is None


def test_overlay_values_as_written() -> None:
    text = (NODE + UPLINK + "mtu = 9000\n[overlay]\nvni = 16777215\nport = 8472\nmtu = 8000\n"
            'vtep_mac = "0A:58:00:00:00:01"\n')
    topology = parse_topology(text)
    assert topology.overlay == model.Overlay(vni=16777215, port=8472, mtu=8000,
                                             vtep_mac="0a:58:00:00:00:01")
    assert topology.node.mtu == 8000


def test_overlay_needs_an_uplink() -> None:
    assert only_error(NODE + "[overlay]\n") == (
        "overlay", "an overlay needs an [uplink] section: its packets leave from the uplink "
                   "address")


@pytest.mark.parametrize(("line", "path", "reason"), [
    ("vni = 0", "overlay.vni", "must be between 1 and 16777215, got 0"),
    ("vni = 16777216", "overlay.vni", "must be between 1 and 16777215, got 16777216"),
    ('vni = "1"', "overlay.vni", "expected an integer, got string"),
    ("port = 0", "overlay.port", "must be between 1 and 65535, got 0"),
    ("port = 65536", "overlay.port", "must be between 1 and 65535, got 65536"),
    ("mtu = 575", "overlay.mtu", "must be between 576 and 9000, got 575"),
    ("mtu = 1451", "overlay.mtu", "1451 does not fit the uplink: at most uplink.mtu 1500 - 50 = "
                                  "1450 (outer IPv4, UDP, VXLAN and inner Ethernet headers)"),
    ('vtep_mac = "0a:58:00:00:00"', "overlay.vtep_mac",
     "'0a:58:00:00:00' is not a MAC address like 0a:58:c0:00:02:02"),
    ('vtep_mac = "01:00:5e:00:00:01"', "overlay.vtep_mac",
     "01:00:5e:00:00:01 is a multicast MAC address; a VTEP MAC must be unicast"),
    ('vtep_mac = "00:00:00:00:00:00"', "overlay.vtep_mac",
     "00:00:00:00:00:00 is not a usable MAC address"),
    ("vnid = 1", "overlay.vnid", "unknown key; did you mean 'vni'? allowed here: vni, port, mtu, "
                                "vtep_mac"),
])
def test_overlay_errors(line: str, path: str, reason: str) -> None:
    assert only_error(OVERLAY + line + "\n") == (path, reason)


def test_an_uplink_too_small_for_the_overlay_is_named() -> None:
    assert only_error(NODE + UPLINK + "mtu = 625\n[overlay]\n") == (
        "uplink.mtu", "625 leaves 575 for the overlay (50 bytes of VXLAN headers); an overlay "
                      "needs at least 626")
    assert parse_topology(NODE + UPLINK + "mtu = 626\n[overlay]\n").node.mtu == 576


# -- MTUs of segments and pods under an overlay -----------------------------------------------

SEGMENTS = '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'


def test_segments_and_pods_default_to_the_overlay_mtu() -> None:
    topology = parse_topology(OVERLAY + SEGMENTS + '[[pods]]\nname = "a"\n'
                              '[[pods]]\nname = "b"\nsegment = "blue"\n')
    assert [(s.name, s.mtu) for s in topology.all_segments()] == [("default", 1450),
                                                                   ("blue", 1450)]
    assert [topology.pod_mtu(pod) for pod in topology.pods] == [1450, 1450]
    assert topology.node.mtu == 1450


def test_written_mtus_up_to_the_overlay_mtu_are_kept() -> None:
    text = (NODE + "mtu = 1400\n" + UPLINK + "mtu = 1500\n[overlay]\n" + SEGMENTS
            + '[[segments]]\nname = "red"\ncidr = "10.246.1.0/24"\nmtu = 1450\n'
            + '[[pods]]\nname = "a"\nmtu = 1300\n')
    topology = parse_topology(text)
    assert [s.mtu for s in topology.all_segments()] == [1400, 1400, 1450]
    assert topology.pod_mtu(topology.pod("a")) == 1300


def test_mtus_larger_than_the_overlay_mtu_are_errors() -> None:
    why = "larger than the overlay MTU 1450; packets of this network may cross the overlay"
    assert errors_of(OVERLAY + SEGMENTS + "mtu = 1500\n" + '[[pods]]\nname = "a"\nmtu = 1451\n') == [
        ("segments[0].mtu", f"1500 is {why}"),
        ("pods[0].mtu", "1451 is larger than the overlay MTU 1450; the pod's packets may cross "
                        "the overlay"),
    ]


def test_a_node_mtu_above_the_overlay_mtu_says_how_to_fix_it() -> None:
    path, reason = only_error(NODE + "mtu = 1500\n" + UPLINK + "[overlay]\n")
    assert path == "node.mtu"
    assert reason.startswith("1500 is larger than the overlay MTU 1450")
    assert reason.endswith("leave node.mtu out or raise uplink.mtu")


def test_a_pod_added_at_runtime_respects_the_overlay_mtu() -> None:
    running = parse_topology(OVERLAY)
    assert parse_pod({"name": "a", "mtu": 1450}, running).mtu == 1450
    with pytest.raises(ConfigError) as caught:
        parse_pod({"name": "a", "mtu": 1500}, running)
    assert caught.value.errors == [("pod.mtu", "1500 is larger than the overlay MTU 1450; the "
                                               "pod's packets may cross the overlay")]


# -- [[peers]] --------------------------------------------------------------------------------


def test_peers_are_read_with_derived_and_explicit_vtep_macs() -> None:
    text = OVERLAY + CLUSTER + PEER + peer("lab3", "198.51.100.7", "10.244.3.0/24",
                                           'vtep_mac = "AA:BB:CC:00:00:01"')
    topology = parse_topology(text)
    assert topology.peers == (
        model.Peer("lab2", IPv4Address("192.0.2.3"), IPv4Network("10.244.2.0/24"),
                   "0a:58:c0:00:02:03"),
        model.Peer("lab3", IPv4Address("198.51.100.7"), IPv4Network("10.244.3.0/24"),
                   "aa:bb:cc:00:00:01"),
    )


def test_the_default_cluster_cidr_covers_the_peers() -> None:
    topology = parse_topology(OVERLAY + PEER)
    assert topology.cluster is not None
    assert topology.cluster.cidr == IPv4Network("10.244.0.0/22")


def test_peers_need_an_overlay() -> None:
    assert only_error(NODE + UPLINK + PEER) == (
        "peers", "peers are reached through the overlay; add an [overlay] section (and an "
                 "[uplink] it rides on)")
    assert parse_topology("peers = []\n" + NODE).peers == ()


def test_peers_is_an_array_of_tables() -> None:
    assert only_error(OVERLAY + "[peers]\nname = 'x'\n") == (
        "peers", "expected an array of tables, got table")


@pytest.mark.parametrize(("entry", "path", "reason"), [
    ('[[peers]]\naddress = "192.0.2.3"\npod_cidr = "10.244.2.0/24"\n', "peers[0].name",
     "required key is missing"),
    ('[[peers]]\nname = "lab2"\npod_cidr = "10.244.2.0/24"\n', "peers[0].address",
     "required key is missing"),
    ('[[peers]]\nname = "lab2"\naddress = "192.0.2.3"\n', "peers[0].pod_cidr",
     "required key is missing"),
    (peer("Lab2"), "peers[0].name",
     "'Lab2' is not a DNS-1123 label: use lowercase letters, digits and '-', starting and "
     "ending with a letter or digit"),
    (peer("lab1"), "peers[0].name", "'lab1' is node.name, this node itself"),
    (peer() + peer("lab2", "192.0.2.4", "10.244.3.0/24"), "peers[1].name",
     "duplicate peer name 'lab2' (first used at peers[0].name)"),
    (peer() + peer("lab3", "192.0.2.3", "10.244.3.0/24"), "peers[1].address",
     "192.0.2.3 is already the address of peers[0]"),
    (peer(address="192.0.2.3/24"), "peers[0].address",
     "'192.0.2.3/24' is not a host address; give the peer's underlay address without a prefix "
     "length"),
    (peer(address="lab2.example"), "peers[0].address", "'lab2.example' is not an IPv4 address"),
    (peer(address="0.0.0.0"), "peers[0].address",
     "0.0.0.0 is the unspecified address, not a node's underlay address"),
    (peer(address="127.0.0.2"), "peers[0].address",
     "127.0.0.2 is a loopback address, not a node's underlay address"),
    (peer(address="224.0.0.1"), "peers[0].address",
     "224.0.0.1 is a multicast address, not a node's underlay address"),
    (peer(address="255.255.255.255"), "peers[0].address",
     "255.255.255.255 is the broadcast address, not a node's underlay address"),
    (peer(address="192.0.2.2"), "peers[0].address",
     "192.0.2.2 is uplink.address, this node's own underlay address"),
    (peer(address="192.0.2.1"), "peers[0].address",
     "192.0.2.1 is uplink.gateway, the far side of this node's uplink"),
    (peer(address="192.0.2.255"), "peers[0].address",
     "192.0.2.255 is the network or broadcast address of the uplink network 192.0.2.0/24"),
    (peer(address="10.244.1.5"), "peers[0].address",
     "10.244.1.5 is inside node.pod_cidr 10.244.1.0/24; an underlay address is outside the "
     "cluster"),
    (peer(address="10.244.9.5"), "peers[0].address",
     "10.244.9.5 is inside cluster.cidr 10.244.0.0/16; an underlay address is outside the "
     "cluster"),
    (peer(address="10.96.0.1"), "peers[0].address",
     "10.96.0.1 is inside cluster.service_cidr 10.96.0.0/16"),
    (peer(pod_cidr="10.244.2.1/24"), "peers[0].pod_cidr",
     "'10.244.2.1/24' has host bits set; did you mean 10.244.2.0/24?"),
    (peer(pod_cidr="10.244.2.1"), "peers[0].pod_cidr",
     "expected an IPv4 network like 10.244.1.0/24, got '10.244.2.1'"),
    (peer(pod_cidr="10.244.1.128/25"), "peers[0].pod_cidr",
     "10.244.1.128/25 overlaps node.pod_cidr 10.244.1.0/24; every pod address belongs to one "
     "node"),
    (peer() + peer("lab3", "192.0.2.4", "10.244.2.0/23"), "peers[1].pod_cidr",
     "10.244.2.0/23 overlaps peers[0].pod_cidr 10.244.2.0/24; every pod address belongs to one "
     "node"),
    (peer(pod_cidr="10.245.0.0/24"), "peers[0].pod_cidr",
     "10.245.0.0/24 is outside cluster.cidr 10.244.0.0/16; the cluster CIDR holds every pod "
     "address of the cluster"),
    (peer("lab2", "192.0.2.3", "10.244.2.0/24", 'vtep_mac = "0a:58:c0:00:02:02"'),
     "peers[0].vtep_mac", "0a:58:c0:00:02:02 is already the VTEP MAC of overlay.vtep_mac (this "
                          "node's VTEP)"),
    (peer("lab2", "192.0.2.3", "10.244.2.0/24", 'vtep_mac = "ff:ff:ff:ff:ff:ff"'),
     "peers[0].vtep_mac", "ff:ff:ff:ff:ff:ff is a multicast MAC address; a VTEP MAC must be "
                          "unicast"),
    (peer("lab2", "192.0.2.3", "10.244.2.0/24", "port = 1"), "peers[0].port",
     "unknown key; allowed here: name, address, pod_cidr, vtep_mac"),
])
def test_peer_errors(entry: str, path: str, reason: str) -> None:
    assert only_error(OVERLAY + CLUSTER + entry) == (path, reason)

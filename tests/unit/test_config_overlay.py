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
    text = OVERLAY + SEGMENTS + "mtu = 1500\n" + '[[pods]]\nname = "a"\nmtu = 1451\n'
    assert errors_of(text) == [
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


def test_peers_may_be_given_besides_a_store() -> None:
    topology = parse_topology(OVERLAY + ETCD + PEER)
    assert topology.cluster is not None and topology.cluster.store == "etcd"
    assert [p.name for p in topology.peers] == ["lab2"]


# -- [cluster] store ------------------------------------------------------------------------


def test_the_etcd_store() -> None:
    text = NODE + ('[cluster]\nstore = "etcd"\nlease_ttl = 2\netcd_endpoints = '
                   '["http://192.0.2.10:2379", "https://etcd.example:2379/"]\n')
    cluster = parse_topology(text).cluster
    assert cluster is not None
    assert (cluster.store, cluster.etcd_endpoints, cluster.lease_ttl) == (
        "etcd", ("http://192.0.2.10:2379", "https://etcd.example:2379/"), 2)


def test_store_defaults() -> None:
    cluster = parse_topology(NODE).cluster
    assert cluster is not None
    assert (cluster.store, cluster.etcd_endpoints, cluster.lease_ttl,
            cluster.node_prefix_length, cluster.peers) == ("static", (), 10, 24, ())
    assert parse_topology(NODE + '[cluster]\nstore = "static"\n').cluster == cluster


@pytest.mark.parametrize(("lines", "path", "reason"), [
    ('store = "consul"', "cluster.store", "must be one of 'static', 'etcd', got 'consul'"),
    ('store = "Etcd"', "cluster.store",
     "must be one of 'static', 'etcd', got 'Etcd' (did you mean 'etcd'?)"),
    ('store = "etcd"', "cluster.etcd_endpoints", "required key is missing"),
    ('store = "etcd"\netcd_endpoints = []', "cluster.etcd_endpoints",
     "needs at least one endpoint"),
    ('etcd_endpoints = ["http://192.0.2.10:2379"]', "cluster.etcd_endpoints",
     'only used with store = "etcd"'),
    ('store = "etcd"\netcd_endpoints = "http://192.0.2.10:2379"', "cluster.etcd_endpoints",
     "expected an array, got string"),
    ('store = "etcd"\netcd_endpoints = [2379]', "cluster.etcd_endpoints[0]",
     "expected a string, got integer"),
    ('store = "etcd"\netcd_endpoints = ["192.0.2.10:2379"]', "cluster.etcd_endpoints[0]",
     "'192.0.2.10:2379' must start with http:// or https://; expected a URL like "
     "http://192.0.2.10:2379"),
    ('store = "etcd"\netcd_endpoints = ["http://192.0.2.10"]', "cluster.etcd_endpoints[0]",
     "'http://192.0.2.10' has no port; expected a URL like http://192.0.2.10:2379"),
    ('store = "etcd"\netcd_endpoints = ["http://:2379"]', "cluster.etcd_endpoints[0]",
     "'http://:2379' has no host; expected a URL like http://192.0.2.10:2379"),
    ('store = "etcd"\netcd_endpoints = ["http://192.0.2.10:99999"]', "cluster.etcd_endpoints[0]",
     "'http://192.0.2.10:99999' is not a valid URL (Port out of range 0-65535); expected a URL "
     "like http://192.0.2.10:2379"),
    ('store = "etcd"\netcd_endpoints = ["http://192.0.2.10:2379/v3"]',
     "cluster.etcd_endpoints[0]", "'http://192.0.2.10:2379/v3' must be only scheme, host and "
                                  "port; expected a URL like http://192.0.2.10:2379"),
    ('store = "etcd"\netcd_endpoints = ["http://a:1", "http://a:1"]',
     "cluster.etcd_endpoints[1]", "http://a:1 is listed twice"),
    ('store = "etcd"\netcd_endpoints = ["http://a:1"]\nlease_ttl = 1', "cluster.lease_ttl",
     "must be at least 2, got 1"),
    ('store = "etcd"\netcd_endpoints = ["http://a:1"]\nlease_ttl = 2.5', "cluster.lease_ttl",
     "expected an integer, got float"),
    ("lease_ttl = 10", "cluster.lease_ttl", 'only used with store = "etcd"'),
    ("node_prefix_length = 31", "cluster.node_prefix_length", "must be between 8 and 30, got 31"),
])
def test_store_errors(lines: str, path: str, reason: str) -> None:
    assert only_error(NODE + "[cluster]\n" + lines + "\n") == (path, reason)


# -- node.pod_cidr = "auto" ---------------------------------------------------------------------

AUTO = '[node]\nname = "lab1"\npod_cidr = "auto"\n'


def test_auto_validates_with_the_first_free_subnet_of_the_pool() -> None:
    topology = parse_topology(AUTO + UPLINK + "[overlay]\n" + ETCD
                              + peer(pod_cidr="10.244.0.0/24") + '[[pods]]\nname = "a"\n')
    assert topology.node.pod_cidr_auto
    assert topology.node.pod_cidr == IPv4Network("10.244.1.0/24")
    assert topology.node.gateway == IPv4Address("10.244.1.1")
    assert topology.host_port.address.ip == IPv4Address("10.244.1.254")
    assert topology.pod("a").ip == IPv4Address("10.244.1.10")


def test_auto_takes_the_leased_subnet_and_keeps_it_on_reload() -> None:
    text = AUTO + ETCD + "node_prefix_length = 26\n"
    leased = parse_topology(text, pod_cidr=IPv4Network("10.244.7.64/26"))
    assert leased.node.pod_cidr == IPv4Network("10.244.7.64/26")
    assert parse_topology(text, previous=leased).node.pod_cidr == IPv4Network("10.244.7.64/26")
    assert parse_topology(text).node.pod_cidr == IPv4Network("10.244.0.0/26")
    assert parse_topology(NODE, pod_cidr=IPv4Network("10.9.0.0/24")).node.pod_cidr == \
        IPv4Network("10.244.1.0/24")


def test_auto_refuses_a_lease_outside_the_pool() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_topology(AUTO + ETCD, pod_cidr=IPv4Network("10.245.0.0/24"))
    assert caught.value.errors == [
        ("node.pod_cidr", "the leased subnet 10.245.0.0/24 is not a /24 inside cluster.cidr "
                          "10.244.0.0/16")]


FIXED = ('cannot be given with node.pod_cidr = "auto": the subnet is leased at start-up, so no '
         "address in it can be written down")


@pytest.mark.parametrize(("text", "path", "reason"), [
    (AUTO, "cluster.cidr", 'required with node.pod_cidr = "auto": the pool each node\'s subnet '
                           "is leased from"),
    (AUTO + CLUSTER, "node.pod_cidr", '"auto" needs a cluster store that leases the subnet: set '
                                      '[cluster] store = "etcd"'),
    (AUTO + ETCD + "node_prefix_length = 15\n", "cluster.node_prefix_length",
     "/15 is larger than cluster.cidr 10.244.0.0/16"),
    (AUTO + 'gateway = "10.244.1.1"\n' + ETCD, "node.gateway", FIXED),
    (AUTO + '[host_port]\naddress = "10.244.1.2"\n' + ETCD, "host_port.address", FIXED),
    (AUTO + ETCD + '[[pods]]\nname = "a"\nip = "10.244.0.20"\n', "pods[0].ip", FIXED),
    (AUTO + ETCD + SEGMENTS, "segments",
     'not allowed with node.pod_cidr = "auto": such a node has one segment, its leased subnet'),
    (AUTO + ETCD + '[[routes]]\ndst = "10.0.0.0/8"\nvia = "10.244.0.5"\n', "routes",
     'not allowed with node.pod_cidr = "auto": a next hop lies in a segment, and the leased '
     "subnet is known only at start-up"),
    (AUTO + UPLINK + "[overlay]\n" + ETCD + "node_prefix_length = 16\n"
     + peer(pod_cidr="10.244.0.0/17"), "node.pod_cidr",
     '"auto": no /16 of cluster.cidr 10.244.0.0/16 is left besides the peers\' pod CIDRs'),
])
def test_auto_errors(text: str, path: str, reason: str) -> None:
    assert (path, reason) in errors_of(text)
    assert errors_of(text)[0] == (path, reason)


# -- [uplink] bridge ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "reason"), [
    ('""', "must not be empty"),
    ('"lab-bridge-0123"', None),
    ('"lab-bridge-01234"', "'lab-bridge-01234' is longer than 15 bytes (the kernel's IFNAMSIZ)"),
    ('"lab/br"', "'lab/br' is not a valid interface name: no '/', ':', NUL or whitespace, and "
                 "not '.' or '..'"),
    ('"lab br"', "'lab br' is not a valid interface name: no '/', ':', NUL or whitespace, and "
                 "not '.' or '..'"),
    ('".."', "'..' is not a valid interface name: no '/', ':', NUL or whitespace, and not '.' "
             "or '..'"),
    ("1", "expected a string, got integer"),
])
def test_uplink_bridge(value: str, reason: str | None) -> None:
    text = NODE + UPLINK + f"bridge = {value}\n"
    if reason is None:
        uplink = parse_topology(text).uplink
        assert uplink is not None and uplink.bridge == value.strip('"')
    else:
        assert only_error(text) == ("uplink.bridge", reason)


# -- services' endpoints on other nodes -------------------------------------------------------

SERVICE = '[[services]]\nname = "web"\nports = [ { port = 80 } ]\n'


def test_endpoints_may_be_pods_of_peers() -> None:
    text = OVERLAY + CLUSTER + PEER + SERVICE + \
        'endpoints = ["10.244.1.10", "10.244.2.10", "198.51.100.9"]\n'
    assert [str(a) for a in parse_topology(text).services[0].endpoints] == [
        "10.244.1.10", "10.244.2.10", "198.51.100.9"]


def test_an_endpoint_in_no_nodes_pod_cidr_is_an_error() -> None:
    assert only_error(OVERLAY + CLUSTER + PEER + SERVICE + 'endpoints = ["10.244.9.10"]\n') == (
        "services[0].endpoints[0]",
        "10.244.9.10 is inside cluster.cidr 10.244.0.0/16 but in no node's pod CIDR (neither a "
        "segment of this node nor a peer's pod_cidr)")
    # Without peers the node alone is the cluster, and endpoints are checked as they always were.
    assert parse_topology(NODE + CLUSTER + SERVICE + 'endpoints = ["10.244.9.10"]\n').services


def test_service_set_checks_remote_endpoints_against_the_peers() -> None:
    running = parse_topology(OVERLAY + CLUSTER + PEER + SERVICE)
    web = running.services[0]
    assert update_service(web, {"endpoints": "10.244.2.10"}, running).endpoints == (
        IPv4Address("10.244.2.10"),)
    with pytest.raises(ConfigError) as caught:
        update_service(web, {"endpoints": "10.244.3.10"}, running)
    assert caught.value.errors[0][0] == "service.endpoints[0]"


# -- reload: every new key is node-level ----------------------------------------------------------


BASE = OVERLAY + ETCD + PEER + SERVICE


@pytest.mark.parametrize(("old", "new", "difference"), [
    ("[overlay]\n", "[overlay]\nvni = 2\n", "uplink.overlay"),
    ("[overlay]\n", "[overlay]\nport = 8472\n", "uplink.overlay"),
    ("[overlay]\n", "[overlay]\nmtu = 1400\n", "uplink.overlay"),
    ("[overlay]\n", '[overlay]\nvtep_mac = "0a:00:00:00:00:01"\n', "uplink.overlay"),
    ('gateway = "192.0.2.1"\n', 'gateway = "192.0.2.1"\nbridge = "br0"\n', "uplink.bridge"),
    ('pod_cidr = "10.244.2.0/24"\n', 'pod_cidr = "10.244.3.0/24"\n', "cluster.peers"),
    ('address = "192.0.2.3"\n', 'address = "192.0.2.4"\n', "cluster.peers"),
    ('etcd_endpoints = ["http://192.0.2.10:2379"]\n',
     'etcd_endpoints = ["http://192.0.2.11:2379"]\n', "cluster.etcd_endpoints"),
    ('store = "etcd"\n', 'store = "etcd"\nlease_ttl = 20\n', "cluster.lease_ttl"),
    ('store = "etcd"\n', 'store = "etcd"\nnode_prefix_length = 25\n',
     "cluster.node_prefix_length"),
])
def test_a_reload_that_changes_a_new_key_is_refused(old: str, new: str, difference: str) -> None:
    running = parse_topology(BASE)
    assert BASE.count(old) == 1
    desired = parse_topology(BASE.replace(old, new), previous=running)
    differences = restart_differences(running, desired)
    assert [d.split(":")[0] for d in differences if d.startswith(difference)] == [difference]


def test_a_reload_that_adds_peers_or_the_overlay_is_refused() -> None:
    running = parse_topology(NODE + UPLINK)
    with_overlay = parse_topology(OVERLAY, previous=running)
    assert {d.split(":")[0] for d in restart_differences(running, with_overlay)} >= {
        "uplink.overlay", "node.mtu"}
    with_peer = parse_topology(OVERLAY + PEER, previous=with_overlay)
    assert {d.split(":")[0] for d in restart_differences(with_overlay, with_peer)} == {
        "cluster.cidr", "cluster.peers"}
    assert restart_differences(with_peer, parse_topology(OVERLAY + PEER + SERVICE,
                                                         previous=with_peer)) == []


def test_a_reload_of_an_auto_node_keeps_its_lease() -> None:
    leased = parse_topology(AUTO + ETCD, pod_cidr=IPv4Network("10.244.5.0/24"))
    assert restart_differences(leased, parse_topology(AUTO + ETCD + SERVICE,
                                                      previous=leased)) == []

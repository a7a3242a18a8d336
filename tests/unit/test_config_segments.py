"""The topology loader: segments, the segments of pods, MTUs, and static routes."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch import model
from vswitch.config import (
    load_topology,
    parse_topology,
)

from .config_support import (
    BLUE,
    CONFIG_DIR,
    NODE,
    errors_of,
    only_error,
    pod_ips,
    pods_toml,
    route,
)

# -- segments, pod segments and MTUs, static routes -----------------------------------------


def test_routed_toml_loads() -> None:
    topology = load_topology(CONFIG_DIR / "routed.toml")
    default, blue = topology.segments
    assert (default.name, default.cidr, default.mtu) == ("default", IPv4Network("10.244.1.0/24"), 1500)
    assert (blue.name, blue.cidr, blue.gateway, blue.mtu) == (
        "blue", IPv4Network("10.245.1.0/24"), IPv4Address("10.245.1.1"), 1400)
    assert {pod.name: (pod.segment, str(pod.ip)) for pod in topology.pods} == {
        "web-1": ("default", "10.244.1.10"),
        "client": ("default", "10.244.1.50"),
        "db": ("blue", "10.245.1.10"),
    }
    assert topology.pod_mtu(topology.pod("db")) == 1400
    assert topology.pod_mtu(topology.pod("client")) == 1500
    db = topology.pod("db").containers[0]
    assert db.command == ("python3", "-m", "http.server", "5432")


def test_without_segments_there_is_only_the_default_one() -> None:
    topology = parse_topology(NODE)
    assert topology.segments == (
        model.Segment("default", IPv4Network("10.244.1.0/24"), IPv4Address("10.244.1.1"),
                      "0a:58:0a:f4:01:01", 1500),
    )
    assert topology.segments == topology.all_segments()
    assert topology.routes == ()


def test_segments_follow_the_default_one_in_file_order() -> None:
    text = NODE + "mtu = 9000\n" + BLUE + """
[[segments]]
name = "red"
cidr = "192.168.0.0/16"
gateway = "192.168.7.7"
mtu = 1280
"""
    default, blue, red = parse_topology(text).segments
    assert default.name == "default" and default.mtu == 9000
    # An absent mtu is node.mtu; an absent gateway the first usable address.
    assert blue == model.Segment("blue", IPv4Network("10.245.1.0/24"), IPv4Address("10.245.1.1"),
                                 "0a:58:0a:f5:01:01", 9000)
    assert red == model.Segment("red", IPv4Network("192.168.0.0/16"), IPv4Address("192.168.7.7"),
                                "0a:58:c0:a8:07:07", 1280)
    assert parse_topology(text).segment_index("red") == 2


def test_pods_get_addresses_from_their_own_segment() -> None:
    text = NODE + BLUE + pods_toml(
        'name = "a"', 'name = "b"\nsegment = "blue"', 'name = "c"\nsegment = "blue"\nip = "10.245.1.11"',
        'name = "d"\nsegment = "blue"', 'name = "e"\nsegment = "default"',
    )
    topology = parse_topology(text)
    assert {p.name: (p.segment, str(p.ip)) for p in topology.pods} == {
        "a": ("default", "10.244.1.10"),
        "b": ("blue", "10.245.1.10"),
        "c": ("blue", "10.245.1.11"),
        "d": ("blue", "10.245.1.12"),
        "e": ("default", "10.244.1.11"),
    }
    assert topology.pod("b").mac == "0a:58:0a:f5:01:0a"


def test_allocation_in_a_segment_skips_its_gateway_but_not_the_host_port_address() -> None:
    # The host port lives on the default segment only; .254 of another segment is a pod address.
    text = NODE + BLUE.replace('cidr = "10.245.1.0/24"', 'cidr = "10.245.1.0/28"\ngateway = "10.245.1.10"') + \
        pods_toml(*(f'name = "p{i}"\nsegment = "blue"' for i in range(5)))
    assert [str(p.ip) for p in parse_topology(text).pods] == [
        "10.245.1.11", "10.245.1.12", "10.245.1.13", "10.245.1.14", "10.245.1.1",
    ]


def test_pod_mtu() -> None:
    text = NODE + BLUE + 'mtu = 1400\n' + pods_toml(
        'name = "a"\nmtu = 9000', 'name = "b"\nsegment = "blue"', 'name = "c"\nsegment = "blue"\nmtu = 576')
    topology = parse_topology(text)
    assert [p.mtu for p in topology.pods] == [9000, None, 576]
    assert [topology.pod_mtu(p) for p in topology.pods] == [9000, 1400, 576]


def test_static_routes() -> None:
    text = NODE + BLUE + """
[[routes]]
dst = "192.0.2.0/24"
via = "10.245.1.77"
[[routes]]
dst = "0.0.0.0/0"
via = "10.244.1.254"
[[routes]]
dst = "198.51.100.7/32"
via = "10.244.1.20"
"""
    assert parse_topology(text).routes == (
        model.StaticRoute(IPv4Network("192.0.2.0/24"), IPv4Address("10.245.1.77"), "blue"),
        # A route covering the segments is allowed: their connected routes are more specific.
        model.StaticRoute(IPv4Network("0.0.0.0/0"), IPv4Address("10.244.1.254"), "default"),
        model.StaticRoute(IPv4Network("198.51.100.7/32"), IPv4Address("10.244.1.20"), "default"),
    )


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        # [[segments]]
        ('segments = "blue"\n' + NODE, "segments", "expected an array of tables, got string"),
        ("segments = [1]\n" + NODE, "segments[0]", "expected a table, got integer"),
        (NODE + '[[segments]]\ncidr = "10.245.1.0/24"', "segments[0].name", "required key is missing"),
        (NODE + '[[segments]]\nname = "blue"', "segments[0].cidr", "required key is missing"),
        (NODE + BLUE.replace('"blue"', '"Blue"'), "segments[0].name", "DNS-1123"),
        (NODE + BLUE.replace('"blue"', '"' + "b" * 21 + '"'), "segments[0].name", "at most 20"),
        (NODE + BLUE.replace('"blue"', '"default"'), "segments[0].name",
         "'default' is the segment made of node.pod_cidr"),
        (NODE + BLUE + BLUE.replace("10.245", "10.246"), "segments[1].name",
         "duplicate segment name 'blue' (first used at segments[0].name)"),
        (NODE + BLUE.replace("10.245.1.0/24", "10.245.1.7/24"), "segments[0].cidr",
         "host bits set; did you mean 10.245.1.0/24?"),
        (NODE + BLUE.replace("10.245.1.0/24", "10.245.1.0/31"), "segments[0].cidr", "/31 is outside /8../30"),
        (NODE + BLUE.replace("10.245.1.0/24", "10.245.1.0"), "segments[0].cidr", "expected an IPv4 network"),
        (NODE + BLUE + 'gateway = "10.246.1.1"', "segments[0].gateway",
         "10.246.1.1 is outside segments[0].cidr 10.245.1.0/24"),
        (NODE + BLUE + 'gateway = "10.245.1.255"', "segments[0].gateway", "broadcast address"),
        (NODE + BLUE + "mtu = 575", "segments[0].mtu", "between 576 and 9000, got 575"),
        (NODE + BLUE + "mtu = 9001", "segments[0].mtu", "between 576 and 9000, got 9001"),
        (NODE + BLUE + "colour = 1", "segments[0].colour", "unknown key"),
        # overlaps, with node.pod_cidr and between segments, either way round
        (NODE + BLUE.replace("10.245.1.0/24", "10.244.1.128/25"), "segments[0].cidr",
         "10.244.1.128/25 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + BLUE.replace("10.245.1.0/24", "10.244.0.0/16"), "segments[0].cidr",
         "10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + BLUE + BLUE.replace('"blue"', '"red"').replace("10.245.1.0/24", "10.245.1.0/25"),
         "segments[1].cidr", "10.245.1.0/25 overlaps segments[0].cidr 10.245.1.0/24"),
        # pods
        (NODE + pods_toml('name = "host"'), "pods[0].name", "'host' is reserved"),
        (NODE + BLUE + pods_toml('name = "a"\nsegment = "red"'), "pods[0].segment",
         "unknown segment 'red'; segments: default, blue"),
        (NODE + pods_toml('name = "a"\nsegment = 1'), "pods[0].segment", "expected a string, got integer"),
        (NODE + pods_toml('name = "a"\nmtu = 575'), "pods[0].mtu", "between 576 and 9000, got 575"),
        (NODE + pods_toml('name = "a"\nmtu = 9001'), "pods[0].mtu", "between 576 and 9000, got 9001"),
        (NODE + pods_toml('name = "a"\nmtu = "1500"'), "pods[0].mtu", "expected an integer, got string"),
        (NODE + BLUE + pods_toml('name = "a"\nsegment = "blue"\nip = "10.245.1.1"'), "pods[0].ip",
         "10.245.1.1 is the address of segments[0].gateway"),
        (NODE + BLUE + pods_toml('name = "a"\nsegment = "blue"\nip = "10.245.1.255"'), "pods[0].ip",
         "broadcast address of 10.245.1.0/24"),
        (NODE + BLUE + pods_toml('name = "a"\nsegment = "blue"\nip = "10.9.9.9"'), "pods[0].ip",
         "10.9.9.9 is outside segment blue 10.245.1.0/24"),
        (NODE + BLUE + pods_toml('name = "a"\nsegment = "blue"\nip = "10.244.1.20"'), "pods[0].ip",
         '10.244.1.20 is outside segment blue 10.245.1.0/24 (it is in segment default; set '
         'pods[0].segment = "default")'),
        (NODE + BLUE + pods_toml('name = "a"\nip = "10.245.1.20"'), "pods[0].ip",
         "10.245.1.20 is outside node.pod_cidr 10.244.1.0/24 (it is in segment blue"),
        # [[routes]]
        ('routes = "x"\n' + NODE, "routes", "expected an array of tables, got string"),
        (NODE + "[routes]\ndst = '192.0.2.0/24'", "routes", "expected an array of tables, got table"),
        ("routes = [1]\n" + NODE, "routes[0]", "expected a table, got integer"),
        (NODE + '[[routes]]\nvia = "10.244.1.7"', "routes[0].dst", "required key is missing"),
        (NODE + '[[routes]]\ndst = "192.0.2.0/24"', "routes[0].via", "required key is missing"),
        (NODE + route("192.0.2.0/24", "10.244.1.7") + "metric = 1", "routes[0].metric", "unknown key"),
        (NODE + route("192.0.2.1/24", "10.244.1.7"), "routes[0].dst", "host bits set; did you mean 192.0.2.0/24?"),
        (NODE + route("192.0.2.0", "10.244.1.7"), "routes[0].dst", "expected an IPv4 network"),
        (NODE + route("192.0.2.0/33", "10.244.1.7"), "routes[0].dst", "not an IPv4 network"),
        (NODE + route("fd00::/8", "10.244.1.7"), "routes[0].dst", "not an IPv4 network"),
        (NODE + route("192.0.2.0/24", "10.244.1"), "routes[0].via", "not an IPv4 address"),
        (NODE + route("10.244.1.0/24", "10.244.1.7"), "routes[0].dst",
         "10.244.1.0/24 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + BLUE + route("10.245.1.64/26", "10.244.1.7"), "routes[0].dst",
         "10.245.1.64/26 overlaps segments[0].cidr 10.245.1.0/24"),
        (NODE + route("192.0.2.0/24", "10.244.1.7") + route("192.0.2.0/24", "10.244.1.8"),
         "routes[1].dst", "duplicate route to 192.0.2.0/24 (first at routes[0].dst)"),
        (NODE + BLUE + route("192.0.2.0/24", "172.16.0.1"), "routes[0].via",
         "172.16.0.1 is on none of the node's segments (node.pod_cidr 10.244.1.0/24, "
         "segments[0].cidr 10.245.1.0/24)"),
        (NODE + route("192.0.2.0/24", "10.244.1.1"), "routes[0].via", "10.244.1.1 is node.gateway"),
        (NODE + BLUE + route("192.0.2.0/24", "10.245.1.1"), "routes[0].via",
         "10.245.1.1 is segments[0].gateway"),
        (NODE + route("192.0.2.0/24", "10.244.1.255"), "routes[0].via", "broadcast address"),
    ],
)
def test_segment_and_route_errors(text: str, path: str, reason: str) -> None:
    got_path, got_reason = only_error(text)
    assert got_path == path
    assert reason in got_reason


def test_an_overlapping_segment_does_not_cascade_into_its_pods() -> None:
    text = NODE + BLUE.replace("10.245.1.0/24", "10.244.1.0/24") + pods_toml(
        'name = "a"\nsegment = "blue"\nip = "10.9.9.9"', 'name = "b"\nsegment = "blue"')
    assert [path for path, _ in errors_of(text)] == ["segments[0].cidr"]


def test_a_misnamed_segment_does_not_cascade_into_unknown_segment_errors() -> None:
    text = NODE + BLUE.replace('"blue"', '"Blue"') + pods_toml('name = "a"\nsegment = "blue"')
    assert [path for path, _ in errors_of(text)] == ["segments[0].name"]


def test_a_misnamed_segment_is_not_offered_as_the_home_of_a_pod_address() -> None:
    # The hint names the segment a stray address belongs to; a segment without a valid name
    # cannot be named, and its own error already explains it.
    text = NODE + BLUE.replace('"blue"', '"Blue"') + pods_toml('name = "a"\nip = "10.245.1.20"')
    assert [path for path, _ in errors_of(text)] == ["segments[0].name", "pods[0].ip"]
    assert errors_of(text)[1][1] == "10.245.1.20 is outside node.pod_cidr 10.244.1.0/24"


def test_exhausted_segment_names_the_segment() -> None:
    text = NODE + BLUE.replace("10.245.1.0/24", "10.245.1.0/30") + pods_toml(
        'name = "a"\nsegment = "blue"', 'name = "b"\nsegment = "blue"')
    assert only_error(text) == ("pods[1]", "no free address left in segment blue 10.245.1.0/30 for this pod")


def test_same_address_in_two_segments_is_impossible_but_same_offset_is_fine() -> None:
    # Allocation counters are per segment: the first pod of each gets network + 10.
    text = NODE + BLUE + pods_toml('name = "a"', 'name = "b"\nsegment = "blue"')
    assert pod_ips(text) == {"a": "10.244.1.10", "b": "10.245.1.10"}


def test_routes_is_no_longer_reserved() -> None:
    assert parse_topology(NODE + route("192.0.2.0/24", "10.244.1.7")).routes[0].segment == "default"

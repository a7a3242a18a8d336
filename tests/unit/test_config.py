"""The topology loader: accepted files, derived values, and an exact key path for every mistake."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vswitch import model
from vswitch.config import ConfigError, allocation_order, load_topology, parse_topology

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

ISSUE_EXAMPLE = """\
[node]
name = "lab1"
pod_cidr = "10.244.1.0/24"      # gateway defaults to the first address; mtu defaults to 1500

[[pods]]
name = "web-1"
labels = { app = "web" }
containers = [ { name = "http", command = ["python3", "-m", "http.server", "8080"] } ]

[[pods]]
name = "client"
ip = "10.244.1.50"               # optional: otherwise allocated deterministically from pod_cidr
"""

NODE = """\
[node]
name = "lab1"
pod_cidr = "10.244.1.0/24"
"""


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_topology(text, "test.toml")
    return caught.value.errors


def only_error(text: str) -> tuple[str, str]:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


def pod_ips(text: str) -> dict[str, str]:
    return {pod.name: str(pod.ip) for pod in parse_topology(text).pods}


# -- accepted files -------------------------------------------------------------------------


def test_issue_example_is_accepted_with_its_defaults() -> None:
    topology = parse_topology(ISSUE_EXAMPLE)
    assert topology.node.name == "lab1"
    assert topology.node.pod_cidr == IPv4Network("10.244.1.0/24")
    assert topology.node.gateway == IPv4Address("10.244.1.1")
    assert topology.node.gateway_mac == "0a:58:0a:f4:01:01"
    assert topology.node.mtu == 1500
    web, client = topology.pods
    assert (web.name, web.ip) == ("web-1", IPv4Address("10.244.1.10"))
    assert dict(web.labels) == {"app": "web"}
    assert [c.name for c in web.containers] == ["http"]
    assert web.containers[0].command == ("python3", "-m", "http.server", "8080")
    assert (client.name, client.ip, client.containers) == ("client", IPv4Address("10.244.1.50"), ())


def test_minimal_toml_is_the_issue_example_verbatim() -> None:
    assert (CONFIG_DIR / "minimal.toml").read_text() == ISSUE_EXAMPLE
    assert load_topology(CONFIG_DIR / "minimal.toml").pods == parse_topology(ISSUE_EXAMPLE).pods


def test_demo_toml_loads() -> None:
    topology = load_topology(CONFIG_DIR / "demo.toml")
    assert topology.node.name == "lab1"
    assert topology.node.pod_cidr == IPv4Network("10.244.1.0/24")
    assert {pod.name: str(pod.ip) for pod in topology.pods} == {
        "web-1": "10.244.1.10",
        "web-2": "10.244.1.11",
        "client": "10.244.1.50",
    }
    web1, web2 = topology.pod("web-1"), topology.pod("web-2")
    for pod in (web1, web2):
        assert dict(pod.labels) == {"app": "web"}
        assert pod.containers[0].name == "http"
        assert pod.containers[0].command == ("python3", "-m", "http.server", "8080")
        assert dict(pod.containers[0].ports) == {"http": ("tcp", 8080)}
    assert [c.name for c in web1.containers] == ["http", "sidecar"]
    sidecar = web1.containers[1].command
    assert sidecar[0] == "python3" and "127.0.0.1" in sidecar[-1]
    compile(sidecar[-1], "sidecar", "exec")  # the embedded program must at least be valid Python
    assert topology.pod("client").containers == ()


def test_defaults() -> None:
    topology = parse_topology(NODE, "some/where.toml")
    assert topology.source == "some/where.toml"
    assert topology.pods == ()
    assert topology.node.mtu == model.DEFAULT_MTU
    host = topology.host_port
    assert host.enabled is True
    assert host.address == IPv4Interface("10.244.1.254/24")
    assert host.mac == "0a:58:0a:f4:01:fe"
    assert host.name == model.kernel_name("vsh", "lab1")
    assert topology.dataplane == model.Dataplane(
        offloads=True, fdb_aging=300.0, mac_limit=64, burst=64, accel="native"
    )
    assert topology.control == model.Control(socket="/run/vswitch/lab1.sock", state_dir="/run/vswitch")


def test_pod_defaults_and_derived_fields() -> None:
    pod = parse_topology(NODE + '[[pods]]\nname = "p"\nip = "10.244.1.77"\n').pods[0]
    assert pod.ready is True
    assert dict(pod.labels) == {}
    assert pod.mac == model.mac_for_ip(IPv4Address("10.244.1.77")) == "0a:58:0a:f4:01:4d"
    assert pod.netns == model.netns_name("lab1", "p")
    assert pod.tap == model.kernel_name("vsp", "lab1", "p")


def test_every_value_can_be_set() -> None:
    topology = parse_topology(
        """
        [node]
        name = "n1"
        pod_cidr = "192.168.8.0/22"
        gateway = "192.168.8.9"
        mtu = 9000
        [host_port]
        enabled = false
        address = "192.168.8.2"
        [dataplane]
        offloads = false
        fdb_aging = 12.5
        mac_limit = 1
        burst = 1024
        accel = "pure"
        [control]
        socket = "/tmp/x.sock"
        state_dir = "/var/lib/vswitch"
        [[pods]]
        name = "p"
        ready = false
        labels = { "app.kubernetes.io/name" = "db", tier = "" }
        [[pods.containers]]
        name = "c"
        command = ["sleep", "1"]
        env = { A = "1", b_c = "x y" }
        ports = [ { name = "dns", port = 53, protocol = "udp" }, { name = "dns-tcp", port = 53 } ]
        """.replace("\n        ", "\n")
    )
    assert topology.node.gateway == IPv4Address("192.168.8.9") and topology.node.mtu == 9000
    assert topology.host_port.enabled is False
    assert topology.host_port.address == IPv4Interface("192.168.8.2/22")
    assert topology.dataplane == model.Dataplane(
        offloads=False, fdb_aging=12.5, mac_limit=1, burst=1024, accel="pure"
    )
    assert topology.control == model.Control(socket="/tmp/x.sock", state_dir="/var/lib/vswitch")
    pod = topology.pods[0]
    assert pod.ready is False and pod.ip == IPv4Address("192.168.8.10")
    assert dict(pod.labels) == {"app.kubernetes.io/name": "db", "tier": ""}
    container = pod.containers[0]
    assert dict(container.env) == {"A": "1", "b_c": "x y"}
    assert dict(container.ports) == {"dns": ("udp", 53), "dns-tcp": ("tcp", 53)}


def test_source_is_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(NODE)
    assert load_topology(path).source == str(path)
    assert load_topology(str(path)).source == str(path)


# -- allocation -----------------------------------------------------------------------------


def pods_toml(*entries: str) -> str:
    return "".join(f"[[pods]]\n{entry}\n" for entry in entries)


def test_allocation_is_in_file_order_from_network_plus_ten() -> None:
    text = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    assert pod_ips(text) == {"a": "10.244.1.10", "b": "10.244.1.11", "c": "10.244.1.12"}


def test_allocation_skips_explicit_addresses_even_of_later_pods() -> None:
    text = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"\nip = "10.244.1.11"', 'name = "d"')
    assert pod_ips(text) == {"a": "10.244.1.10", "b": "10.244.1.12", "c": "10.244.1.11", "d": "10.244.1.13"}


def test_allocation_skips_gateway_and_host_port() -> None:
    text = (
        NODE.replace('"10.244.1.0/24"', '"10.244.1.0/24"\ngateway = "10.244.1.10"')
        + '[host_port]\naddress = "10.244.1.11"\n'
        + pods_toml('name = "a"', 'name = "b"')
    )
    assert pod_ips(text) == {"a": "10.244.1.12", "b": "10.244.1.13"}


def test_allocation_reserves_the_host_port_address_while_it_is_disabled() -> None:
    text = NODE + '[host_port]\nenabled = false\naddress = "10.244.1.10"\n' + pods_toml('name = "a"')
    assert pod_ips(text) == {"a": "10.244.1.11"}


def test_allocation_wraps_around_to_the_low_addresses() -> None:
    # A /28 has usable .1-.14; gateway .1 and host port .14 leave .10-.13, then .2-.9.
    node = NODE.replace("10.244.1.0/24", "10.244.1.0/28")
    text = node + pods_toml(*(f'name = "p{i}"' for i in range(6)))
    assert list(pod_ips(text).values()) == [
        "10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.1.2", "10.244.1.3",
    ]


def test_allocation_in_a_network_smaller_than_the_offset_starts_low() -> None:
    assert [str(a) for a in allocation_order(IPv4Network("10.0.0.0/29"))] == [
        f"10.0.0.{i}" for i in range(1, 7)
    ]


def test_allocation_order_covers_every_usable_address_once() -> None:
    order = list(allocation_order(IPv4Network("10.9.0.0/26")))
    assert order[0] == IPv4Address("10.9.0.10")
    assert sorted(order) == list(IPv4Network("10.9.0.0/26").hosts())


def test_exhausted_pool_is_an_error_at_that_pod() -> None:
    # A /29 has usable .1-.6; gateway .1, host port .6 and an explicit .3 leave .2, .4 and .5.
    node = NODE.replace("10.244.1.0/24", "10.244.1.0/29")
    text = node + pods_toml('name = "a"', 'name = "b"\nip = "10.244.1.3"', 'name = "c"', 'name = "d"', 'name = "e"')
    path, reason = only_error(text)
    assert path == "pods[4]"
    assert "no free address" in reason and "10.244.1.0/29" in reason


def test_allocation_is_deterministic() -> None:
    text = NODE + pods_toml(*(f'name = "p{i}"' for i in range(20)))
    assert parse_topology(text) == parse_topology(text)


# -- errors: exact key paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        # [node]
        ("", "node", "required key is missing"),
        ('node = "x"', "node", "expected a table, got string"),
        ('[node]\npod_cidr = "10.244.1.0/24"', "node.name", "required key is missing"),
        ('[node]\nname = "lab1"', "node.pod_cidr", "required key is missing"),
        ('[node]\nname = 7\npod_cidr = "10.244.1.0/24"', "node.name", "expected a string, got integer"),
        ('[node]\nname = "Lab1"\npod_cidr = "10.244.1.0/24"', "node.name", "DNS-1123"),
        ('[node]\nname = "-lab"\npod_cidr = "10.244.1.0/24"', "node.name", "DNS-1123"),
        ('[node]\nname = "' + "a" * 21 + '"\npod_cidr = "10.244.1.0/24"', "node.name", "at most 20"),
        ('[node]\nname = ""\npod_cidr = "10.244.1.0/24"', "node.name", "must not be empty"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.5/24"', "node.pod_cidr", "host bits set; did you mean 10.244.1.0/24?"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0"', "node.pod_cidr", "expected an IPv4 network"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/31"', "node.pod_cidr", "/31 is outside /8../30"),
        ('[node]\nname = "lab1"\npod_cidr = "10.0.0.0/7"', "node.pod_cidr", "/7 is outside"),
        ('[node]\nname = "lab1"\npod_cidr = "fd00::/64"', "node.pod_cidr", "not an IPv4 network"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\ngateway = "10.244.2.1"', "node.gateway", "outside node.pod_cidr 10.244.1.0/24"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\ngateway = "10.244.1.0"', "node.gateway", "network address"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\ngateway = "10.244.1.255"', "node.gateway", "broadcast address"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\ngateway = "gw"', "node.gateway", "not an IPv4 address"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\nmtu = "1500"', "node.mtu", "expected an integer, got string"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\nmtu = 1500.0', "node.mtu", "expected an integer, got float"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\nmtu = 575', "node.mtu", "between 576 and 9000, got 575"),
        ('[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\nmtu = 9001', "node.mtu", "between 576 and 9000, got 9001"),
        # [host_port]
        (NODE + '[host_port]\nenabled = "yes"', "host_port.enabled", "expected a boolean, got string"),
        (NODE + '[host_port]\naddress = "10.244.2.1"', "host_port.address", "outside node.pod_cidr"),
        (NODE + '[host_port]\naddress = "10.244.1.255"', "host_port.address", "broadcast address"),
        (NODE + '[host_port]\naddress = "10.244.1.1"', "host_port.address", "10.244.1.1 is node.gateway"),
        (NODE + 'gateway = "10.244.1.254"', "host_port.address", "defaults to the last usable address 10.244.1.254"),
        ('host_port = 1\n' + NODE, "host_port", "expected a table, got integer"),
        # [dataplane]
        (NODE + "[dataplane]\noffloads = 1", "dataplane.offloads", "expected a boolean, got integer"),
        (NODE + "[dataplane]\nfdb_aging = 0", "dataplane.fdb_aging", "> 0"),
        (NODE + "[dataplane]\nfdb_aging = nan", "dataplane.fdb_aging", "finite"),
        (NODE + "[dataplane]\nfdb_aging = inf", "dataplane.fdb_aging", "finite"),
        (NODE + '[dataplane]\nfdb_aging = "300"', "dataplane.fdb_aging", "expected a number, got string"),
        (NODE + "[dataplane]\nfdb_aging = true", "dataplane.fdb_aging", "expected a number, got boolean"),
        (NODE + "[dataplane]\nmac_limit = 0", "dataplane.mac_limit", "at least 1, got 0"),
        (NODE + "[dataplane]\nburst = 0", "dataplane.burst", "between 1 and 1024, got 0"),
        (NODE + "[dataplane]\nburst = 1025", "dataplane.burst", "between 1 and 1024, got 1025"),
        (NODE + "[dataplane]\nburst = 64.0", "dataplane.burst", "expected an integer, got float"),
        (NODE + '[dataplane]\naccel = "fast"', "dataplane.accel", "'native', 'pure'"),
        # [control]
        (NODE + '[control]\nsocket = "x.sock"', "control.socket", "expected an absolute path"),
        (NODE + '[control]\nsocket = "/' + "s" * 107 + '"', "control.socket", "at most 107"),
        (NODE + '[control]\nstate_dir = 3', "control.state_dir", "expected a string, got integer"),
        (NODE + '[control]\nstate_dir = "run"', "control.state_dir", "expected an absolute path"),
        # [[pods]]
        ('pods = "web"\n' + NODE, "pods", "expected an array of tables, got string"),
        (NODE + "[pods]\nname = 'a'", "pods", "expected an array of tables, got table"),
        ("pods = [1]\n" + NODE, "pods[0]", "expected a table, got integer"),
        (NODE + "[[pods]]\nip = '10.244.1.5'", "pods[0].name", "required key is missing"),
        (NODE + "[[pods]]\nname = 'Web'", "pods[0].name", "DNS-1123"),
        (NODE + "[[pods]]\nname = '" + "p" * 41 + "'", "pods[0].name", "at most 40"),
        (NODE + "[[pods]]\nname = 'a'\nip = '10.244.1'", "pods[0].ip", "not an IPv4 address"),
        (NODE + "[[pods]]\nname = 'a'\nip = 10", "pods[0].ip", "expected a string, got integer"),
        (NODE + "[[pods]]\nname = 'a'\nready = 'yes'", "pods[0].ready", "expected a boolean, got string"),
        (NODE + "[[pods]]\nname = 'a'\nlabels = ['app']", "pods[0].labels", "expected a table, got array"),
        (NODE + "[[pods]]\nname = 'a'\nlabels = { app = 1 }", "pods[0].labels.app", "expected a string, got integer"),
        (NODE + "[[pods]]\nname = 'a'\nlabels = { 'bad key' = 'x' }", 'pods[0].labels."bad key"', "label key"),
        (NODE + "[[pods]]\nname = 'a'\nlabels = { '/app' = 'x' }", 'pods[0].labels."/app"', "prefix"),
        (NODE + "[[pods]]\nname = 'a'\nlabels = { app = 'two words' }", "pods[0].labels.app", "label value"),
        (NODE + "[[pods]]\nname = 'a'\ncontainers = { name = 'c' }", "pods[0].containers", "expected an array of tables, got table"),
        (NODE + "[[pods]]\nname = 'a'\ncontainers = ['c']", "pods[0].containers[0]", "expected a table, got string"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\ncommand = ['x']", "pods[0].containers[0].name", "required key is missing"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'C'\ncommand = ['x']", "pods[0].containers[0].name", "DNS-1123"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'", "pods[0].containers[0].command", "required key is missing"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = 'sleep 1'", "pods[0].containers[0].command", "expected an array, got string"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = []", "pods[0].containers[0].command", "must not be empty"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['sleep', 1]", "pods[0].containers[0].command[1]", "expected a string, got integer"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['']", "pods[0].containers[0].command[0]", "must not be empty"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = [\"a\\u0000b\"]", "pods[0].containers[0].command[0]", "NUL"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nenv = { A = 1 }", "pods[0].containers[0].env.A", "expected a string, got integer"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nenv = { 'A=B' = '1' }", 'pods[0].containers[0].env."A=B"', "'='"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ port = 80 }]", "pods[0].containers[0].ports[0].name", "required key is missing"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'http' }]", "pods[0].containers[0].ports[0].port", "required key is missing"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'http', port = 0 }]", "pods[0].containers[0].ports[0].port", "between 1 and 65535, got 0"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'http', port = 65536 }]", "pods[0].containers[0].ports[0].port", "between 1 and 65535, got 65536"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'http', port = '80' }]", "pods[0].containers[0].ports[0].port", "expected an integer, got string"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'http', port = 80, protocol = 'sctp' }]", "pods[0].containers[0].ports[0].protocol", "'tcp' or 'udp'"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'HTTP', port = 80 }]", "pods[0].containers[0].ports[0].name", "port name"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = '8080', port = 80 }]", "pods[0].containers[0].ports[0].name", "at least one letter"),
        (NODE + "[[pods]]\nname = 'a'\n[[pods.containers]]\nname = 'c'\ncommand = ['x']\nports = [{ name = 'a-very-long-port-name', port = 80 }]", "pods[0].containers[0].ports[0].name", "1-15 characters"),
    ],
)
def test_error_path_and_reason(text: str, path: str, reason: str) -> None:
    got_path, got_reason = only_error(text)
    assert got_path == path
    assert reason in got_reason


def test_third_pod_ip_error_names_pods_2_ip() -> None:
    text = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"\nip = "10.244.9.9"')
    assert only_error(text) == ("pods[2].ip", "10.244.9.9 is outside node.pod_cidr 10.244.1.0/24")


def test_second_container_name_error() -> None:
    text = NODE + """
[[pods]]
name = "a"
containers = [ { name = "one", command = ["x"] }, { name = "Two", command = ["x"] } ]
"""
    path, _ = only_error(text)
    assert path == "pods[0].containers[1].name"


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.244.1.0", "network address"),
        ("10.244.1.255", "broadcast address"),
        ("10.244.1.1", "is the address of node.gateway"),
        ("10.244.1.254", "is the address of host_port.address"),
        ("10.244.2.10", "outside node.pod_cidr"),
    ],
)
def test_pod_ip_collisions(ip: str, reason: str) -> None:
    path, got = only_error(NODE + pods_toml('name = "a"', f'name = "b"\nip = "{ip}"'))
    assert path == "pods[1].ip"
    assert reason in got


def test_pod_ip_cannot_take_an_explicit_gateway() -> None:
    node = NODE + 'gateway = "10.244.1.100"\n'
    assert only_error(node + pods_toml('name = "a"\nip = "10.244.1.100"'))[0] == "pods[0].ip"


def test_duplicate_pod_names() -> None:
    path, reason = only_error(NODE + pods_toml('name = "a"', 'name = "b"', 'name = "a"'))
    assert path == "pods[2].name"
    assert "duplicate pod name 'a'" in reason and "pods[0].name" in reason


def test_duplicate_pod_ips() -> None:
    text = NODE + pods_toml('name = "a"\nip = "10.244.1.50"', 'name = "b"\nip = "10.244.1.50"')
    path, reason = only_error(text)
    assert path == "pods[1].ip"
    assert "already used at pods[0].ip" in reason


def test_duplicate_container_names_within_a_pod() -> None:
    text = NODE + """
[[pods]]
name = "a"
containers = [ { name = "c", command = ["x"] }, { name = "c", command = ["y"] } ]
[[pods]]
name = "b"
containers = [ { name = "c", command = ["x"] } ]
"""
    path, reason = only_error(text)
    assert path == "pods[0].containers[1].name"
    assert "duplicate container name 'c'" in reason


def test_port_names_and_bindings_are_unique_per_pod_not_per_container() -> None:
    text = NODE + """
[[pods]]
name = "a"
containers = [
  { name = "c1", command = ["x"], ports = [ { name = "http", port = 80 } ] },
  { name = "c2", command = ["x"], ports = [ { name = "http", port = 81 }, { name = "web", port = 80 } ] },
]
[[pods]]
name = "b"
containers = [ { name = "c1", command = ["x"], ports = [ { name = "http", port = 80 } ] } ]
"""
    errors = errors_of(text)
    assert [path for path, _ in errors] == [
        "pods[0].containers[1].ports[0].name",
        "pods[0].containers[1].ports[1].port",
    ]
    assert "duplicate port name 'http'" in errors[0][1]
    assert "tcp port 80 is already declared at pods[0].containers[0].ports[0].port" in errors[1][1]


def test_same_port_number_for_tcp_and_udp_is_fine() -> None:
    text = NODE + """
[[pods]]
name = "a"
containers = [ { name = "c", command = ["x"], ports = [ { name = "a", port = 53 }, { name = "b", port = 53, protocol = "udp" } ] } ]
"""
    assert dict(parse_topology(text).pods[0].containers[0].ports) == {"a": ("tcp", 53), "b": ("udp", 53)}


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        ("colour = 1\n" + NODE, "colour", None),
        ("nodes = 1\n" + NODE, "nodes", "'node'"),
        (NODE + 'gatway = "10.244.1.1"', "node.gatway", "'gateway'"),
        (NODE + "[host_port]\nenable = true", "host_port.enable", "'enabled'"),
        (NODE + "[dataplane]\nburts = 1", "dataplane.burts", "'burst'"),
        (NODE + '[control]\nsock = "/x"', "control.sock", "'socket'"),
        (NODE + "[[pods]]\nname = 'a'\nlabel = { a = 'b' }", "pods[0].label", "'labels'"),
        (NODE + "[[pods]]\nname = 'a'\ncontainers = [{ name = 'c', command = ['x'], args = [] }]", "pods[0].containers[0].args", None),
        (NODE + "[[pods]]\nname = 'a'\ncontainers = [{ name = 'c', command = ['x'], ports = [{ name = 'h', port = 1, proto = 'tcp' }] }]", "pods[0].containers[0].ports[0].proto", "'protocol'"),
        (NODE + "[node.extra]\nx = 1", "node.extra", None),
    ],
)
def test_unknown_keys_are_errors_with_their_path(text: str, path: str, hint: str | None) -> None:
    got_path, reason = only_error(text)
    assert got_path == path
    assert reason.startswith("unknown key")
    if hint:
        assert f"did you mean {hint}?" in reason


@pytest.mark.parametrize("section", ["peers", "networks"])
def test_reserved_sections_are_rejected(section: str) -> None:
    assert only_error(NODE + f"[{section}]\nx = 1\n") == (
        section,
        f"section '{section}' is not supported by this version of vswitch yet",
    )
    assert only_error(NODE + f"[[{section}]]\nx = 1\n")[0] == section


def test_all_errors_are_collected_and_listed_one_per_line() -> None:
    text = """
[node]
name = "Lab"
pod_cidr = "10.244.1.0/24"
mtu = 1
[dataplane]
burst = 0
[[pods]]
name = "a"
ip = "1.2.3.4"
"""
    with pytest.raises(ConfigError) as caught:
        parse_topology(text, "lab.toml")
    error = caught.value
    assert [path for path, _ in error.errors] == ["node.name", "node.mtu", "dataplane.burst", "pods[0].ip"]
    assert (error.file, error.path) == ("lab.toml", "node.name")
    assert error.reason == error.errors[0][1]
    lines = str(error).splitlines()
    assert len(lines) == 4
    assert lines[1] == "lab.toml: node.mtu: must be between 576 and 9000, got 1"
    assert all(line.startswith("lab.toml: ") for line in lines)


def test_single_error_message_format() -> None:
    error = ConfigError("f.toml", "pods[2].ip", "bad")
    assert str(error) == "f.toml: pods[2].ip: bad"
    assert error.errors == [("pods[2].ip", "bad")]


def test_an_invalid_cidr_does_not_cascade_into_gateway_and_pod_errors() -> None:
    text = NODE.replace("10.244.1.0/24", "10.244.1.0/33") + 'gateway = "10.244.1.1"\n' + pods_toml(
        'name = "a"', 'name = "b"\nip = "10.244.1.7"'
    )
    assert [path for path, _ in errors_of(text)] == ["node.pod_cidr"]


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[node]\nname = "lab1\n')
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert caught.value.file == str(path)
    assert caught.value.path == ""
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert caught.value.file == str(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(NODE.encode() + b'# caf\xe9\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_topology(path)


# -- derived names --------------------------------------------------------------------------


def test_kernel_names_fit_ifnamsiz_for_long_names() -> None:
    node_name = "n" * 20
    first = "a" * 38 + "-1"
    second = "a" * 38 + "-2"
    text = f'[node]\nname = "{node_name}"\npod_cidr = "10.244.1.0/24"\n' + pods_toml(
        f'name = "{first}"', f'name = "{second}"'
    )
    topology = parse_topology(text)
    taps = [pod.tap for pod in topology.pods]
    assert all(len(name) <= model.IFNAMSIZ for name in taps + [topology.host_port.name])
    assert taps[0] != taps[1]
    assert all(name.startswith("vsp") for name in taps)
    assert topology.host_port.name.startswith("vsh")
    assert topology.pods[0].netns == f"vsw-{node_name}-{first}"


def test_names_are_stable_across_loads() -> None:
    first, second = parse_topology(ISSUE_EXAMPLE), parse_topology(ISSUE_EXAMPLE)
    assert [p.tap for p in first.pods] == [p.tap for p in second.pods]
    assert first.host_port.name == second.host_port.name


# -- immutability ---------------------------------------------------------------------------


def test_the_model_is_frozen() -> None:
    topology = load_topology(CONFIG_DIR / "demo.toml")
    pod = topology.pod("web-1")
    container = pod.containers[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topology.pods = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pod.ip = IPv4Address("10.244.1.99")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topology.node.mtu = 9000  # type: ignore[misc]
    with pytest.raises(TypeError):
        pod.labels["app"] = "db"  # type: ignore[index]
    with pytest.raises(TypeError):
        container.ports["x"] = ("tcp", 1)  # type: ignore[index]
    with pytest.raises(TypeError):
        pod.containers[1].env["X"] = "1"  # type: ignore[index]
    assert isinstance(topology.pods, tuple)
    assert isinstance(pod.containers, tuple)
    assert isinstance(container.command, tuple)


def test_topology_is_hashable_only_where_values_are() -> None:
    # Node and Dataplane hold only immutable scalars, so they can key caches of derived state.
    topology = parse_topology(NODE)
    assert hash(topology.node) == hash(parse_topology(NODE).node)
    assert hash(topology.dataplane) == hash(parse_topology(NODE).dataplane)


def test_a_tap_name_hash_collision_is_refused() -> None:
    # The names carry a 16-bit hash, so a birthday search finds two pod names that share a stem
    # and a hash within a few hundred tries; the loader must refuse them rather than let two pods
    # claim one device.
    seen: dict[str, str] = {}
    for index in range(5000):
        pod = f"colliding-{index}"
        tap = model.kernel_name("vsp", "lab1", pod)
        if tap in seen:
            first, second = seen[tap], pod
            break
        seen[tap] = pod
    else:
        pytest.fail("no collision found; the hash is longer than this test assumes")
    path, reason = only_error(NODE + pods_toml(f'name = "{first}"', f'name = "{second}"'))
    assert path == "pods[1].name"
    assert f"derived TAP name {tap!r} collides with pods[0]" in reason


# -- segments, pod segments and MTUs, static routes -----------------------------------------

BLUE = """\
[[segments]]
name = "blue"
cidr = "10.245.1.0/24"
"""


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


def route(dst: str, via: str) -> str:
    return f'[[routes]]\ndst = "{dst}"\nvia = "{via}"\n'


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


# -- cluster, uplink and services ---------------------------------------------------------------

SERVICES_EXAMPLE = NODE + """\
[cluster]
cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/16"

[uplink]
address = "192.0.2.2/24"     # the node's external address, owned by vswitchd
gateway = "192.0.2.1"        # the far side: next hop for egress
netns = "lab-internet"       # optional: namespace that holds the far side (default: the host's own)

[[services]]
name = "web"
cluster_ip = "10.96.0.10"
selector = { app = "web" }
type = "NodePort"
session_affinity = "ClientIP"
ports = [ { name = "http", protocol = "tcp", port = 80, target_port = 8080, node_port = 30080 } ]
"""

UPLINK = '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.2.1"\n'


def service(*lines: str) -> str:
    return "\n[[services]]\n" + "\n".join(lines) + "\n"


def test_the_issue_services_example_is_accepted_as_written() -> None:
    topology = parse_topology(SERVICES_EXAMPLE)
    assert topology.cluster == model.Cluster(
        cidr=IPv4Network("10.244.0.0/16"), service_cidr=IPv4Network("10.96.0.0/16"),
        hairpin_address=IPv4Address("169.254.169.5"), conntrack_max=262144)
    uplink = topology.uplink
    assert uplink.address == IPv4Interface("192.0.2.2/24")
    assert (uplink.gateway, uplink.netns, uplink.mtu) == (IPv4Address("192.0.2.1"), "lab-internet", 1500)
    assert uplink.name == model.kernel_name("vsu", "lab1") and len(uplink.name) <= 15
    assert (uplink.mac, uplink.far_mac) == ("0a:58:c0:00:02:02", "0a:58:c0:00:02:01")
    (web,) = topology.services
    assert (web.name, web.namespace, web.cluster_ip, web.type) == (
        "web", "default", IPv4Address("10.96.0.10"), "NodePort")
    assert dict(web.selector) == {"app": "web"} and web.endpoints == ()
    assert (web.session_affinity, web.affinity_timeout) == ("ClientIP", 10800)
    assert (web.external_traffic_policy, web.internal_traffic_policy) == ("Cluster", "Cluster")
    assert (web.external_ips, web.load_balancer) == ((), "random")
    assert web.ports == (model.ServicePort("http", "tcp", 80, 8080, 30080),)
    assert topology.uplink_segment().gateway == IPv4Address("192.0.2.2")


def test_services_toml_loads() -> None:
    topology = load_topology(CONFIG_DIR / "services.toml")
    assert topology.uplink.netns == "lab-internet"
    web = next(s for s in topology.services if s.name == "web")
    assert web == parse_topology(SERVICES_EXAMPLE).services[0]
    assert any(p.protocol == "udp" for s in topology.services for p in s.ports)
    assert {pod.name for pod in topology.pods} == {"web-1", "web-2", "client"}


def test_cluster_defaults_without_the_section() -> None:
    topology = parse_topology(NODE)
    assert topology.cluster == model.Cluster(cidr=IPv4Network("10.244.1.0/24"),
                                             service_cidr=IPv4Network("10.96.0.0/16"))
    assert topology.uplink is None and topology.services == ()


def test_default_cluster_cidr_covers_every_segment() -> None:
    text = NODE + '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
    assert parse_topology(text).cluster.cidr == IPv4Network("10.244.0.0/15")


def test_every_cluster_and_uplink_value_can_be_set() -> None:
    text = NODE + """
[cluster]
cidr = "10.244.0.0/16"
service_cidr = "10.100.0.0/24"
hairpin_address = "169.254.0.9"
conntrack_max = 1024
[uplink]
address = "198.51.100.7/25"
gateway = "198.51.100.100"
mtu = 1400
"""
    topology = parse_topology(text)
    assert topology.cluster == model.Cluster(IPv4Network("10.244.0.0/16"),
                                             IPv4Network("10.100.0.0/24"),
                                             IPv4Address("169.254.0.9"), 1024)
    assert (topology.uplink.netns, topology.uplink.mtu) == (None, 1400)


def test_uplink_mtu_defaults_to_the_node_mtu() -> None:
    text = NODE.replace('pod_cidr', 'mtu = 1400\npod_cidr') + UPLINK
    assert parse_topology(text).uplink.mtu == 1400


def test_service_defaults_and_allocation_in_file_order() -> None:
    text = NODE + UPLINK + service('name = "a"', 'ports = [ { port = 80 } ]') + service(
        'name = "b"', 'cluster_ip = "10.96.0.10"', 'type = "NodePort"',
        'ports = [ { name = "x", port = 53, protocol = "udp" }, { name = "y", port = 53 } ]'
    ) + service('name = "c"', 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30000 } ]')
    a, b, c = parse_topology(text).services
    # a skips .10, which b takes explicitly; node ports skip c's explicit tcp 30000.
    assert a.cluster_ip == IPv4Address("10.96.0.11") and b.cluster_ip == IPv4Address("10.96.0.10")
    assert a.ports == (model.ServicePort("", "tcp", 80, 80, None),)
    assert [(p.protocol, p.node_port) for p in b.ports] == [("udp", 30000), ("tcp", 30001)]
    assert c.ports[0].node_port == 30000
    assert (a.namespace, a.type, a.selector, a.session_affinity) == ("default", "ClusterIP", None, "None")


def test_every_service_value_can_be_set() -> None:
    text = NODE + UPLINK + service(
        'name = "db"', 'namespace = "prod"', 'cluster_ip = "10.96.5.5"', 'type = "NodePort"',
        'ports = [ { name = "pg", protocol = "tcp", port = 5432, target_port = "postgres", node_port = 32767 } ]',
        'endpoints = ["10.244.1.20", "203.0.113.9"]', 'session_affinity = "ClientIP"',
        'affinity_timeout = 60', 'external_traffic_policy = "Local"',
        'internal_traffic_policy = "Local"', 'external_ips = ["203.0.113.1"]',
        'load_balancer = "maglev"')
    (db,) = parse_topology(text).services
    assert db == model.Service(
        name="db", namespace="prod", cluster_ip=IPv4Address("10.96.5.5"), type="NodePort",
        ports=(model.ServicePort("pg", "tcp", 5432, "postgres", 32767),), selector=None,
        endpoints=(IPv4Address("10.244.1.20"), IPv4Address("203.0.113.9")),
        session_affinity="ClientIP", affinity_timeout=60, external_traffic_policy="Local",
        internal_traffic_policy="Local", external_ips=(IPv4Address("203.0.113.1"),),
        load_balancer="maglev")
    assert db.key == "prod/db"


def test_headless_service_needs_no_ports_and_gets_no_address() -> None:
    text = NODE + service('name = "h"', 'cluster_ip = "None"', 'selector = { app = "x" }') + service(
        'name = "n"', 'ports = [ { port = 1 } ]')
    headless, normal = parse_topology(text).services
    assert headless.headless and headless.ports == ()
    assert normal.cluster_ip == IPv4Address("10.96.0.10")


def test_same_name_in_two_namespaces_is_fine() -> None:
    text = NODE + service('name = "a"', 'ports = [ { port = 1 } ]') + service(
        'name = "a"', 'namespace = "kube-system"', 'ports = [ { port = 1 } ]')
    assert [s.key for s in parse_topology(text).services] == ["default/a", "kube-system/a"]


def test_node_ports_may_repeat_across_protocols() -> None:
    text = NODE + UPLINK + service('name = "a"', 'type = "NodePort"',
                                   'ports = [ { name = "t", port = 1, node_port = 30500 }, '
                                   '{ name = "u", port = 1, protocol = "udp", node_port = 30500 } ]')
    assert [p.node_port for p in parse_topology(text).services[0].ports] == [30500, 30500]


SVC = 'name = "s"'
PORT = 'ports = [ { port = 80 } ]'


@pytest.mark.parametrize(
    "text, path, reason",
    [
        # [cluster]
        (NODE + '[cluster]\ncidr = "10.245.0.0/16"', "cluster.cidr",
         "10.245.0.0/16 does not contain node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.244.0.0"', "cluster.cidr", "expected an IPv4 network"),
        (NODE + '[cluster]\nservice_cidr = "10.244.0.0/16"', "cluster.service_cidr",
         "10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.0.0.0/8"\nservice_cidr = "10.96.0.0/16"',
         "cluster.service_cidr", "10.96.0.0/16 overlaps cluster.cidr 10.0.0.0/8"),
        (NODE + '[cluster]\nservice_cidr = "10.96.0.1/16"', "cluster.service_cidr", "host bits set"),
        (NODE + '[cluster]\nhairpin_address = "10.96.0.5"', "cluster.hairpin_address",
         "10.96.0.5 is inside cluster.service_cidr 10.96.0.0/16"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"\nhairpin_address = "10.244.9.9"',
         "cluster.hairpin_address", "10.244.9.9 is inside cluster.cidr 10.244.0.0/16"),
        (NODE + '[cluster]\nhairpin_address = "x"', "cluster.hairpin_address", "'x' is not an IPv4 address"),
        (NODE + "[cluster]\nconntrack_max = 1023", "cluster.conntrack_max",
         "must be between 1024 and 4194304, got 1023"),
        (NODE + "[cluster]\nconntrack_max = 4194305", "cluster.conntrack_max", "must be between"),
        (NODE + "[cluster]\nmax = 1", "cluster.max", "unknown key"),
        # [uplink]
        (NODE + '[uplink]\ngateway = "192.0.2.1"', "uplink.address", "required key is missing"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"', "uplink.gateway", "required key is missing"),
        (NODE + '[uplink]\naddress = "192.0.2.2"\ngateway = "192.0.2.1"', "uplink.address",
         "expected an address with its prefix length"),
        (NODE + '[uplink]\naddress = "192.0.2.0/24"\ngateway = "192.0.2.1"', "uplink.address",
         "192.0.2.0 is the network address of 192.0.2.0/24"),
        (NODE + '[uplink]\naddress = "192.0.2.2/31"\ngateway = "192.0.2.3"', "uplink.address",
         "prefix length /31 is outside /8../30"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.3.1"', "uplink.gateway",
         "192.0.3.1 is outside uplink.address's network 192.0.2.0/24"),
        (NODE + '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.2.2"', "uplink.gateway",
         "192.0.2.2 is uplink.address itself"),
        (NODE + '[uplink]\naddress = "10.244.1.200/24"\ngateway = "10.244.1.201"', "uplink.address",
         "10.244.1.0/24 overlaps node.pod_cidr 10.244.1.0/24"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"\n[uplink]\naddress = "10.244.9.2/24"\ngateway = "10.244.9.1"',
         "uplink.address", "10.244.9.0/24 overlaps cluster.cidr 10.244.0.0/16"),
        (NODE + '[uplink]\naddress = "10.96.1.2/24"\ngateway = "10.96.1.1"', "uplink.address",
         "10.96.1.0/24 overlaps cluster.service_cidr 10.96.0.0/16"),
        (NODE + '[uplink]\naddress = "169.254.169.2/24"\ngateway = "169.254.169.1"', "uplink.address",
         "contains cluster.hairpin_address 169.254.169.5"),
        (NODE + UPLINK + 'netns = "vsw-lab1-x"', "uplink.netns", "starts with 'vsw-'"),
        (NODE + UPLINK + 'netns = "a/b"', "uplink.netns", "not a usable namespace name"),
        (NODE + UPLINK + 'netns = ""', "uplink.netns", "must not be empty"),
        (NODE + UPLINK + "mtu = 100", "uplink.mtu", "must be between 576 and 9000"),
        (NODE + UPLINK + "name = 'x'", "uplink.name", "unknown key"),
        # [[services]]
        (NODE + service(PORT), "services[0].name", "required key is missing"),
        (NODE + service('name = "Web"', PORT), "services[0].name", "not a DNS-1123 label"),
        (NODE + service(SVC, 'namespace = "a_b"', PORT), "services[0].namespace", "not a DNS-1123 label"),
        (NODE + service(SVC, PORT) + service(SVC, PORT), "services[1].name",
         "duplicate service default/s (first at services[0])"),
        (NODE + service(SVC, 'cluster_ip = "10.97.0.1"', PORT), "services[0].cluster_ip",
         "10.97.0.1 is outside cluster.service_cidr 10.96.0.0/16"),
        (NODE + service(SVC, 'cluster_ip = "10.96.0.0"', PORT), "services[0].cluster_ip",
         "10.96.0.0 is the network address of 10.96.0.0/16"),
        (NODE + service(SVC, 'cluster_ip = "none"', PORT), "services[0].cluster_ip",
         "'none' is not an IPv4 address"),
        (NODE + service(SVC, 'cluster_ip = "10.96.0.10"', PORT) + service(
            'name = "t"', 'cluster_ip = "10.96.0.10"', PORT), "services[1].cluster_ip",
         "10.96.0.10 is already the cluster IP of services[0]"),
        (NODE + service(SVC, 'type = "LoadBalancer"', PORT), "services[0].type",
         "must be one of 'ClusterIP', 'NodePort', got 'LoadBalancer'"),
        (NODE + service(SVC, 'type = "nodeport"', PORT), "services[0].type", "did you mean 'NodePort'?"),
        (NODE + service(SVC, 'type = "NodePort"', PORT), "services[0].type",
         "type NodePort needs an [uplink] section"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'cluster_ip = "None"', PORT),
         "services[0].type", "a headless service (cluster_ip = \"None\") must be of type ClusterIP"),
        (NODE + service(SVC), "services[0].ports", "a service with a cluster IP needs at least one port"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { port = 2 } ]'),
         "services[0].ports[1].name", "required key is missing"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { name = "a", port = 2 } ]'),
         "services[0].ports[1].name", "duplicate port name 'a' in this service"),
        (NODE + service(SVC, 'ports = [ { name = "A", port = 1 } ]'), "services[0].ports[0].name",
         "not a DNS-1123 label"),
        (NODE + service(SVC, 'ports = [ { name = "", port = 1 } ]'), "services[0].ports[0].name",
         "must not be empty"),
        (NODE + service(SVC, 'ports = [ { name = "a", port = 1 }, { name = "b", port = 1 } ]'),
         "services[0].ports[1].port", "tcp port 1 is already declared at services[0].ports[0].port"),
        (NODE + service(SVC, 'ports = [ { port = 0 } ]'), "services[0].ports[0].port",
         "must be between 1 and 65535, got 0"),
        (NODE + service(SVC, 'ports = [ { target_port = 1 } ]'), "services[0].ports[0].port",
         "required key is missing"),
        (NODE + service(SVC, 'ports = [ { port = 1, protocol = "sctp" } ]'),
         "services[0].ports[0].protocol", "must be one of 'tcp', 'udp', got 'sctp'"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = 70000 } ]'),
         "services[0].ports[0].target_port", "must be between 1 and 65535, got 70000"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = "Http" } ]'),
         "services[0].ports[0].target_port", "port name 'Http' is invalid"),
        (NODE + service(SVC, 'ports = [ { port = 1, target_port = 1.5 } ]'),
         "services[0].ports[0].target_port", "expected a port number or a container port name, got float"),
        (NODE + service(SVC, 'ports = [ { port = 1, node_port = 30001 } ]'),
         "services[0].ports[0].node_port", "only a service of type NodePort has node ports"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'ports = [ { port = 1, node_port = 29999 } ]'),
         "services[0].ports[0].node_port", "must be between 30000 and 32767, got 29999"),
        (NODE + UPLINK + service(SVC, 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30001 } ]')
         + service('name = "t"', 'type = "NodePort"', 'ports = [ { port = 2, node_port = 30001 } ]'),
         "services[1].ports[0].node_port", "tcp node port 30001 is already used by services[0].ports[0]"),
        (NODE + service(SVC, PORT, 'ports2 = 1'), "services[0].ports2", "unknown key"),
        (NODE + service(SVC, 'ports = [ { port = 1, nodeport = 1 } ]'), "services[0].ports[0].nodeport",
         "did you mean 'node_port'?"),
        (NODE + service(SVC, PORT, "selector = {}"), "services[0].selector", "an empty selector"),
        (NODE + service(SVC, PORT, 'selector = { "-x" = "y" }'), 'services[0].selector.-x',
         "label key '-x' is invalid"),
        (NODE + service(SVC, PORT, "selector = { a = 1 }"), "services[0].selector.a",
         "expected a string, got integer"),
        (NODE + service(SVC, PORT, 'selector = { a = "b" }', 'endpoints = ["10.244.1.9"]'),
         "services[0].endpoints", "give either a selector or explicit endpoints, not both"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.244.1.9", "x"]'), "services[0].endpoints[1]",
         "'x' is not an IPv4 address"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.244.1.9", "10.244.1.9"]'),
         "services[0].endpoints[1]", "10.244.1.9 is listed twice"),
        (NODE + service(SVC, PORT, 'endpoints = ["10.96.0.10"]'), "services[0].endpoints[0]",
         "10.96.0.10 is inside cluster.service_cidr 10.96.0.0/16"),
        (NODE + service(SVC, PORT, 'endpoints = [1]'), "services[0].endpoints[0]",
         "expected a string, got integer"),
        (NODE + service(SVC, PORT, 'session_affinity = "clientip"'), "services[0].session_affinity",
         "did you mean 'ClientIP'?"),
        (NODE + service(SVC, PORT, "affinity_timeout = 0"), "services[0].affinity_timeout",
         "must be between 1 and 86400, got 0"),
        (NODE + service(SVC, PORT, "affinity_timeout = 86401"), "services[0].affinity_timeout",
         "must be between 1 and 86400"),
        (NODE + service(SVC, PORT, 'external_traffic_policy = "Node"'),
         "services[0].external_traffic_policy", "must be one of 'Cluster', 'Local'"),
        (NODE + service(SVC, PORT, 'internal_traffic_policy = "local"'),
         "services[0].internal_traffic_policy", "did you mean 'Local'?"),
        (NODE + service(SVC, PORT, 'load_balancer = "rr"'), "services[0].load_balancer",
         "must be one of 'random', 'maglev', got 'rr'"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.244.1.10"]'), "services[0].external_ips[0]",
         "10.244.1.10 is inside node.pod_cidr 10.244.1.0/24: a pod or gateway address"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.244.1.254"]'), "services[0].external_ips[0]",
         "10.244.1.254 is host_port.address"),
        (NODE + UPLINK + service(SVC, PORT, 'external_ips = ["192.0.2.2"]'),
         "services[0].external_ips[0]", "192.0.2.2 is uplink.address (the node address)"),
        (NODE + UPLINK + service(SVC, PORT, 'external_ips = ["192.0.2.1"]'),
         "services[0].external_ips[0]", "192.0.2.1 is uplink.gateway"),
        (NODE + service(SVC, PORT, 'external_ips = ["10.96.3.3"]'), "services[0].external_ips[0]",
         "10.96.3.3 is inside cluster.service_cidr"),
        (NODE + '[cluster]\ncidr = "10.244.0.0/16"' + service(SVC, PORT, 'external_ips = ["10.244.7.7"]'),
         "services[0].external_ips[0]", "10.244.7.7 is inside cluster.cidr 10.244.0.0/16: a pod address"),
        (NODE + service(SVC, PORT, 'external_ips = ["169.254.169.5"]'), "services[0].external_ips[0]",
         "169.254.169.5 is cluster.hairpin_address"),
        ("services = [1]\n" + NODE, "services[0]", "expected a table, got integer"),
        (NODE + "[services]\nx = 1", "services", "expected an array of tables, got table"),
        (NODE + '[[pods]]\nname = "uplink"', "pods[0].name", "'uplink' is reserved"),
    ],
)
def test_cluster_uplink_and_service_errors(text: str, path: str, reason: str) -> None:
    errors = errors_of(text)
    assert errors[0][0] == path, errors
    assert reason in errors[0][1], errors
    assert len(errors) == 1, errors


def test_a_wrong_cluster_does_not_cascade_into_services() -> None:
    text = NODE + '[cluster]\nservice_cidr = "nope"' + service(SVC, 'cluster_ip = "10.1.1.1"', PORT)
    assert only_error(text)[0] == "cluster.service_cidr"


def test_cluster_ip_pool_exhaustion_names_the_service() -> None:
    text = NODE + '[cluster]\nservice_cidr = "10.96.0.0/30"' + service(
        'name = "a"', PORT) + service('name = "b"', PORT) + service('name = "c"', PORT)
    assert only_error(text) == ("services[2]", "no free cluster IP left in cluster.service_cidr 10.96.0.0/30")


# -- validation against a running node ---------------------------------------------------------

from vswitch.config import parse_fragment, parse_pod, service_table, update_service  # noqa: E402

RUNNING = parse_topology(NODE + UPLINK + '[[pods]]\nname = "web-1"\nlabels = { app = "web" }\n'
                         '[[pods]]\nname = "client"\nip = "10.244.1.11"\n'
                         + service('name = "web"', 'selector = { app = "web" }', 'type = "NodePort"',
                                   'ports = [ { name = "http", port = 80, target_port = 8080 } ]'))


def test_parse_pod_allocates_around_the_running_pods() -> None:
    pod = parse_pod({"name": "new", "labels": {"app": "web"}, "ready": False}, RUNNING)
    assert (pod.ip, pod.netns, pod.ready) == (IPv4Address("10.244.1.12"), "vsw-lab1-new", False)
    assert pod.tap == model.kernel_name("vsp", "lab1", "new")


@pytest.mark.parametrize("table, path, reason", [
    ({"name": "web-1"}, "pod.name", "pod 'web-1' already exists"),
    ({"name": "x", "ip": "10.244.1.11"}, "pod.ip", "10.244.1.11 is the address of pod client"),
    ({"name": "x", "ip": "10.244.1.1"}, "pod.ip", "10.244.1.1 is the address of node.gateway"),
    ({"name": "x", "ip": "10.244.1.254"}, "pod.ip", "is the address of host_port.address"),
    ({"name": "x", "ip": "10.9.9.9"}, "pod.ip", "10.9.9.9 is outside node.pod_cidr 10.244.1.0/24"),
    ({"name": "x", "segment": "blue"}, "pod.segment", "unknown segment 'blue'; segments: default"),
    ({"name": "x", "ready": "yes"}, "pod.ready", "expected a boolean, got string"),
    ({"name": "x", "colour": 1}, "pod.colour", "unknown key"),
    ({"name": "host"}, "pod.name", "'host' is reserved"),
    ({"name": "x", "containers": [{"name": "c"}]}, "pod.containers[0].command", "required key is missing"),
    ([], "pod", "expected a table, got array"),
])
def test_parse_pod_errors_carry_pod_key_paths(table, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pod(table, RUNNING, source="pod add")
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"pod add: {path}: ")


def test_fragment_adds_and_replaces_keeping_allocations() -> None:
    text = ('[[pods]]\nname = "web-1"\nlabels = { app = "web", v = "2" }\n'
            '[[pods]]\nname = "web-2"\nlabels = { app = "web" }\n'
            + service('name = "web"', 'selector = { app = "web" }', 'type = "NodePort"',
                      'ports = [ { name = "http", port = 80, target_port = 8080 } ]')
            + service('name = "dns"', 'ports = [ { port = 53, protocol = "udp" } ]'))
    fragment = parse_fragment(text, "f.toml", RUNNING)
    web1, web2 = fragment.pods
    old_web1 = RUNNING.pod("web-1")
    # web-1 keeps its address; web-2 gets the next free one.
    assert web1.ip == old_web1.ip and dict(web1.labels) == {"app": "web", "v": "2"}
    assert web2.ip == IPv4Address("10.244.1.12")
    web, dns = fragment.services
    assert web == RUNNING.services[0]  # unchanged: same cluster IP and node port
    assert dns.cluster_ip == IPv4Address("10.96.0.11")


def test_an_unchanged_pod_compares_equal_after_reparsing() -> None:
    fragment = parse_fragment('[[pods]]\nname = "web-1"\nlabels = { app = "web" }\n', "f", RUNNING)
    assert fragment.pods == (RUNNING.pod("web-1"),)


@pytest.mark.parametrize("text, allowed, replace, path, reason", [
    ('[node]\nname = "x"', ("pods", "services"), True, "node",
     "only [[pods]] and [[services]] can be changed while the node runs"),
    ('[[pods]]\nname = "a"', ("services",), False, "pods", "only [[services]] can be changed"),
    (service('name = "web"', PORT), ("services",), False, "services[0].name",
     "service default/web already exists"),
    (service('name = "x"', 'cluster_ip = "10.96.0.10"', PORT), ("services",), False,
     "services[0].cluster_ip", "10.96.0.10 is already the cluster IP of service default/web"),
    (service('name = "x"', 'type = "NodePort"', 'ports = [ { port = 1, node_port = 30000 } ]'),
     ("services",), False, "services[0].ports[0].node_port",
     "tcp node port 30000 is already used by service default/web"),
    ('[[pods]]\nname = "a"\n[[pods]]\nname = "a"', ("pods",), True, "pods[1].name", "duplicate pod name"),
])
def test_fragment_errors(text, allowed, replace, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fragment(text, "frag.toml", RUNNING, allowed=allowed, replace=replace)
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"frag.toml: {path}: ")


def test_fragment_toml_errors_name_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^frag.toml: invalid TOML"):
        parse_fragment("[[pods]\n", "frag.toml", RUNNING)


def test_service_table_round_trips() -> None:
    for topology in (RUNNING, parse_topology(SERVICES_EXAMPLE)):
        for svc in topology.services:
            fragment = parse_fragment("", "x", dataclasses.replace(topology, services=()))
            assert fragment.services == ()
            again = update_service(svc, {"load_balancer": svc.load_balancer}, topology)
            assert again == svc
            assert service_table(svc)["cluster_ip"] == str(svc.cluster_ip)


def test_update_service_changes_settings_and_swaps_selector_for_endpoints() -> None:
    web = RUNNING.services[0]
    changed = update_service(web, {"session_affinity": "ClientIP", "affinity_timeout": "5",
                                   "endpoints": "10.244.1.30,10.244.1.31"}, RUNNING)
    assert (changed.session_affinity, changed.affinity_timeout) == ("ClientIP", 5)
    assert changed.selector is None
    assert changed.endpoints == (IPv4Address("10.244.1.30"), IPv4Address("10.244.1.31"))
    assert (changed.cluster_ip, changed.ports) == (web.cluster_ip, web.ports)
    back = update_service(changed, {"selector": "app=web,tier=front"}, RUNNING)
    assert dict(back.selector) == {"app": "web", "tier": "front"} and back.endpoints == ()
    cleared = update_service(back, {"selector": ""}, RUNNING)
    assert cleared.selector is None and cleared.endpoints == ()


@pytest.mark.parametrize("settings, path, reason", [
    ({"affinity_timeout": "soon"}, "service.affinity_timeout", "expected an integer, got 'soon'"),
    ({"affinity_timeout": "0"}, "service.affinity_timeout", "must be between 1 and 86400"),
    ({"session_affinity": "Sticky"}, "service.session_affinity", "must be one of 'None', 'ClientIP'"),
    ({"load_balancer": "rr"}, "service.load_balancer", "must be one of 'random', 'maglev'"),
    ({"external_traffic_policy": "x"}, "service.external_traffic_policy", "must be one of"),
    ({"internal_traffic_policy": "x"}, "service.internal_traffic_policy", "must be one of"),
    ({"selector": "app"}, "service.selector", "expected label=value pairs"),
    ({"selector": "-bad=x"}, 'service.selector.-bad', "label key '-bad' is invalid"),
    ({"endpoints": "10.244.1.9,nope"}, "service.endpoints[1]", "'nope' is not an IPv4 address"),
    ({"cluster_ip": "10.96.0.99"}, "service.cluster_ip", "cannot be changed with `service set`"),
    ({}, "", "nothing to set"),
])
def test_update_service_errors(settings, path, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        update_service(RUNNING.services[0], settings, RUNNING)
    assert caught.value.path == path, caught.value.errors
    assert reason in caught.value.reason


def test_control_metrics_address():
    from vswitch.config import ConfigError, parse_topology

    base = '[node]\nname = "lab1"\npod_cidr = "10.244.1.0/24"\n'
    assert parse_topology(base).control.metrics is None
    topo = parse_topology(base + '[control]\nmetrics = "127.0.0.1:9469"\n', "m.toml")
    assert topo.control.metrics == "127.0.0.1:9469"
    for bad, reason in (("localhost:9469", "not an IPv4 address"), ("127.0.0.1", "HOST:PORT"),
                        ("127.0.0.1:0", "port '0'"), ("127.0.0.1:http", "port 'http'")):
        try:
            parse_topology(base + f'[control]\nmetrics = "{bad}"\n', "m.toml")
        except ConfigError as exc:
            assert "m.toml: control.metrics: " in str(exc) and reason in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


# -- reloading: what stays keeps its addresses -------------------------------------------------


def reloaded(before: str, after: str) -> tuple:
    """``after`` parsed alone (as at start-up) and with ``before`` as the running topology."""
    return parse_topology(after), parse_topology(after, previous=parse_topology(before))


def ips(topology) -> dict[str, str]:
    return {pod.name: str(pod.ip) for pod in topology.pods}


def test_removing_the_first_pod_keeps_the_others_addresses_only_with_previous() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    fresh, kept = reloaded(before, NODE + pods_toml('name = "b"', 'name = "c"'))
    assert ips(parse_topology(before)) == {"a": "10.244.1.10", "b": "10.244.1.11", "c": "10.244.1.12"}
    assert ips(fresh) == {"b": "10.244.1.10", "c": "10.244.1.11"}
    assert ips(kept) == {"b": "10.244.1.11", "c": "10.244.1.12"}
    assert kept.pods == parse_topology(before).pods[1:]  # same MACs and kernel names as well


def test_a_new_pod_listed_first_does_not_take_the_address_of_one_that_stays() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    fresh, kept = reloaded(before, NODE + pods_toml('name = "n"', 'name = "c"'))
    assert ips(fresh) == {"n": "10.244.1.10", "c": "10.244.1.11"}
    # n gets the first free address, which a gave up; c stays where it runs.
    assert ips(kept) == {"n": "10.244.1.10", "c": "10.244.1.12"}


def test_an_explicit_address_wins_over_a_kept_one_and_the_running_pod_moves() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    after = NODE + pods_toml('name = "b"', 'name = "c"', 'name = "d"\nip = "10.244.1.11"')
    _, kept = reloaded(before, after)
    assert ips(kept) == {"b": "10.244.1.10", "c": "10.244.1.12", "d": "10.244.1.11"}


def test_a_kept_address_that_became_reserved_or_changed_segment_is_reallocated() -> None:
    before = NODE + pods_toml('name = "a"', 'name = "b"', 'name = "c"')
    # The host port now sits on b's address, and c moves to another segment.
    after = (NODE + '[host_port]\naddress = "10.244.1.11"\n'
             + '[[segments]]\nname = "blue"\ncidr = "10.245.1.0/24"\n'
             + pods_toml('name = "a"', 'name = "b"', 'name = "c"\nsegment = "blue"'))
    _, kept = reloaded(before, after)
    assert ips(kept) == {"a": "10.244.1.10", "b": "10.244.1.12", "c": "10.245.1.10"}


def test_reloading_the_same_file_with_previous_changes_nothing() -> None:
    text = (NODE + UPLINK + pods_toml(*(f'name = "p{i}"' for i in range(5)))
            + service('name = "a"', 'type = "NodePort"', PORT) + service('name = "b"', PORT))
    assert parse_topology(text, previous=parse_topology(text)) == parse_topology(text)


def node_port_service(name: str, *extra: str) -> str:
    return service(f'name = "{name}"', 'type = "NodePort"', *extra,
                   'ports = [ { name = "http", port = 80 } ]')


def addresses(topology) -> dict[str, tuple[str, int]]:
    return {s.name: (str(s.cluster_ip), s.ports[0].node_port) for s in topology.services}


def test_services_that_stay_keep_their_cluster_ips_and_node_ports() -> None:
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b", "c"))
    after = NODE + UPLINK + node_port_service("b") + node_port_service("c")
    fresh, kept = reloaded(before, after)
    assert addresses(parse_topology(before)) == {
        "a": ("10.96.0.10", 30000), "b": ("10.96.0.11", 30001), "c": ("10.96.0.12", 30002)}
    assert addresses(fresh) == {"b": ("10.96.0.10", 30000), "c": ("10.96.0.11", 30001)}
    assert addresses(kept) == {"b": ("10.96.0.11", 30001), "c": ("10.96.0.12", 30002)}
    assert kept.services == parse_topology(before).services[1:]


def test_a_new_service_listed_first_does_not_take_what_a_staying_one_has() -> None:
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b"))
    after = NODE + UPLINK + node_port_service("n") + node_port_service("b")
    _, kept = reloaded(before, after)
    assert addresses(kept) == {"n": ("10.96.0.10", 30000), "b": ("10.96.0.11", 30001)}


def test_explicit_cluster_ip_and_node_port_win_and_the_running_service_moves() -> None:
    before = NODE + UPLINK + "".join(node_port_service(n) for n in ("a", "b", "c"))
    after = (NODE + UPLINK + node_port_service("b") + node_port_service("c")
             + service('name = "d"', 'type = "NodePort"', 'cluster_ip = "10.96.0.11"',
                       'ports = [ { port = 81, node_port = 30002 } ]'))
    _, kept = reloaded(before, after)
    # d takes b's cluster IP and c's node port; each of them moves only what it lost.
    assert addresses(kept) == {"b": ("10.96.0.10", 30001), "c": ("10.96.0.12", 30000),
                               "d": ("10.96.0.11", 30002)}


def test_a_node_port_follows_its_port_name_and_protocol_not_its_number() -> None:
    before = NODE + UPLINK + service(
        'name = "s"', 'type = "NodePort"',
        'ports = [ { name = "http", port = 80 }, { name = "dns", port = 53, protocol = "udp" } ]')
    after = NODE + UPLINK + service(
        'name = "s"', 'type = "NodePort"',
        'ports = [ { name = "web", port = 443 }, { name = "http", port = 8080 }, '
        '{ name = "dns", port = 53, protocol = "udp" } ]')
    fresh, kept = reloaded(before, after)
    assert [(p.name, p.node_port) for p in parse_topology(before).services[0].ports] == [
        ("http", 30000), ("dns", 30000)]
    assert [(p.name, p.node_port) for p in fresh.services[0].ports] == [
        ("web", 30000), ("http", 30001), ("dns", 30000)]
    assert [(p.name, p.node_port) for p in kept.services[0].ports] == [
        ("web", 30001), ("http", 30000), ("dns", 30000)]


def test_a_service_that_stops_being_a_node_port_gives_its_node_ports_up() -> None:
    before = NODE + UPLINK + node_port_service("a") + node_port_service("b")
    after = NODE + UPLINK + service('name = "a"', PORT) + node_port_service("n")
    _, kept = reloaded(before, after)
    assert [p.node_port for p in kept.services[0].ports] == [None]
    assert addresses(kept) == {"a": ("10.96.0.10", None), "n": ("10.96.0.11", 30000)}


def test_an_applied_pod_whose_address_another_entry_asks_for_moves() -> None:
    # The same rule as on a reload: the explicit address wins, the re-applied pod is reallocated.
    text = '[[pods]]\nname = "web-1"\n[[pods]]\nname = "x"\nip = "10.244.1.10"\n'
    web1, x = parse_fragment(text, "f.toml", RUNNING).pods
    assert RUNNING.pod("web-1").ip == IPv4Address("10.244.1.10")
    assert (web1.ip, x.ip) == (IPv4Address("10.244.1.12"), IPv4Address("10.244.1.10"))

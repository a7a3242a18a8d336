"""The topology loader: accepted files, derived values, and an exact key path for every mistake."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vswitch import model
from vswitch.config import (
    ConfigError,
    load_topology,
    parse_topology,
)

from .config_support import (
    CONFIG_DIR,
    ISSUE_EXAMPLE,
    NODE,
    errors_of,
    only_error,
    pods_toml,
)

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
    assert pod.netns == model.netns_name("lab1", "default", "p") == "vsw-lab1.default.p"
    assert pod.tap == model.kernel_name("vsp", "lab1", "default", "p")


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


@pytest.mark.parametrize("section", ["networks"])
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
    assert topology.pods[0].netns == f"vsw-{node_name}.default.{first}"


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
        tap = model.kernel_name("vsp", "lab1", "default", pod)
        if tap in seen:
            first, second = seen[tap], pod
            break
        seen[tap] = pod
    else:
        pytest.fail("no collision found; the hash is longer than this test assumes")
    path, reason = only_error(NODE + pods_toml(f'name = "{first}"', f'name = "{second}"'))
    assert path == "pods[1].name"
    assert f"derived TAP name {tap!r} collides with pods[0]" in reason

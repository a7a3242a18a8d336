"""Topologies and helpers the loader's tests share: the example files and error collectors."""
from __future__ import annotations

from pathlib import Path

import pytest

from vswitch.config import ConfigError, parse_topology

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


def pods_toml(*entries: str) -> str:
    return "".join(f"[[pods]]\n{entry}\n" for entry in entries)


BLUE = """\
[[segments]]
name = "blue"
cidr = "10.245.1.0/24"
"""


def route(dst: str, via: str) -> str:
    return f'[[routes]]\ndst = "{dst}"\nvia = "{via}"\n'


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
cluster_ip = "10.96.0.20"
selector = { app = "web" }
type = "NodePort"
session_affinity = "ClientIP"
ports = [ { name = "http", protocol = "tcp", port = 80, target_port = 8080, node_port = 30080 } ]
"""

UPLINK = '[uplink]\naddress = "192.0.2.2/24"\ngateway = "192.0.2.1"\n'


def service(*lines: str) -> str:
    return "\n[[services]]\n" + "\n".join(lines) + "\n"


# The running node that runtime changes and reloads are checked against.
RUNNING = parse_topology(NODE + UPLINK + '[[pods]]\nname = "web-1"\nlabels = { app = "web" }\n'
                         '[[pods]]\nname = "client"\nip = "10.244.1.11"\n'
                         + service('name = "web"', 'selector = { app = "web" }',
                                   'type = "NodePort"',
                                   'ports = [ { name = "http", port = 80, target_port = 8080 } ]'))

SVC = 'name = "s"'

PORT = 'ports = [ { port = 80 } ]'

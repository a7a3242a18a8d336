"""Fixtures for the sans-I/O tests: a small topology and switches wired to memory-free port specs."""
from __future__ import annotations

import pytest

from vswitch import accel as accel_impls
from vswitch.config import parse_topology
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.core.switch import Switch

TOPOLOGY = """
[node]
name = "unit"
pod_cidr = "10.244.1.0/24"

[dataplane]
fdb_aging = 300
mac_limit = 4

[[pods]]
name = "a"
[[pods]]
name = "b"
[[pods]]
name = "c"
ip = "10.244.1.50"
"""


@pytest.fixture
def topology():
    return parse_topology(TOPOLOGY, "unit.toml")


def make_switch(topology, accel_name="pure", vnet_hdr=True, flow_cache_capacity=65536):
    switch = Switch(topology, accel_impls.load(accel_name), flow_cache_capacity=flow_cache_capacity)
    for port_id, pod in enumerate(topology.pods, start=2):
        switch.add_port(PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, vnet_hdr,
                                 device=pod.tap))
    host = topology.host_port
    switch.add_port(PortSpec(1, "host", PortKind.HOST, host.mac, host.address.ip, vnet_hdr,
                             device=host.name))
    return switch


@pytest.fixture(params=["native", "pure"])
def accel_name(request):
    return request.param


@pytest.fixture
def switch(topology, accel_name):
    return make_switch(topology, accel_name)

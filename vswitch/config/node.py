"""``[node]`` and ``[host_port]``: the node's name, its default pod network and its host port.

``[node]`` is the only required section. Its ``pod_cidr`` makes the default segment, whose
gateway defaults to the first usable address and whose host port to the last one. The host port's
address stays reserved while the port is disabled, so that enabling it later does not move a pod.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Mapping

from vswitch import model
from vswitch.config.addresses import address_problem
from vswitch.config.names import dns_label_problem
from vswitch.config.reader import INVALID, REQUIRED, Marker, Reader
from vswitch.model import HostPort, Node

NODE_NAME_MAX = 20  # keeps namespace names and the host port's kernel name readable
NODE_KEYS = ("name", "pod_cidr", "gateway", "mtu")
AUTO = "auto"  # node.pod_cidr = "auto": the cluster store leases the subnet
AUTO_FIXED = ('cannot be given with node.pod_cidr = "auto": the subnet is leased at start-up, '
              "so no address in it can be written down")
HOST_PORT_KEYS = ("enabled", "address")


@dataclass(frozen=True)
class NodeDraft:
    """``[node]`` as written, defaults filled in; fields are INVALID where they are wrong."""

    name: str | Marker
    cidr: IPv4Network | Marker
    gateway: IPv4Address | Marker
    mtu: int | Marker
    mtu_given: bool = False  # the file sets node.mtu; otherwise an overlay lowers the default
    cidr_auto: bool = False  # pod_cidr = "auto": ``cidr`` is resolved with [cluster] (see auto)

    def build(self) -> Node:
        assert isinstance(self.name, str) and isinstance(self.cidr, IPv4Network)
        assert isinstance(self.gateway, IPv4Address) and isinstance(self.mtu, int)
        return Node(name=self.name, pod_cidr=self.cidr, gateway=self.gateway,
                    gateway_mac=model.mac_for_ip(self.gateway), mtu=self.mtu,
                    pod_cidr_auto=self.cidr_auto)


@dataclass(frozen=True)
class HostPortDraft:
    """``[host_port]`` with its address defaulted; fields are INVALID where they are wrong."""

    enabled: bool | Marker
    address: IPv4Address | Marker

    def build(self, node: Node) -> HostPort:
        assert isinstance(self.enabled, bool) and isinstance(self.address, IPv4Address)
        return HostPort(
            enabled=self.enabled,
            name=model.kernel_name("vsh", node.name),
            address=IPv4Interface(f"{self.address}/{node.pod_cidr.prefixlen}"),
            mac=model.mac_for_ip(self.address),
        )


def read_node(reader: Reader, document: Mapping[str, Any]) -> NodeDraft:
    table = reader.section(document, "node", required=True)
    if table is INVALID:
        return NodeDraft(INVALID, INVALID, INVALID, INVALID)
    reader.check_keys(table, "node", NODE_KEYS)

    name = reader.take(table, "node", "name", "a string", REQUIRED)
    if isinstance(name, str) and (problem := dns_label_problem(name, NODE_NAME_MAX)):
        name = reader.fail("node.name", problem)

    cidr = reader.take(table, "node", "pod_cidr", "a string", REQUIRED)
    auto = cidr == AUTO
    if auto:
        cidr = INVALID  # resolved by ``auto.resolve_auto_cidr`` once [cluster] is read
    elif isinstance(cidr, str):
        cidr = reader.parse_cidr(cidr, "node.pod_cidr")

    gateway = reader.take_address(table, "node", "gateway")
    if auto:
        if gateway is not None:
            reader.fail("node.gateway", AUTO_FIXED)
        gateway = INVALID
    elif gateway is None:
        gateway = model.first_host(cidr) if isinstance(cidr, IPv4Network) else INVALID
    elif isinstance(gateway, IPv4Address) and isinstance(cidr, IPv4Network):
        if problem := address_problem(gateway, cidr):
            gateway = reader.fail("node.gateway", problem)

    mtu = reader.take_mtu(table, "node", model.DEFAULT_MTU)
    assert mtu is not None
    return NodeDraft(name, cidr, gateway, mtu, mtu_given="mtu" in table, cidr_auto=auto)


def with_cidr(node: NodeDraft, cidr: IPv4Network | Marker) -> NodeDraft:
    """The node of ``pod_cidr = "auto"`` with its subnet, the gateway at its first address."""
    gateway = model.first_host(cidr) if isinstance(cidr, IPv4Network) else INVALID
    return dataclasses.replace(node, cidr=cidr, gateway=gateway)


def read_host_port(reader: Reader, document: Mapping[str, Any], node: NodeDraft) -> HostPortDraft:
    table = reader.section(document, "host_port", required=False)
    if table is INVALID:
        return HostPortDraft(INVALID, INVALID)
    reader.check_keys(table, "host_port", HOST_PORT_KEYS)
    enabled = reader.take(table, "host_port", "enabled", "a boolean", True)
    address = reader.take_address(table, "host_port", "address")
    cidr, gateway = node.cidr, node.gateway
    if not isinstance(cidr, IPv4Network):
        return HostPortDraft(enabled, INVALID if address is None else address)
    path = "host_port.address"
    if address is None:
        address = model.last_host(cidr)
        if address == gateway:
            return HostPortDraft(enabled, reader.fail(
                path,
                f"defaults to the last usable address {address}, which is node.gateway; "
                "set host_port.address to another address",
            ))
    elif node.cidr_auto:
        return HostPortDraft(enabled, reader.fail(path, AUTO_FIXED))
    elif isinstance(address, IPv4Address):
        if problem := address_problem(address, cidr):
            return HostPortDraft(enabled, reader.fail(path, problem))
        if address == gateway:
            return HostPortDraft(enabled, reader.fail(path, f"{address} is node.gateway"))
    return HostPortDraft(enabled, address)

"""Whether an address can be a host in a network, worded the way the user wrote that network.

Gateways, pods, host port, static routes' next hops, the uplink and services all ask the same
question of an address, so the wording of its answer is written once here.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from vswitch import model


def segment_label(name: str, cidr: IPv4Network) -> str:
    """How messages name a segment: the default one by the key the user wrote for it."""
    if name == model.DEFAULT_SEGMENT:
        return f"node.pod_cidr {cidr}"
    return f"segment {name} {cidr}"


def address_problem(ip: IPv4Address, cidr: IPv4Network, where: str | None = None) -> str | None:
    """Why ``ip`` cannot be a host address in ``cidr``, or None; ``where`` names ``cidr``."""
    if ip not in cidr:
        return f"{ip} is outside {where or segment_label(model.DEFAULT_SEGMENT, cidr)}"
    if ip == cidr.network_address:
        return f"{ip} is the network address of {cidr}"
    if ip == cidr.broadcast_address:
        return f"{ip} is the broadcast address of {cidr}"
    return None

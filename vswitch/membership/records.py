"""A node's record in the cluster store: what it publishes about itself, as JSON.

The record is the only thing nodes tell each other, so its format is a wire format between
daemons of different versions: fields are added, never renamed, and a reader tolerates what older
writers wrote (``ready_endpoints`` was once a list of ``"IP:PORT"`` strings; it is now a list of
objects with the pod's name, address, labels and named ports, which service selection on the
other nodes needs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Mapping

from vswitch.model import DEFAULT_NAMESPACE


@dataclass(frozen=True)
class EndpointRecord:
    """One ready pod of a node, as the other nodes' service selection needs it: its name, address,
    labels, named ports (``{"http": ("tcp", 8080)}``) and namespace (services select pods of
    their own namespace only; a record without one is from a version without namespaces, whose
    pods are all in "default")."""

    name: str
    ip: IPv4Address
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    namespace: str = DEFAULT_NAMESPACE

    def __hash__(self) -> int:
        return hash((self.name, self.ip))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "ip": str(self.ip),
            "labels": dict(sorted(self.labels.items())),
            "ports": {name: {"protocol": protocol, "port": number}
                      for name, (protocol, number) in sorted(self.ports.items())},
        }

    @classmethod
    def from_data(cls, data: Any) -> EndpointRecord:
        """An endpoint object, or the older form of a bare ``"IP[:PORT]"`` string (an address
        without labels or named ports: it is selected by no selector, but routed all the same)."""
        if isinstance(data, str):
            address = data.rpartition(":")[0] if data.count(":") == 1 else data
            return cls(name=address, ip=IPv4Address(address))
        if not isinstance(data, dict):
            raise TypeError(f"an endpoint must be an object, not {data!r}")
        labels = data.get("labels", {})
        ports = data.get("ports", {})
        if not isinstance(labels, dict) or not isinstance(ports, dict):
            raise TypeError(f"malformed endpoint {data!r}")
        return cls(
            name=str(data["name"]),
            ip=IPv4Address(data["ip"]),
            labels={str(k): str(v) for k, v in labels.items()},
            ports={str(name): (str(port["protocol"]), int(port["port"]))
                   for name, port in ports.items()},
            namespace=str(data.get("namespace", DEFAULT_NAMESPACE)),
        )


@dataclass(frozen=True)
class NodeRecord:
    """What a node publishes about itself: where its pods are and how to reach them."""

    name: str
    pod_cidr: IPv4Network
    address: IPv4Address  # underlay
    vtep_mac: str
    ready_endpoints: tuple[EndpointRecord, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps({
            "name": self.name,
            "pod_cidr": str(self.pod_cidr),
            "address": str(self.address),
            "vtep_mac": self.vtep_mac,
            "ready_endpoints": [endpoint.to_dict() for endpoint in self.ready_endpoints],
        }, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        """Parse a stored record; raises ValueError on anything malformed."""
        try:
            data = json.loads(raw)
            return cls(
                name=str(data["name"]),
                pod_cidr=IPv4Network(data["pod_cidr"]),
                address=IPv4Address(data["address"]),
                vtep_mac=str(data["vtep_mac"]),
                ready_endpoints=tuple(EndpointRecord.from_data(e)
                                      for e in data.get("ready_endpoints", ())),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed node record: {exc!r}") from exc

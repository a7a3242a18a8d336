"""What the core knows about a port: identity, the addresses allowed behind it, its framing."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address

VNET_HDR_LEN = 10  # struct virtio_net_hdr, as set with TUNSETVNETHDRSZ


class PortKind(enum.Enum):
    POD = "pod"  # a pod's eth0; port security pins its MAC and IP
    HOST = "host"  # the node's own TAP in the root namespace; pinned the same way
    MEMORY = "memory"  # an in-process test port; behaves like a pod port


@dataclass(frozen=True, slots=True)
class PortSpec:
    id: int
    name: str  # pod name, or "host" for the host port
    kind: PortKind
    mac: str  # the only source MAC accepted from this port
    ip: IPv4Address  # the only source IPv4 address accepted from this port
    vnet_hdr: bool  # frames read from / written to this port carry a virtio-net header
    mtu: int = 1500
    device: str = ""  # kernel device name, for display

"""What the core knows about a port: identity, the addresses allowed behind it, its framing."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address

VNET_HDR_LEN = 10  # struct virtio_net_hdr, as set with TUNSETVNETHDRSZ
# struct virtio_net_hdr_v1_hash_tunnel: on a node whose uplink carries VXLAN super-frames (UDP-tunnel
# GSO), every port uses it, so that frames pass between ports without converting their headers.
VNET_TUNNEL_HDR_LEN = 24


class PortKind(enum.Enum):
    POD = "pod"  # a pod's eth0; port security pins its MAC and IP
    HOST = "host"  # the node's own TAP in the root namespace; pinned the same way
    MEMORY = "memory"  # an in-process test port; behaves like a pod port
    UPLINK = "uplink"  # the node's port to the outside world; any source may arrive on it


@dataclass(frozen=True, slots=True)
class PortSpec:
    id: int
    name: str  # pod name, or "host" for the host port
    kind: PortKind
    mac: str  # the only source MAC accepted from this port (when port_security is on)
    ip: IPv4Address  # the only source IPv4 address accepted from this port
    vnet_hdr: bool  # frames read from / written to this port carry a virtio-net header
    mtu: int = 1500
    device: str = ""  # kernel device name, for display
    port_security: bool = True
    segment: int = 0  # index into Topology.all_segments(): the L2 segment this port belongs to
    vnet_hdr_len: int = VNET_HDR_LEN  # the virtio-net header's size, when the port has one
    # Derived once here so that the packet path compares bytes, not text.
    mac_bytes: bytes = field(init=False, repr=False, compare=False)
    ip_bytes: bytes = field(init=False, repr=False, compare=False)
    l2_offset: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac_bytes", bytes(int(p, 16) for p in self.mac.split(":")))
        object.__setattr__(self, "ip_bytes", IPv4Address(self.ip).packed)
        object.__setattr__(self, "l2_offset", self.vnet_hdr_len if self.vnet_hdr else 0)

"""What a stage sees: the packet being handled and the environment (tables, time, counters)."""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from ipaddress import IPv4Network
from types import ModuleType
from typing import Any, Mapping, Sequence

from vswitch.core.counters import StageCounters, counter_name
from vswitch.core.port_spec import PortSpec
from vswitch.core.trace import Trace
from vswitch.core.actions import Drop
from vswitch.tables.conntrack import ConntrackTable
from vswitch.tables.fdb import Fdb, FdbEntry
from vswitch.tables.fib import Fib, Route
from vswitch.tables.fragments import FragmentTable
from vswitch.tables.icmp_ratelimit import IcmpRateLimiter
from vswitch.tables.neighbors import Neighbor, NeighborTable
from vswitch.tables.overlay import OverlayTable
from vswitch.tables.policies import PolicyTable
from vswitch.tables.services import ServiceTable


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as the packet path needs it: bytes, not text."""

    index: int
    name: str
    cidr: IPv4Network
    gateway_ip: bytes
    gateway_mac: bytes
    mtu: int


class NatContext:
    """What the NAT stages need besides the routing tables. The switch fills it in; a topology
    without services or uplink leaves the defaults (no services, no masquerade)."""

    def __init__(self, conntrack: ConntrackTable | None = None,
                 services: ServiceTable | None = None, cluster_cidr: IPv4Network | None = None,
                 hairpin_address: bytes | None = None, uplink_segment: int | None = None,
                 node_address: bytes | None = None, overlay_snat_address: bytes | None = None):
        self.conntrack = conntrack if conntrack is not None else ConntrackTable()
        self.services = services if services is not None else ServiceTable(random.Random(0))
        self.cluster_cidr = cluster_cidr
        self.hairpin_address = hairpin_address
        self.uplink_segment = uplink_segment
        self.node_address = node_address
        # With an overlay: the source a connection from outside is SNATed to when its backend is
        # another node's pod. The node's pod gateway, inside its pod CIDR, which every node
        # routes back here through the overlay (the node address would come back masqueraded).
        self.overlay_snat_address = overlay_snat_address
        # External IPs of services inside the uplink network: the node answers ARP for them.
        self.announced: frozenset[bytes] = frozenset()
        # The network policies enforced here, and their drop and cut counters.
        self.policies = PolicyTable()
        # Fragmented datagrams of translated connections: how each first fragment went, and the
        # later fragments held until it comes.
        self.fragments = FragmentTable()

    @property
    def reply_pairs(self) -> Mapping[tuple[bytes, bytes], int]:
        """(source, destination) address pairs that replies of translated connections carry:
        L2 traffic between such a pair must go through conntrack, and is never cached. The
        connection table keeps them as its entries come and go."""
        return self.conntrack.reply_pairs

    @property
    def generation(self) -> int:
        """Grows when a reply pair appears (see ``ConntrackTable.generation``) and when the
        policies change."""
        return self.conntrack.generation + self.policies.generation


class Packet:
    """One received frame and what the stages have learned about it so far.

    ``data`` is the buffer exactly as read from the port; ``l2_offset`` is where the Ethernet header
    starts in it (after the virtio-net header, if the port has one), ``l3_offset`` where the
    Ethernet payload starts. Fields that name a port hold its id and end in ``_port``. Parsed
    headers are ``wire.views`` (read with struct; construct declares them).
    """

    # What a stage has not set yet reads as the class's default: a packet is made per frame on
    # the slow path, and only the fields ``__init__`` sets cost anything. Defaults are immutable
    # (stages assign fields, never change them in place).
    vnet: Any = None
    eth: Any = None
    arp: Any = None
    ip: Any = None
    # Set by the stage that makes a decision depending only on the flow key and on tables
    # covered by the generation number; the switch then memoises it in the flow cache.
    cacheable = False
    src_entry: FdbEntry | None = None
    dst_entry: FdbEntry | None = None
    # Routing state, filled in by the ip4-* stages.
    route: Route | None = None
    neighbor: Neighbor | None = None
    egress_mtu = 0
    icmp_error: tuple[int, int, bytes] | None = None  # type, code, 4 "rest" bytes
    pending_drop: Drop | None = None
    out_packets: Sequence[bytes] = ()  # IPv4 packets (rewritten, maybe fragments) to send
    rewrite: bytes | None = None  # new Ethernet dst+src for a cacheable routed decision
    # Connection tracking and NAT, filled in by the conntrack stages.
    ip_packet: bytes | None = None  # the IPv4 packet after NAT (None: as received)
    ct: Any = None  # (conntrack Entry, Direction) once the packet is tracked
    flow: Any = None  # its FlowTuple, once computed
    flow_checked = False
    tcp_flags: int | None = None
    l2_out_port: int | None = None  # the port l2-forward chose, for l2-conntrack
    l2_flood_ports: tuple[int, ...] = ()  # where l2-forward floods an unknown unicast, if judged
    # Set when a translated packet's decision may be cached per connection: the output port.
    conn_out_port: int | None = None
    # Network policy: set by ip4-conntrack for a packet of no tracked connection (it may need a
    # verdict); by ip4-lookup when ip4-masquerade follows the verdict; by ip4-policy when it let
    # the packet pass untracked, which no cache may remember.
    new_connection = False
    masquerade = False
    policy_judged = False
    # Set by vxlan-encap: how the packet leaves for another node (a ``tunnel.Encapsulation``,
    # which a cacheable decision keeps). Set by vxlan-decap: the node the packet came from;
    # such a decision is never cached under the key of the frame as received (the outer one).
    encap: Any = None
    decapsulated_from: Any = None
    out_vnet: bytes | None = None  # the virtio-net header of what leaves, if not data's

    def __init__(self, port: PortSpec, data: bytes, l2_offset: int, trace: Trace | None = None):
        self.port = port
        self.data = data
        self.l2_offset = l2_offset
        self.l3_offset = l2_offset + 14
        self.trace = trace

    @property
    def frame(self) -> bytes:
        """The Ethernet frame without the virtio-net header (a copy; for slow-path use only)."""
        return self.data[self.l2_offset:]

    @property
    def vnet_bytes(self) -> bytes:
        return self.data[: self.l2_offset]


class Env:
    """Tables and settings the stages consult. ``commit`` is False for dry-run traces, which must
    leave every table as it was."""

    def __init__(self, *, fdb: Fdb, fib: Fib, neighbors: NeighborTable,
                 icmp_limiter: IcmpRateLimiter, ports: dict[int, PortSpec],
                 segments: list[SegmentInfo], segment_ports: dict[int, tuple[int, ...]],
                 accel: ModuleType, counters: StageCounters, commit: bool = True,
                 nat: NatContext | None = None, overlay: OverlayTable | None = None):
        self.fdb = fdb
        self.fib = fib
        self.neighbors = neighbors
        self.icmp_limiter = icmp_limiter
        self.ports = ports
        self.segments = segments
        self.segment_ports = segment_ports
        self.local_ips = {s.gateway_ip: s.index for s in segments}
        # Unicast-looking addresses a router never routes: 0.0.0.0 and each segment's broadcast
        # address (multicast and above are told by their first byte).
        self.unroutable = frozenset([bytes(4)] + [s.cidr.broadcast_address.packed
                                                   for s in segments])
        self.accel = accel
        self.counters = counters
        # ``count(member, n=1)``: the counters' own ``add``, bound here so that a stage's count
        # is one call, not two.
        self.count = counters.add
        self.commit = commit
        self.nat = nat if nat is not None else NatContext()
        self.overlay = overlay if overlay is not None else OverlayTable(fib, None, None)
        self.now = 0.0

    @property
    def conntrack(self) -> ConntrackTable:
        return self.nat.conntrack

    @property
    def services(self) -> ServiceTable:
        return self.nat.services

    def dry_run_copy(self, counters: StageCounters) -> "Env":
        env = Env(fdb=self.fdb, fib=self.fib, neighbors=self.neighbors,
                  icmp_limiter=self.icmp_limiter, ports=self.ports, segments=self.segments,
                  segment_ports=self.segment_ports, accel=self.accel, counters=counters,
                  commit=False, nat=self.nat, overlay=self.overlay)
        env.now = self.now
        return env

    def drop(self, pkt: Packet, member: enum.Enum) -> tuple[Drop]:
        return (self.drop_action(pkt, member),)

    def drop_action(self, pkt: Packet, member: enum.Enum) -> Drop:
        self.counters.add(member)
        stage = self.counters.stage_of(member)
        if pkt.trace is not None:
            pkt.trace.note(stage, f"drop: {member.value}")
        return Drop(stage, counter_name(member))

    def port_name(self, port_id: int) -> str:
        spec = self.ports.get(port_id)
        return spec.name if spec else f"#{port_id}"

    def segment_of(self, pkt: Packet) -> SegmentInfo:
        return self.segments[pkt.port.segment]

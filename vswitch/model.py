"""The desired state of one node, as frozen values.

The config loader turns a TOML topology into these objects after validating all of it; the runtime
and the dataplane only ever read them. Kernel object names (namespaces, TAP devices) and MAC
addresses are derived here, deterministically, so that a restart after a crash finds exactly what an
earlier run of the same topology created.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType
from typing import Mapping

IFNAMSIZ = 15  # the kernel's limit on interface names, without the trailing NUL

DEFAULT_MTU = 1500
DEFAULT_FDB_AGING = 300.0
DEFAULT_MAC_LIMIT = 64
DEFAULT_SOCKET_DIR = "/run/vswitch"
DEFAULT_STATE_DIR = "/run/vswitch"


def mac_for_ip(ip: IPv4Address) -> str:
    """The MAC Kubernetes' bridge plugins give an address: 0a:58 followed by the IPv4 bytes.

    Locally administered, unicast, stable across restarts, and readable: a MAC in a capture tells
    which IP owns it.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)


def short_hash(*parts: str, length: int = 4) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def kernel_name(prefix: str, *parts: str) -> str:
    """A readable interface name that fits IFNAMSIZ and is unique per (prefix, parts).

    ``prefix`` plus as much of the last part as fits, then a short hash of all parts, so that two
    long pod names with a common start still get different names.
    """
    digest = short_hash(prefix, *parts)
    room = IFNAMSIZ - len(prefix) - len(digest) - 1
    stem = "".join(ch for ch in parts[-1] if ch.isalnum())[: max(room, 0)]
    name = f"{prefix}{stem}-{digest}" if stem else f"{prefix}{digest}"
    assert len(name) <= IFNAMSIZ, name
    return name


DEFAULT_NAMESPACE = "default"
# Namespaces every cluster has, whether the file declares them or not (as in Kubernetes).
BUILTIN_NAMESPACES = ("default", "kube-system")
# The label Kubernetes puts on every namespace, so that a namespace selector can name one.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def netns_name(node: str, namespace: str, pod: str) -> str:
    """Network namespace names are file names under /run/netns (no IFNAMSIZ limit); kept
    readable. Node, namespace and pod names are DNS labels, which have no dots, so the dots
    keep two nodes' (or namespaces') names apart: "vsw-a.default.b-c" is never "vsw-a-b.default.c".
    """
    return f"vsw-{node}.{namespace}.{pod}"


def pod_key(namespace: str, name: str) -> str:
    """How the node names a pod in ports, counters, traces and the control socket: its name in
    the default namespace, NAMESPACE/NAME in any other, so that a file without namespaces reads
    as before and two pods of one name in different namespaces stay apart."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"


@dataclass(frozen=True)
class Namespace:
    """A Kubernetes namespace: a scope for pod and service names, and labels that network
    policies' namespace selectors match. ``labels`` always holds NAMESPACE_NAME_LABEL."""

    name: str
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def namespace_labels(name: str, labels: Mapping[str, str] | None = None) -> Mapping[str, str]:
    merged = dict(labels or {})
    merged[NAMESPACE_NAME_LABEL] = name
    return MappingProxyType(merged)


@dataclass(frozen=True)
class Container:
    """A process of a pod: it runs in the pod's namespace and shares its IP and port space."""

    name: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Named container ports (name -> (protocol, port)), so a service may target a port by name.
    ports: Mapping[str, tuple[str, int]] = field(default_factory=lambda: MappingProxyType({}))


DEFAULT_SEGMENT = "default"  # the segment made of [node] pod_cidr
UPLINK_SEGMENT = "uplink"  # the router's leg towards the outside world


@dataclass(frozen=True)
class Pod:
    name: str
    ip: IPv4Address
    mac: str
    netns: str
    tap: str  # the TAP's name while it is still in the host namespace; inside the pod it is eth0
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    containers: tuple[Container, ...] = ()
    ready: bool = True
    segment: str = DEFAULT_SEGMENT  # the L2 segment (pod network) the pod is attached to
    mtu: int | None = None  # eth0's MTU; None: the segment's
    namespace: str = DEFAULT_NAMESPACE

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)

    def named_ports(self) -> Mapping[str, tuple[str, int]]:
        """Its containers' named ports (the first container naming a port wins)."""
        merged: dict[str, tuple[str, int]] = {}
        for container in self.containers:
            for name, binding in container.ports.items():
                merged.setdefault(name, binding)
        return merged


@dataclass(frozen=True)
class RemotePod:
    """A pod of another node, as that node's record in the cluster store describes it: what
    selecting service endpoints needs (address, labels, named ports, readiness), nothing of how
    to build it. The overlay routes its address to its node."""

    node: str
    name: str
    ip: IPv4Address
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ports: Mapping[str, tuple[str, int]] = field(default_factory=lambda: MappingProxyType({}))
    ready: bool = True
    namespace: str = DEFAULT_NAMESPACE

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.name)

    def named_ports(self) -> Mapping[str, tuple[str, int]]:
        return self.ports


@dataclass(frozen=True)
class Segment:
    """One pod network on the node: an L2 broadcast domain whose gateway the daemon owns.

    Pods of one segment reach each other by switching; pods of different segments only through
    the router, which decrements TTL and rewrites MACs, exactly as between real subnets.
    """

    name: str
    cidr: IPv4Network
    gateway: IPv4Address
    gateway_mac: str
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class StaticRoute:
    dst: IPv4Network
    via: IPv4Address  # a next hop on one of the node's segments
    segment: str  # the segment ``via`` lives on, resolved by the loader


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidr: IPv4Network
    gateway: IPv4Address
    gateway_mac: str
    mtu: int = DEFAULT_MTU
    # ``pod_cidr = "auto"``: the cluster store leases the subnet. Until the daemon passes the
    # leased one to the loader (``parse_topology(..., pod_cidr=...)``), ``pod_cidr`` is a stand-in
    # of the same size (the pool's first subnet no static peer has), which validates the file.
    pod_cidr_auto: bool = False


@dataclass(frozen=True)
class HostPort:
    """The TAP in the host's root namespace that lets the node itself reach its pods without NAT."""

    enabled: bool
    name: str
    address: IPv4Interface  # host side: an address inside the pod CIDR, with its prefix length
    mac: str


@dataclass(frozen=True)
class Dataplane:
    offloads: bool = True  # IFF_VNET_HDR + checksum/TSO offloads on every TAP
    fdb_aging: float = DEFAULT_FDB_AGING  # seconds without traffic before a MAC is forgotten
    mac_limit: int = DEFAULT_MAC_LIMIT  # learned MACs per port; more are dropped and counted
    burst: int = 64  # frames drained from a port per wake-up
    accel: str = "native"  # "native" or "pure"


@dataclass(frozen=True)
class Control:
    socket: str  # path of the control socket (mode 0600)
    state_dir: str = DEFAULT_STATE_DIR  # where the journal of created kernel objects lives
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint; None: no endpoint


@dataclass(frozen=True)
class Topology:
    source: str  # the file it was loaded from, for messages
    node: Node
    pods: tuple[Pod, ...]
    host_port: HostPort
    dataplane: Dataplane
    control: Control
    # segments[0] is always the node's own pod_cidr segment, named DEFAULT_SEGMENT; the loader
    # fills it in, and a topology built by hand without segments gets it from ``all_segments``.
    segments: tuple[Segment, ...] = ()
    routes: tuple[StaticRoute, ...] = ()
    cluster: "Cluster | None" = None
    uplink: "Uplink | None" = None
    services: tuple["Service", ...] = ()
    # Every namespace the node knows: the declared ones and the built-in ones, by name.
    namespaces: tuple[Namespace, ...] = ()
    network_policies: tuple["NetworkPolicy", ...] = ()

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        """A namespace's labels; one the file does not declare has only its name label."""
        for namespace in self.namespaces:
            if namespace.name == name:
                return namespace.labels
        return namespace_labels(name)

    # The overlay and the peers are kept inside the uplink and the cluster, whose settings a
    # reload compares as a whole: a change to them needs a restart, as to every node-level key.
    @property
    def overlay(self) -> "Overlay | None":
        """The VXLAN overlay to the other nodes; it rides on (and is kept with) the uplink."""
        return self.uplink.overlay if self.uplink is not None else None

    @property
    def peers(self) -> tuple["Peer", ...]:
        """The static members of the cluster (``[[peers]]``), kept with the cluster settings."""
        return self.cluster.peers if self.cluster is not None else ()

    def all_segments(self) -> tuple[Segment, ...]:
        if self.segments:
            return self.segments
        node = self.node
        return (Segment(DEFAULT_SEGMENT, node.pod_cidr, node.gateway, node.gateway_mac, node.mtu),)

    def uplink_segment(self) -> Segment | None:
        """The uplink as a segment of the router: its network, with the node's external address
        in the place of a gateway (the daemon owns it, answers ARP and ping for it). Its index is
        ``len(all_segments())``; pods never attach to it."""
        uplink = self.uplink
        if uplink is None:
            return None
        return Segment(UPLINK_SEGMENT, uplink.address.network, uplink.address.ip, uplink.mac,
                       uplink.mtu)

    def uplink_segment_index(self) -> int | None:
        return None if self.uplink is None else len(self.all_segments())

    def router_segments(self) -> tuple[Segment, ...]:
        """Every segment the router has a leg in: the pod segments, then the uplink's."""
        uplink = self.uplink_segment()
        return self.all_segments() + ((uplink,) if uplink is not None else ())

    def segment(self, name: str) -> Segment:
        for segment in self.all_segments():
            if segment.name == name:
                return segment
        raise KeyError(name)

    def segment_index(self, name: str) -> int:
        for index, segment in enumerate(self.all_segments()):
            if segment.name == name:
                return index
        raise KeyError(name)

    def pod_mtu(self, pod: Pod) -> int:
        return pod.mtu if pod.mtu is not None else self.segment(pod.segment).mtu

    def pod(self, key: str) -> Pod:
        """The pod of ``key`` (``Pod.key``: NAME in the default namespace, else NAMESPACE/NAME)."""
        for pod in self.pods:
            if pod.key == key:
                return pod
        raise KeyError(key)


def first_host(network: IPv4Network) -> IPv4Address:
    return next(network.hosts())


def last_host(network: IPv4Network) -> IPv4Address:
    return ipaddress.IPv4Address(int(network.broadcast_address) - 1)


# -- services (the pod-to-service and internet-to-service halves of the model) ------------------

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, as Kubernetes' sessionAffinityConfig default
DEFAULT_CONNTRACK_MAX = 262144
NODE_PORT_RANGE = (30000, 32767)


# -- several nodes: the overlay between them and how they learn of one another -----------------

DEFAULT_VNI = 1
VNI_MAX = 2**24 - 1  # a VNI is 24 bits (RFC 7348)
DEFAULT_VXLAN_PORT = 4789  # IANA's VXLAN port (RFC 7348), Linux's and flannel's default
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + the inner Ethernet header (14) on the uplink.
VXLAN_OVERHEAD = 50
STORE_STATIC = "static"  # membership from [[peers]] alone
STORE_ETCD = "etcd"
DEFAULT_LEASE_TTL = 10  # seconds
DEFAULT_NODE_PREFIX_LENGTH = 24  # the size of the subnet ``pod_cidr = "auto"`` leases
DEFAULT_CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Overlay:
    """This node's VXLAN tunnel endpoint (VTEP): its address is the uplink's."""

    # The inner source MAC of encapsulated frames; the loader's default is ``mac_for_ip`` of the
    # uplink address, so that every node derives every other node's VTEP MAC from its address.
    vtep_mac: str
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT  # the UDP destination port of every encapsulated packet
    mtu: int = DEFAULT_MTU - VXLAN_OVERHEAD  # the largest inner IPv4 packet


@dataclass(frozen=True)
class Peer:
    """Another node of the cluster, reached through the overlay."""

    name: str
    address: IPv4Address  # its underlay address: the outer destination of its packets
    pod_cidr: IPv4Network  # routed to it through the overlay
    vtep_mac: str  # the inner destination MAC of frames for it


@dataclass(frozen=True)
class Cluster:
    cidr: IPv4Network  # every pod address of the cluster: traffic leaving it is masqueraded
    service_cidr: IPv4Network  # where cluster IPs are allocated from
    # The source address a hairpinned connection is SNATed to (a backend reaching its own
    # service), so that the backend's reply comes back through the switch. Link-local, as OVN's.
    hairpin_address: IPv4Address = IPv4Address("169.254.169.5")
    conntrack_max: int = DEFAULT_CONNTRACK_MAX
    # Membership: "static" ([[peers]] only) or "etcd" (records under leases, plus [[peers]]).
    store: str = STORE_STATIC
    etcd_endpoints: tuple[str, ...] = ()  # "http://HOST:PORT" URLs of the etcd cluster
    lease_ttl: int = DEFAULT_LEASE_TTL  # seconds a node's record outlives its daemon
    node_prefix_length: int = DEFAULT_NODE_PREFIX_LENGTH  # what pod_cidr = "auto" leases
    peers: tuple[Peer, ...] = ()  # the static members besides this node
    # Cluster DNS: the zone, the service address it answers on (the loader's default is the
    # tenth address of the service CIDR), and where names outside the zone go: None for the
    # host's /etc/resolv.conf, () for none (such names are answered REFUSED).
    domain: str = DEFAULT_CLUSTER_DOMAIN
    dns_ip: IPv4Address | None = None  # None: DNS off
    dns_upstreams: tuple[IPv4Address, ...] | None = None


@dataclass(frozen=True)
class Uplink:
    """The node's port to the outside world; the daemon owns ``address`` on it."""

    address: IPv4Interface  # the node's external address, with the uplink network's prefix
    gateway: IPv4Address  # the far side: next hop for egress
    netns: str | None  # namespace holding the far side; None: the host's root namespace
    name: str  # the TAP's kernel name
    mac: str  # the MAC the daemon answers with for ``address``
    far_mac: str  # the MAC of the far side's interface (the TAP, as seen inside ``netns``)
    mtu: int = DEFAULT_MTU
    bridge: str | None = None  # a Linux bridge in ``netns`` the far side is a port of
    overlay: Overlay | None = None  # the VXLAN overlay carried over this uplink


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str  # "tcp" | "udp"
    port: int
    target_port: int | str  # a number, or the name of a container port of the endpoint pods
    node_port: int | None = None  # for type NodePort


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str = "default"
    cluster_ip: IPv4Address | None = None  # None: headless (accepted, not programmed)
    type: str = "ClusterIP"  # "ClusterIP" | "NodePort"
    ports: tuple[ServicePort, ...] = ()
    # Endpoints are the ready pods matching ``selector``, or the explicit ``endpoints`` when the
    # service has no selector (a selector-less service, as in Kubernetes).
    selector: Mapping[str, str] | None = None
    endpoints: tuple[IPv4Address, ...] = ()
    session_affinity: str = "None"  # "None" | "ClientIP"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    internal_traffic_policy: str = "Cluster"  # "Cluster" | "Local"
    external_ips: tuple[IPv4Address, ...] = ()
    load_balancer: str = "random"  # "random" | "maglev"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- network policy (networking.k8s.io/v1) -------------------------------------------------------

POLICY_INGRESS = "Ingress"
POLICY_EGRESS = "Egress"


@dataclass(frozen=True)
class LabelRequirement:
    """One matchExpressions entry: ``operator`` is In, NotIn, Exists or DoesNotExist."""

    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; an empty one selects everything."""

    match_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    match_expressions: tuple[LabelRequirement, ...] = ()


@dataclass(frozen=True)
class IPBlock:
    cidr: IPv4Network
    except_: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True)
class PolicyPeer:
    """One ``from``/``to`` entry: pods (``pod_selector`` and/or ``namespace_selector``) or an
    ``ip_block``. A pod selector alone picks pods of the policy's namespace; a namespace selector
    alone every pod of the namespaces it picks; both together the pods the first picks in the
    namespaces the second picks."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "tcp"  # "tcp" | "udp"
    port: int | str | None = None  # None: every port; a string: a named container port
    end_port: int | None = None  # with a numeric ``port``: the range port..end_port


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule: traffic from/to any of ``peers`` on any of ``ports``; an empty
    tuple of either means every peer or every port."""

    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    name: str
    namespace: str = DEFAULT_NAMESPACE
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    # The loader fills in Kubernetes' default: Ingress, plus Egress when there are egress rules.
    policy_types: tuple[str, ...] = (POLICY_INGRESS,)
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

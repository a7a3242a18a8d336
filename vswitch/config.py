"""Reading a TOML topology into the frozen model, after validating all of it.

Theory of operation: the loader is the only gate between a hand-written file and the system. It
reads the whole document, checks every key against the schema and records each mistake as a
(key path, reason) pair instead of stopping at the first, so that one run shows the user everything
to fix. Only a document without a single mistake becomes a ``Topology``; nothing here touches the
network, the clock or any state outside the file, which is what lets the daemon validate a reload
before it changes anything.

Rules:

* Key paths are written the way the user sees the file: ``node.pod_cidr``, ``pods[2].ip``,
  ``pods[0].containers[1].name``, ``pods[0].labels."app.kubernetes.io/name"``.
* Unknown keys are errors, never silently ignored, because a misspelt optional key would otherwise
  quietly fall back to its default.
* Pods without an ``ip`` get one deterministically (see ``allocation_order``), so the same file
  always yields the same addresses, MACs and kernel names, and a restart after a crash finds exactly
  what an earlier run created.
* A reload passes the running topology along (``previous``): a pod, service or node port that
  stays and has no explicit address keeps the one it runs with, if still valid and free, and
  only the rest are allocated around it. Explicit addresses of the file win over kept ones.
* Checks that depend on another value (a gateway inside the pod CIDR, say) run only when that value
  is itself valid; its own error already explains the problem, and a cascade would bury it.
* A node has one or more segments (pod networks): ``default`` is made of ``[node] pod_cidr``, and
  each ``[[segments]]`` entry adds one. Their CIDRs never overlap, so an address belongs to at most
  one segment and the router's connected routes are unambiguous. Each segment allocates its pods'
  addresses on its own, with the same rule as the default one.
* A static route's next hop must sit on a segment (that is how the router reaches it) and must not
  be a gateway (that would route the packet back to the router itself).
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import itertools
import math
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence

from vswitch import model
from vswitch.model import (
    Container,
    Control,
    Dataplane,
    HostPort,
    Node,
    Pod,
    Segment,
    StaticRoute,
    Topology,
)

NODE_NAME_MAX = 20  # keeps namespace names and the host port's kernel name readable
SEGMENT_NAME_MAX = 20  # segment names show in tables and traces; short keeps them aligned
POD_NAME_MAX = 40
DNS_LABEL_MAX = 63
MTU_MIN = 576  # the smallest datagram every IPv4 host must accept (RFC 791)
MTU_MAX = 9000  # a TAP frame carries the vnet header on top of the MTU; 9000 stays clear of 64 KiB reads
BURST_MAX = 1024
PREFIX_MIN = 8
PREFIX_MAX = 30  # a /31 or /32 has no room for a gateway and a pod
ALLOCATION_OFFSET = 10  # the first address handed to a pod without an explicit ip: network + 10
UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) minus the terminating NUL
ACCEL_CHOICES = ("native", "pure")
PROTOCOLS = ("tcp", "udp")
# The switch and the control socket call the host port "host" and the uplink "uplink"; a pod of
# either name would be indistinguishable from them in traces, counters and `vswitchctl trace`.
RESERVED_POD_NAMES = ("host", "uplink")

RESERVED_SECTIONS = ("peers", "networks")

TOP_LEVEL_KEYS = ("node", "host_port", "dataplane", "control", "segments", "routes", "pods",
                  "cluster", "uplink", "services")
# What a runtime change (``vswitchctl apply``) may carry: the things that come and go while the
# node runs. Everything else needs a restart.
FRAGMENT_KEYS = ("pods", "services")
NODE_KEYS = ("name", "pod_cidr", "gateway", "mtu")
HOST_PORT_KEYS = ("enabled", "address")
DATAPLANE_KEYS = ("offloads", "fdb_aging", "mac_limit", "burst", "accel")
CONTROL_KEYS = ("socket", "state_dir", "metrics")
SEGMENT_KEYS = ("name", "cidr", "gateway", "mtu")
ROUTE_KEYS = ("dst", "via")
POD_KEYS = ("name", "ip", "segment", "mtu", "labels", "ready", "containers")
CONTAINER_KEYS = ("name", "command", "env", "ports")
PORT_KEYS = ("name", "port", "protocol")
CLUSTER_KEYS = ("cidr", "service_cidr", "hairpin_address", "conntrack_max")
UPLINK_KEYS = ("address", "gateway", "netns", "mtu")
SERVICE_KEYS = ("name", "namespace", "cluster_ip", "type", "ports", "selector", "endpoints",
                "session_affinity", "affinity_timeout", "external_traffic_policy",
                "internal_traffic_policy", "external_ips", "load_balancer")
SERVICE_PORT_KEYS = ("name", "protocol", "port", "target_port", "node_port")
# The settings ``vswitchctl service set`` may change: the ones that do not move a frontend.
SERVICE_SETTABLE = ("session_affinity", "affinity_timeout", "external_traffic_policy",
                    "internal_traffic_policy", "load_balancer", "selector", "endpoints")

CONNTRACK_MAX_MIN = 1024
CONNTRACK_MAX_MAX = 4194304
AFFINITY_TIMEOUT_MAX = 86400  # one day, Kubernetes' upper bound for ClientIP affinity
SERVICE_TYPES = ("ClusterIP", "NodePort")
SESSION_AFFINITIES = ("None", "ClientIP")
TRAFFIC_POLICIES = ("Cluster", "Local")
LOAD_BALANCERS = ("random", "maglev")
HEADLESS = "None"  # cluster_ip = "None": a headless service, as Kubernetes writes it
NETNS_NAME_MAX = 255  # a file name under /run/netns
# Pod namespaces are "vsw-<node>-<pod>"; a far side named like one could be taken for a pod's
# leftover and removed by a cleanup.
POD_NETNS_PREFIX = "vsw-"

_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_PORT_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\Z")


class ConfigError(Exception):
    """A topology file that must not be applied, with every mistake found in it.

    ``path`` and ``reason`` describe the first mistake, ``errors`` lists all of them in the order
    they were found. A path is empty when the problem concerns the file as a whole (it cannot be
    read, or it is not TOML), and is then left out of the message.
    """

    file: str
    path: str
    reason: str
    errors: list[tuple[str, str]]

    def __init__(
        self,
        file: str,
        path: str,
        reason: str,
        *,
        errors: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        self.errors = list(errors) if errors else [(path, reason)]
        super().__init__(file, path, reason)

    @classmethod
    def collected(cls, file: str, errors: Sequence[tuple[str, str]]) -> ConfigError:
        path, reason = errors[0]
        return cls(file, path, reason, errors=errors)

    def __str__(self) -> str:
        return "\n".join(
            f"{self.file}: {path}: {reason}" if path else f"{self.file}: {reason}"
            for path, reason in self.errors
        )


def load_topology(path: str | os.PathLike[str], previous: Topology | None = None) -> Topology:
    """Read and validate a topology file; ``Topology.source`` is ``path`` as given.

    ``previous`` is the topology the node runs (on a reload): see ``parse_topology``.
    """
    source = os.fsdecode(path)
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"the file is not valid UTF-8 (byte {exc.start})") from None
    return parse_topology(text, source, previous)


def parse_topology(text: str, source: str = "<string>",
                   previous: Topology | None = None) -> Topology:
    """Validate a topology given as TOML text; ``source`` names it in messages and in the model.

    With ``previous`` (the topology the node runs), a pod, service or node port the file leaves
    without an explicit address keeps the one it has in ``previous`` while that is still valid
    and free, and only the rest are allocated. Kubernetes never renumbers a running pod or
    service, and a reload that did would delete and re-create pods merely because an earlier
    entry of the file went away. Without ``previous`` the file alone decides, as at start-up.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    reader = _Reader()
    topology = reader.read(document, source, previous)
    if reader.errors or topology is None:
        raise ConfigError.collected(source, reader.errors or [("", "invalid topology")])
    return topology


def allocation_order(cidr: IPv4Network) -> Iterator[IPv4Address]:
    """Usable addresses of ``cidr`` in the order pods without an explicit ``ip`` receive them.

    The order starts at network + 10, leaving the low addresses for hand-picked infrastructure
    (the gateway sits at network + 1 by default), runs up to the last usable address and then
    wraps around to network + 1. The caller skips addresses that are already taken.
    """
    base = int(cidr.network_address)
    last = cidr.num_addresses - 2  # the offset of the last usable address; the broadcast follows
    start = ALLOCATION_OFFSET if ALLOCATION_OFFSET <= last else 1
    for offset in itertools.chain(range(start, last + 1), range(1, start)):
        yield IPv4Address(base + offset)


class _Marker(enum.Enum):
    # A value that was reported as wrong; checks that depend on it are skipped.
    INVALID = "invalid"
    # Passed as a default: the key must be present.
    REQUIRED = "required"


INVALID = _Marker.INVALID
REQUIRED = _Marker.REQUIRED

_KINDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "a string": (str,),
        "a boolean": (bool,),
        "an integer": (int,),
        "a number": (int, float),
        "a table": (dict,),
        "an array": (list,),
        "an array of tables": (list,),  # the entries are checked one by one, with their index
    }
)


def _type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    # bool before int: a TOML boolean is a Python int as well.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
        (datetime, "datetime"),
        (date, "date"),
        (time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is_kind(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "a boolean"
    return isinstance(value, _KINDS[kind])


def _key(base: str, key: str) -> str:
    """The path of ``key`` inside the table at ``base``, quoted as TOML would need it."""
    if not _BARE_KEY.match(key):
        key = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{base}.{key}" if base else key


def _segment_label(name: str, cidr: IPv4Network) -> str:
    """How messages name a segment: the default one by the key the user wrote for it."""
    if name == model.DEFAULT_SEGMENT:
        return f"node.pod_cidr {cidr}"
    return f"segment {name} {cidr}"


def _address_problem(ip: IPv4Address, cidr: IPv4Network, where: str | None = None) -> str | None:
    """Why ``ip`` cannot be a host address in ``cidr``, or None; ``where`` names ``cidr``."""
    if ip not in cidr:
        return f"{ip} is outside {where or _segment_label(model.DEFAULT_SEGMENT, cidr)}"
    if ip == cidr.network_address:
        return f"{ip} is the network address of {cidr}"
    if ip == cidr.broadcast_address:
        return f"{ip} is the broadcast address of {cidr}"
    return None


def _listen_address_problem(text: str) -> str | None:
    """A metrics listen address is HOST:PORT with an IPv4 host (127.0.0.1 keeps it local)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return f"expected HOST:PORT such as 127.0.0.1:9469, got {text!r}"
    try:
        IPv4Address(host)
    except ValueError:
        return f"{host!r} is not an IPv4 address (expected HOST:PORT such as 127.0.0.1:9469)"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a number from 1 to 65535"
    return None


def _dns_label_problem(name: str, limit: int) -> str | None:
    if not name:
        return "must not be empty"
    if len(name) > limit:
        return f"{name!r} is {len(name)} characters long; at most {limit} are allowed"
    if not _DNS_LABEL.match(name):
        return (
            f"{name!r} is not a DNS-1123 label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def _label_key_problem(key: str) -> str | None:
    # Kubernetes' syntax, so that selectors written for a cluster work here unchanged.
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r} has an invalid prefix; it must be a DNS subdomain like 'example.com'"
    if not name or len(name) > DNS_LABEL_MAX or not _LABEL_NAME.match(name):
        return (
            f"label key {key!r} is invalid: the name part must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > DNS_LABEL_MAX or not _LABEL_NAME.match(value)):
        return (
            f"label value {value!r} is invalid: it must be empty or 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def _port_name_problem(name: str) -> str | None:
    # IANA service name syntax, which Kubernetes requires of named ports.
    if not name or len(name) > 15:
        return f"port name {name!r} must be 1-15 characters long"
    if not _PORT_NAME.match(name) or "--" in name or not any(ch.isalpha() for ch in name):
        return (
            f"port name {name!r} is invalid: use lowercase letters, digits and single '-', "
            "with at least one letter"
        )
    return None


@dataclass(frozen=True)
class _PodDraft:
    """A pod as written, before addresses are allocated and names derived."""

    path: str
    name: str | _Marker
    ip: IPv4Address | None | _Marker  # None: to be allocated
    labels: Mapping[str, str]
    ready: bool | _Marker
    containers: tuple[Container, ...]
    segment: str | _Marker = model.DEFAULT_SEGMENT
    mtu: int | None | _Marker = None  # None: the segment's


@dataclass(frozen=True)
class _SegmentDraft:
    """A segment as written (or derived from ``[node]``); fields are INVALID where they are wrong.

    ``reserved`` maps the addresses no pod may take (the gateway, and for the default segment the
    host port) to the key that claims them, for messages.
    """

    path: str  # "node" for the default segment, "segments[i]" for the others
    name: str | _Marker
    cidr: IPv4Network | _Marker
    gateway: IPv4Address | _Marker
    mtu: int | _Marker
    reserved: Mapping[IPv4Address, str]

    @property
    def valid(self) -> bool:
        return INVALID not in (self.name, self.cidr, self.gateway, self.mtu)

    @property
    def cidr_path(self) -> str:
        return "node.pod_cidr" if self.path == "node" else f"{self.path}.cidr"

    @property
    def gateway_path(self) -> str:
        return f"{self.path}.gateway"


class _Reader:
    """Reads one document; an instance lives for a single parse and holds only its error list."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def fail(self, path: str, reason: str) -> _Marker:
        self.errors.append((path, reason))
        return INVALID

    # -- generic accessors ------------------------------------------------------------------

    def check_keys(self, table: Mapping[str, Any], base: str, allowed: Sequence[str]) -> None:
        for key in table:
            if key in allowed:
                continue
            if not base and key in RESERVED_SECTIONS:
                # Named apart from typos: these sections are planned, and a file written for a
                # later version must fail clearly rather than run without its services or routes.
                self.fail(key, f"section '{key}' is not supported by this version of vswitch yet")
                continue
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            self.fail(_key(base, key), f"unknown key; {suggestion}allowed here: {', '.join(allowed)}")

    def take(self, table: Mapping[str, Any], base: str, key: str, kind: str, default: Any) -> Any:
        """``table[key]`` if it has the right TOML type; ``default`` if absent; INVALID otherwise."""
        path = _key(base, key)
        if key not in table:
            if default is REQUIRED:
                return self.fail(path, "required key is missing")
            return default
        value = table[key]
        if not _is_kind(value, kind):
            return self.fail(path, f"expected {kind}, got {_type_name(value)}")
        return value

    def take_int(
        self,
        table: Mapping[str, Any],
        base: str,
        key: str,
        default: Any,
        low: int,
        high: int | None = None,
    ) -> int | _Marker:
        value = self.take(table, base, key, "an integer", default)
        if value is INVALID or key not in table:
            return value
        if value < low or (high is not None and value > high):
            allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
            return self.fail(_key(base, key), f"must be {allowed}, got {value}")
        return value

    def take_address(
        self, table: Mapping[str, Any], base: str, key: str
    ) -> IPv4Address | None | _Marker:
        text = self.take(table, base, key, "a string", None)
        if text is None or text is INVALID:
            return text
        try:
            return IPv4Address(text)
        except ValueError:
            return self.fail(_key(base, key), f"{text!r} is not an IPv4 address")

    def take_path(self, table: Mapping[str, Any], base: str, key: str, default: Any) -> Any:
        value = self.take(table, base, key, "a string", default)
        if value is INVALID or key not in table:
            return value
        path = _key(base, key)
        if "\0" in value:
            return self.fail(path, "must not contain a NUL character")
        if not os.path.isabs(value):
            return self.fail(path, f"expected an absolute path, got {value!r}")
        return value

    def take_str_map(self, table: Mapping[str, Any], base: str, key: str) -> dict[str, str] | _Marker:
        """A table of strings to strings (labels, env); keys are checked by the caller."""
        raw = self.take(table, base, key, "a table", {})
        if raw is INVALID:
            return INVALID
        result: dict[str, str] = {}
        path = _key(base, key)
        for name, value in raw.items():
            if not isinstance(value, str):
                self.fail(_key(path, name), f"expected a string, got {_type_name(value)}")
                continue
            result[name] = value
        return result

    def section(self, document: Mapping[str, Any], name: str, required: bool) -> Any:
        return self.take(document, "", name, "a table", REQUIRED if required else {})

    # -- the document -----------------------------------------------------------------------

    def read(self, document: Mapping[str, Any], source: str,
             previous: Topology | None = None) -> Topology | None:
        self.check_keys(document, "", TOP_LEVEL_KEYS)
        previous_pods = {pod.name: pod for pod in previous.pods} if previous else {}
        previous_services = {s.key: s for s in previous.services} if previous else {}

        name, cidr, gateway, mtu = self.read_node(document)
        enabled, host_address = self.read_host_port(document, cidr, gateway)
        dataplane = self.read_dataplane(document)
        control = self.read_control(document, name)
        reserved = {address: what for address, what in
                    ((gateway, "node.gateway"), (host_address, "host_port.address"))
                    if isinstance(address, IPv4Address)}
        default = _SegmentDraft("node", model.DEFAULT_SEGMENT, cidr, gateway, mtu,
                                MappingProxyType(reserved))
        segment_drafts = self.check_segment_overlaps([default, *self.read_segments(document, mtu)])
        routes = self.read_routes(document, segment_drafts)
        drafts = self.read_pods(document)
        pod_ips = self.check_pod_addresses(drafts, segment_drafts, previous_pods)
        cluster = self.read_cluster(document, segment_drafts)
        uplink = self.read_uplink(document, name, mtu, cluster, segment_drafts)
        context = _ServiceContext.of(cluster, uplink, segment_drafts, host_address)
        services = self.check_services(self.read_services(document, context), context,
                                       previous=previous_services)

        if self.errors:
            return None
        # Past this point every value is valid; the asserts only narrow types for the reader.
        assert isinstance(name, str) and isinstance(cidr, IPv4Network)
        assert isinstance(gateway, IPv4Address) and isinstance(host_address, IPv4Address)
        assert isinstance(mtu, int) and isinstance(enabled, bool)
        assert isinstance(dataplane, Dataplane) and isinstance(control, Control)

        pods = tuple(self.build_pod(name, draft, ip) for draft, ip in zip(drafts, pod_ips))
        self.check_kernel_names(pods, drafts)
        if self.errors:
            return None
        segments = tuple(
            Segment(name=draft.name, cidr=draft.cidr, gateway=draft.gateway,
                    gateway_mac=model.mac_for_ip(draft.gateway), mtu=draft.mtu)
            for draft in segment_drafts
        )
        return Topology(
            source=source,
            node=Node(
                name=name,
                pod_cidr=cidr,
                gateway=gateway,
                gateway_mac=model.mac_for_ip(gateway),
                mtu=mtu,
            ),
            pods=pods,
            host_port=HostPort(
                enabled=enabled,
                name=model.kernel_name("vsh", name),
                address=IPv4Interface(f"{host_address}/{cidr.prefixlen}"),
                mac=model.mac_for_ip(host_address),
            ),
            dataplane=dataplane,
            control=control,
            segments=segments,
            routes=tuple(routes),
            cluster=cluster if isinstance(cluster, model.Cluster) else None,
            uplink=uplink if isinstance(uplink, model.Uplink) else None,
            services=tuple(services),
        )

    def read_node(self, document: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
        table = self.section(document, "node", required=True)
        if table is INVALID:
            return INVALID, INVALID, INVALID, INVALID
        self.check_keys(table, "node", NODE_KEYS)

        name = self.take(table, "node", "name", "a string", REQUIRED)
        if isinstance(name, str) and (problem := _dns_label_problem(name, NODE_NAME_MAX)):
            name = self.fail("node.name", problem)

        cidr = self.take(table, "node", "pod_cidr", "a string", REQUIRED)
        if isinstance(cidr, str):
            cidr = self.parse_cidr(cidr, "node.pod_cidr")

        gateway = self.take_address(table, "node", "gateway")
        if gateway is None:
            gateway = model.first_host(cidr) if isinstance(cidr, IPv4Network) else INVALID
        elif isinstance(gateway, IPv4Address) and isinstance(cidr, IPv4Network):
            if problem := _address_problem(gateway, cidr):
                gateway = self.fail("node.gateway", problem)

        mtu = self.take_int(table, "node", "mtu", model.DEFAULT_MTU, MTU_MIN, MTU_MAX)
        return name, cidr, gateway, mtu

    def parse_cidr(
        self, text: str, path: str, low: int = PREFIX_MIN, high: int = PREFIX_MAX
    ) -> IPv4Network | _Marker:
        if "/" not in text:
            return self.fail(path, f"expected an IPv4 network like 10.244.1.0/24, got {text!r}")
        try:
            interface = IPv4Interface(text)
        except ValueError:
            return self.fail(path, f"{text!r} is not an IPv4 network like 10.244.1.0/24")
        network = interface.network
        if not low <= network.prefixlen <= high:
            return self.fail(path, f"prefix length /{network.prefixlen} is outside /{low}../{high}")
        if interface.ip != network.network_address:
            return self.fail(path, f"{text!r} has host bits set; did you mean {network}?")
        return network

    def read_host_port(
        self, document: Mapping[str, Any], cidr: Any, gateway: Any
    ) -> tuple[Any, Any]:
        table = self.section(document, "host_port", required=False)
        if table is INVALID:
            return INVALID, INVALID
        self.check_keys(table, "host_port", HOST_PORT_KEYS)
        enabled = self.take(table, "host_port", "enabled", "a boolean", True)
        address = self.take_address(table, "host_port", "address")
        if not isinstance(cidr, IPv4Network):
            return enabled, INVALID if address is None else address
        path = "host_port.address"
        if address is None:
            # The address stays reserved while the port is disabled, so that enabling it later does
            # not move a pod that was allocated this address.
            address = model.last_host(cidr)
            if address == gateway:
                return enabled, self.fail(
                    path,
                    f"defaults to the last usable address {address}, which is node.gateway; "
                    "set host_port.address to another address",
                )
        elif isinstance(address, IPv4Address):
            if problem := _address_problem(address, cidr):
                return enabled, self.fail(path, problem)
            if address == gateway:
                return enabled, self.fail(path, f"{address} is node.gateway")
        return enabled, address

    def read_dataplane(self, document: Mapping[str, Any]) -> Dataplane | _Marker:
        table = self.section(document, "dataplane", required=False)
        if table is INVALID:
            return INVALID
        base = "dataplane"
        # The model's defaults are the only copy, so the loader and the model cannot drift apart.
        defaults = Dataplane()
        self.check_keys(table, base, DATAPLANE_KEYS)
        offloads = self.take(table, base, "offloads", "a boolean", defaults.offloads)
        aging = self.take(table, base, "fdb_aging", "a number", defaults.fdb_aging)
        if aging is not INVALID and not (math.isfinite(aging) and aging > 0):
            aging = self.fail(_key(base, "fdb_aging"), f"must be a finite number of seconds > 0, got {aging}")
        mac_limit = self.take_int(table, base, "mac_limit", defaults.mac_limit, 1)
        burst = self.take_int(table, base, "burst", defaults.burst, 1, BURST_MAX)
        accel = self.take(table, base, "accel", "a string", defaults.accel)
        if isinstance(accel, str) and accel not in ACCEL_CHOICES:
            accel = self.fail(
                _key(base, "accel"), f"must be one of {', '.join(map(repr, ACCEL_CHOICES))}, got {accel!r}"
            )
        values = (offloads, aging, mac_limit, burst, accel)
        if INVALID in values:
            return INVALID
        return Dataplane(
            offloads=offloads, fdb_aging=float(aging), mac_limit=mac_limit, burst=burst, accel=accel
        )

    def read_control(self, document: Mapping[str, Any], node_name: Any) -> Control | _Marker:
        table = self.section(document, "control", required=False)
        if table is INVALID:
            return INVALID
        self.check_keys(table, "control", CONTROL_KEYS)
        socket = self.take_path(table, "control", "socket", None)
        state_dir = self.take_path(table, "control", "state_dir", model.DEFAULT_STATE_DIR)
        if socket is None:
            if not isinstance(node_name, str):
                return INVALID
            socket = f"{model.DEFAULT_SOCKET_DIR}/{node_name}.sock"
        if isinstance(socket, str) and len(os.fsencode(socket)) > UNIX_PATH_MAX:
            socket = self.fail(
                "control.socket",
                f"is {len(os.fsencode(socket))} bytes long; a unix socket path has at most {UNIX_PATH_MAX}",
            )
        metrics = self.take(table, "control", "metrics", "a string", None)
        if isinstance(metrics, str) and (problem := _listen_address_problem(metrics)):
            metrics = self.fail("control.metrics", problem)
        if socket is INVALID or state_dir is INVALID or metrics is INVALID:
            return INVALID
        return Control(socket=socket, state_dir=state_dir, metrics=metrics)

    # -- segments and routes ----------------------------------------------------------------

    def read_segments(self, document: Mapping[str, Any], node_mtu: Any) -> list[_SegmentDraft]:
        """The ``[[segments]]`` entries; the default segment is made by the caller from ``[node]``."""
        raw = self.take(document, "", "segments", "an array of tables", [])
        if raw is INVALID:
            return []
        drafts: list[_SegmentDraft] = []
        names: dict[str, str] = {}
        for index, entry in enumerate(raw):
            path = f"segments[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {_type_name(entry)}")
                continue
            self.check_keys(entry, path, SEGMENT_KEYS)
            name = self.take(entry, path, "name", "a string", REQUIRED)
            name_path = _key(path, "name")
            if isinstance(name, str):
                if problem := _dns_label_problem(name, SEGMENT_NAME_MAX):
                    name = self.fail(name_path, problem)
                elif name == model.DEFAULT_SEGMENT:
                    name = self.fail(
                        name_path,
                        f"'{model.DEFAULT_SEGMENT}' is the segment made of node.pod_cidr; "
                        "choose another name",
                    )
                elif name in names:
                    name = self.fail(
                        name_path, f"duplicate segment name {name!r} (first used at {names[name]})"
                    )
                else:
                    names[name] = name_path

            cidr = self.take(entry, path, "cidr", "a string", REQUIRED)
            if isinstance(cidr, str):
                cidr = self.parse_cidr(cidr, _key(path, "cidr"))

            gateway = self.take_address(entry, path, "gateway")
            if gateway is None:
                gateway = model.first_host(cidr) if isinstance(cidr, IPv4Network) else INVALID
            elif isinstance(gateway, IPv4Address) and isinstance(cidr, IPv4Network):
                if problem := _address_problem(gateway, cidr, f"{path}.cidr {cidr}"):
                    gateway = self.fail(_key(path, "gateway"), problem)

            # An absent mtu inherits node.mtu; if that one is wrong, its own error says so.
            default_mtu = node_mtu if isinstance(node_mtu, int) else INVALID
            mtu = self.take_int(entry, path, "mtu", default_mtu, MTU_MIN, MTU_MAX)
            reserved = {gateway: _key(path, "gateway")} if isinstance(gateway, IPv4Address) else {}
            drafts.append(
                _SegmentDraft(path, name, cidr, gateway, mtu, MappingProxyType(reserved))
            )
        return drafts

    def check_segment_overlaps(self, segments: Sequence[_SegmentDraft]) -> list[_SegmentDraft]:
        """Refuse overlapping CIDRs: an address must belong to exactly one segment.

        The later entry carries the error, and its CIDR counts as invalid from here on, so that
        its pods are not reported a second time.
        """
        checked: list[_SegmentDraft] = []
        for draft in segments:
            if isinstance(draft.cidr, IPv4Network):
                for earlier in checked:
                    if isinstance(earlier.cidr, IPv4Network) and draft.cidr.overlaps(earlier.cidr):
                        self.fail(
                            draft.cidr_path,
                            f"{draft.cidr} overlaps {earlier.cidr_path} {earlier.cidr}; "
                            "the CIDRs of a node's segments must be disjoint",
                        )
                        draft = dataclasses.replace(draft, cidr=INVALID)
                        break
            checked.append(draft)
        return checked

    def read_routes(
        self, document: Mapping[str, Any], segments: Sequence[_SegmentDraft]
    ) -> list[StaticRoute]:
        raw = self.take(document, "", "routes", "an array of tables", [])
        if raw is INVALID:
            return []
        routes: list[StaticRoute] = []
        first_use: dict[IPv4Network, str] = {}
        networks = [s for s in segments if isinstance(s.cidr, IPv4Network)]
        # Without every segment's CIDR the next hop's segment cannot be told; the CIDR's own
        # error explains the problem.
        all_known = len(networks) == len(segments)
        gateways = {s.gateway: s for s in segments if isinstance(s.gateway, IPv4Address)}
        for index, entry in enumerate(raw):
            path = f"routes[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {_type_name(entry)}")
                continue
            self.check_keys(entry, path, ROUTE_KEYS)
            dst_path, via_path = _key(path, "dst"), _key(path, "via")
            dst = self.take(entry, path, "dst", "a string", REQUIRED)
            if isinstance(dst, str):
                dst = self.parse_cidr(dst, dst_path, 0, 32)
            if isinstance(dst, IPv4Network):
                # A route to a segment or into it would steal the connected route's traffic. A
                # route that covers segments (0.0.0.0/0) is fine: the connected routes are more
                # specific and win the longest-prefix match.
                inside = next((s for s in networks if dst.subnet_of(s.cidr)), None)
                if inside is not None:
                    dst = self.fail(
                        dst_path,
                        f"{dst} overlaps {inside.cidr_path} {inside.cidr}; a segment is reached "
                        "by its connected route",
                    )
                elif dst in first_use:
                    dst = self.fail(
                        dst_path, f"duplicate route to {dst} (first at {first_use[dst]})"
                    )
                else:
                    first_use[dst] = dst_path

            via = self.take(entry, path, "via", "a string", REQUIRED)
            segment: _SegmentDraft | None = None
            if isinstance(via, str):
                try:
                    via = IPv4Address(via)
                except ValueError:
                    via = self.fail(via_path, f"{via!r} is not an IPv4 address")
            if isinstance(via, IPv4Address):
                segment = next((s for s in networks if via in s.cidr), None)
                if segment is None:
                    if all_known:
                        listed = ", ".join(f"{s.cidr_path} {s.cidr}" for s in networks)
                        via = self.fail(
                            via_path,
                            f"{via} is on none of the node's segments ({listed}); "
                            "a next hop must be directly reachable",
                        )
                    else:
                        via = INVALID
                elif via in gateways:
                    via = self.fail(
                        via_path,
                        f"{via} is {gateways[via].gateway_path}, the router itself; "
                        "the next hop must be another host",
                    )
                elif problem := _address_problem(via, segment.cidr, segment.cidr_path):
                    via = self.fail(via_path, problem)
            if (isinstance(dst, IPv4Network) and isinstance(via, IPv4Address)
                    and segment is not None and isinstance(segment.name, str)):
                routes.append(StaticRoute(dst=dst, via=via, segment=segment.name))
        return routes

    # -- pods -------------------------------------------------------------------------------

    def read_pods(self, document: Mapping[str, Any]) -> list[_PodDraft]:
        raw = self.take(document, "", "pods", "an array of tables", [])
        if raw is INVALID:
            return []
        drafts: list[_PodDraft] = []
        first_use: dict[str, str] = {}
        for index, entry in enumerate(raw):
            path = f"pods[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {_type_name(entry)}")
                continue
            draft = self.read_pod(entry, path)
            if isinstance(draft.name, str):
                name_path = f"{path}.name"
                if draft.name in first_use:
                    self.fail(
                        name_path,
                        f"duplicate pod name {draft.name!r} (first used at {first_use[draft.name]})",
                    )
                else:
                    first_use[draft.name] = name_path
            drafts.append(draft)
        return drafts

    def read_pod(self, table: Mapping[str, Any], path: str) -> _PodDraft:
        self.check_keys(table, path, POD_KEYS)
        name = self.take(table, path, "name", "a string", REQUIRED)
        if isinstance(name, str):
            if problem := _dns_label_problem(name, POD_NAME_MAX):
                name = self.fail(_key(path, "name"), problem)
            elif name in RESERVED_POD_NAMES:
                name = self.fail(
                    _key(path, "name"), f"{name!r} is reserved: it names the node's {name} port"
                )
        ip = self.take_address(table, path, "ip")
        segment = self.take(table, path, "segment", "a string", model.DEFAULT_SEGMENT)
        mtu = self.take_int(table, path, "mtu", None, MTU_MIN, MTU_MAX)

        labels = self.take_str_map(table, path, "labels")
        if labels is INVALID:
            labels = {}
        labels_path = _key(path, "labels")
        for key, value in labels.items():
            problem = _label_key_problem(key) or _label_value_problem(value)
            if problem:
                self.fail(_key(labels_path, key), problem)

        ready = self.take(table, path, "ready", "a boolean", True)
        containers = self.read_containers(table, path)
        return _PodDraft(
            path=path,
            name=name,
            ip=ip,
            labels=MappingProxyType(dict(labels)),
            ready=ready,
            containers=containers,
            segment=segment,
            mtu=mtu,
        )

    def read_containers(self, pod: Mapping[str, Any], pod_path: str) -> tuple[Container, ...]:
        raw = self.take(pod, pod_path, "containers", "an array of tables", [])
        if raw is INVALID:
            return ()
        containers: list[Container] = []
        names: dict[str, str] = {}
        # Containers share the pod's network namespace, so port names and (protocol, port) pairs
        # must be unique across all of them, not only within one.
        port_names: dict[str, str] = {}
        bindings: dict[tuple[str, int], str] = {}
        for index, entry in enumerate(raw):
            path = f"{pod_path}.containers[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {_type_name(entry)}")
                continue
            self.check_keys(entry, path, CONTAINER_KEYS)

            name = self.take(entry, path, "name", "a string", REQUIRED)
            if isinstance(name, str):
                if problem := _dns_label_problem(name, DNS_LABEL_MAX):
                    name = self.fail(_key(path, "name"), problem)
                elif name in names:
                    name = self.fail(
                        _key(path, "name"), f"duplicate container name {name!r} (first used at {names[name]})"
                    )
                else:
                    names[name] = _key(path, "name")

            command = self.read_command(entry, path)

            env = self.take_str_map(entry, path, "env")
            if env is not INVALID:
                env_path = _key(path, "env")
                for key, value in env.items():
                    # execve() passes "NAME=value" C strings: a NUL or an '=' in the name
                    # cannot be represented.
                    if not key or "=" in key or "\0" in key:
                        self.fail(
                            _key(env_path, key),
                            "an environment variable name must be non-empty and contain no '=' or NUL",
                        )
                    elif "\0" in value:
                        self.fail(_key(env_path, key), "an environment value must not contain a NUL character")

            ports = self.read_ports(entry, path, port_names, bindings)

            if isinstance(name, str) and INVALID not in (command, env, ports):
                containers.append(
                    Container(
                        name=name,
                        command=command,
                        env=MappingProxyType(dict(env)),
                        ports=MappingProxyType(ports),
                    )
                )
        return tuple(containers)

    def read_command(self, container: Mapping[str, Any], path: str) -> tuple[str, ...] | _Marker:
        raw = self.take(container, path, "command", "an array", REQUIRED)
        if raw is INVALID:
            return INVALID
        command_path = _key(path, "command")
        if not raw:
            return self.fail(command_path, "must not be empty; give the program and its arguments")
        valid = True
        for index, word in enumerate(raw):
            word_path = f"{command_path}[{index}]"
            if not isinstance(word, str):
                valid = False
                self.fail(word_path, f"expected a string, got {_type_name(word)}")
            elif "\0" in word:
                valid = False
                self.fail(word_path, "must not contain a NUL character")
        if valid and not raw[0]:
            return self.fail(f"{command_path}[0]", "the program name must not be empty")
        return tuple(raw) if valid else INVALID

    def read_ports(
        self,
        container: Mapping[str, Any],
        path: str,
        port_names: dict[str, str],
        bindings: dict[tuple[str, int], str],
    ) -> dict[str, tuple[str, int]] | _Marker:
        raw = self.take(container, path, "ports", "an array of tables", [])
        if raw is INVALID:
            return INVALID
        ports: dict[str, tuple[str, int]] = {}
        valid = True
        for index, entry in enumerate(raw):
            port_path = f"{path}.ports[{index}]"
            if not isinstance(entry, dict):
                valid = False
                self.fail(port_path, f"expected a table, got {_type_name(entry)}")
                continue
            errors_before = len(self.errors)
            self.check_keys(entry, port_path, PORT_KEYS)
            name = self.take(entry, port_path, "name", "a string", REQUIRED)
            if isinstance(name, str):
                if problem := _port_name_problem(name):
                    self.fail(_key(port_path, "name"), problem)
                elif name in port_names:
                    self.fail(
                        _key(port_path, "name"),
                        f"duplicate port name {name!r} in this pod (first used at {port_names[name]})",
                    )
                else:
                    port_names[name] = _key(port_path, "name")
            number = self.take_int(entry, port_path, "port", REQUIRED, 1, 65535)
            protocol = self.take(entry, port_path, "protocol", "a string", "tcp")
            if isinstance(protocol, str) and protocol not in PROTOCOLS:
                protocol = self.fail(
                    _key(port_path, "protocol"), f"must be 'tcp' or 'udp', got {protocol!r}"
                )
            if isinstance(number, int) and isinstance(protocol, str):
                binding = (protocol, number)
                if binding in bindings:
                    self.fail(
                        _key(port_path, "port"),
                        f"{protocol} port {number} is already declared at {bindings[binding]}; "
                        "containers of a pod share one port space",
                    )
                else:
                    bindings[binding] = _key(port_path, "port")
            if len(self.errors) != errors_before:
                valid = False
                continue
            ports[name] = (protocol, number)
        return ports if valid else INVALID

    def check_pod_addresses(
        self, drafts: Sequence[_PodDraft], segments: Sequence[_SegmentDraft],
        previous: Mapping[str, Pod] | None = None,
    ) -> list[IPv4Address | _Marker]:
        """Resolve each pod's segment, check explicit addresses, allocate the rest.

        One entry per draft. Each segment allocates on its own, in file order, from its own CIDR.
        ``previous`` maps the names of pods that run already to their running version: such a
        pod without an explicit address keeps its running one while it is valid and free.
        """
        previous = previous or {}
        by_name = {s.name: s for s in segments if isinstance(s.name, str)}
        # A segment whose name is wrong cannot be found; its pods would only repeat that error.
        all_named = len(by_name) == len(segments)
        result: list[IPv4Address | _Marker] = [INVALID] * len(drafts)
        members: dict[int, list[int]] = {id(s): [] for s in segments}
        for index, draft in enumerate(drafts):
            if not isinstance(draft.segment, str):
                continue
            segment = by_name.get(draft.segment)
            if segment is None:
                if all_named:
                    self.fail(
                        _key(draft.path, "segment"),
                        f"unknown segment {draft.segment!r}; segments: {', '.join(by_name)}",
                    )
                continue
            members[id(segment)].append(index)

        for segment in segments:
            cidr, name = segment.cidr, segment.name
            if not (isinstance(cidr, IPv4Network) and isinstance(name, str)
                    and isinstance(segment.gateway, IPv4Address)):
                continue
            label = _segment_label(name, cidr)
            taken = dict(segment.reserved)
            explicit: dict[IPv4Address, str] = {}
            for index in members[id(segment)]:
                draft = drafts[index]
                ip = draft.ip
                path = _key(draft.path, "ip")
                if isinstance(ip, IPv4Address):
                    if problem := _address_problem(ip, cidr, label):
                        home = next((s for s in segments if isinstance(s.cidr, IPv4Network)
                                     and ip in s.cidr and s is not segment), None)
                        if home is not None and ip not in cidr:
                            problem += (f" (it is in segment {home.name}; set "
                                        f"{_key(draft.path, 'segment')} = \"{home.name}\")")
                        ip = self.fail(path, problem)
                    elif ip in taken:
                        ip = self.fail(path, f"{ip} is the address of {taken[ip]}")
                    elif ip in explicit:
                        ip = self.fail(path, f"{ip} is already used at {explicit[ip]}")
                    else:
                        explicit[ip] = path
                result[index] = INVALID if ip is None else ip

            # Kept addresses are placed after every explicit one, so that the file wins a clash
            # (the running pod then moves), and before any allocation, so that no pod listed
            # earlier in the file takes the address of one that stays.
            kept: dict[IPv4Address, int] = {}
            for index in members[id(segment)]:
                draft = drafts[index]
                old = previous.get(draft.name) if isinstance(draft.name, str) else None
                if (draft.ip is None and old is not None and old.segment == name
                        and _address_problem(old.ip, cidr) is None
                        and old.ip not in taken and old.ip not in explicit
                        and old.ip not in kept):
                    kept[old.ip] = index
                    result[index] = old.ip

            reserved = set(taken) | set(explicit) | set(kept)
            kept_indices = set(kept.values())
            candidates = (a for a in allocation_order(cidr) if a not in reserved)
            for index in members[id(segment)]:
                draft = drafts[index]
                if draft.ip is not None or index in kept_indices:
                    continue
                address = next(candidates, None)
                if address is None:
                    result[index] = self.fail(
                        draft.path, f"no free address left in {label} for this pod"
                    )
                else:
                    result[index] = address
        return result

    def build_pod(self, node: str, draft: _PodDraft, ip: Any) -> Pod:
        assert isinstance(draft.name, str) and isinstance(ip, IPv4Address)
        assert isinstance(draft.ready, bool) and isinstance(draft.segment, str)
        assert draft.mtu is None or isinstance(draft.mtu, int)
        return Pod(
            name=draft.name,
            ip=ip,
            mac=model.mac_for_ip(ip),
            netns=model.netns_name(node, draft.name),
            tap=model.kernel_name("vsp", node, draft.name),
            labels=draft.labels,
            containers=draft.containers,
            ready=draft.ready,
            segment=draft.segment,
            mtu=draft.mtu,
        )

    def check_kernel_names(self, pods: Sequence[Pod], drafts: Sequence[_PodDraft]) -> None:
        # The names carry a 16-bit hash; a collision is unlikely but would make two pods fight
        # over one device, so it is refused here rather than discovered by the kernel.
        seen: dict[str, str] = {}
        for pod, draft in zip(pods, drafts):
            if pod.tap in seen:
                self.fail(
                    _key(draft.path, "name"),
                    f"the derived TAP name {pod.tap!r} collides with {seen[pod.tap]}; rename one pod",
                )
            else:
                seen[pod.tap] = draft.path

    # -- changes to a running node --------------------------------------------------------------

    def read_fragment(self, document: Mapping[str, Any], topology: Topology,
                      allowed: Sequence[str], replace: bool) -> "Fragment":
        for key in document:
            if key not in allowed:
                what = " and ".join(f"[[{k}]]" for k in allowed)
                self.fail(_key("", key), f"only {what} can be changed while the node runs; "
                                         "other sections need a restart")
        drafts = self.read_pods(document) if "pods" in allowed else []
        pods = self.check_runtime_pods(drafts, topology, replace)
        context = _ServiceContext.of_topology(topology)
        service_drafts = self.read_services(document, context) if "services" in allowed else []
        keys = {draft.key for draft in service_drafts if draft.key}
        previous = {s.key: s for s in topology.services if s.key in keys} if replace else {}
        kept = [s for s in topology.services if s.key not in previous]
        services = self.check_services(service_drafts, context, kept, previous, replace)
        return Fragment(pods=tuple(pods), services=tuple(services))

    def check_runtime_pods(self, drafts: Sequence[_PodDraft], topology: Topology,
                           replace: bool) -> list[Pod]:
        """Check pods against a running node: its segments, and the pods that stay.

        A pod that replaces one of the same name keeps that pod's address unless it asks for
        another (or another pod of the change asks for it explicitly), so re-applying an
        unchanged pod is no change at all.
        """
        existing = {pod.name: pod for pod in topology.pods}
        named = {draft.name for draft in drafts if isinstance(draft.name, str)}
        if not replace:
            for draft in drafts:
                if isinstance(draft.name, str) and draft.name in existing:
                    self.fail(_key(draft.path, "name"), f"pod {draft.name!r} already exists")
        kept = [pod for pod in topology.pods if pod.name not in named]
        segments = []
        for index, segment in enumerate(topology.all_segments()):
            path = "node" if index == 0 else f"segments[{index - 1}]"
            reserved = {segment.gateway: f"{path}.gateway"}
            if segment.name == model.DEFAULT_SEGMENT:
                reserved[topology.host_port.address.ip] = "host_port.address"
            reserved.update({pod.ip: f"pod {pod.name}" for pod in kept
                             if pod.segment == segment.name})
            segments.append(_SegmentDraft(path, segment.name, segment.cidr, segment.gateway,
                                          segment.mtu, MappingProxyType(reserved)))
        ips = self.check_pod_addresses(drafts, segments, existing if replace else None)
        if self.errors:
            return []
        pods = [self.build_pod(topology.node.name, draft, ip) for draft, ip in zip(drafts, ips)]
        taps = {pod.tap: f"pod {pod.name}" for pod in kept}
        for pod, draft in zip(pods, drafts):
            if pod.tap in taps:
                self.fail(_key(draft.path, "name"), f"the derived TAP name {pod.tap!r} collides "
                                                    f"with {taps[pod.tap]}; choose another name")
            taps[pod.tap] = draft.path
        return pods

    # -- cluster and uplink -------------------------------------------------------------------

    def read_cluster(self, document: Mapping[str, Any],
                     segments: Sequence[_SegmentDraft]) -> model.Cluster | _Marker:
        table = self.section(document, "cluster", required=False)
        if table is INVALID:
            return INVALID
        self.check_keys(table, "cluster", CLUSTER_KEYS)
        networks = [s for s in segments if isinstance(s.cidr, IPv4Network)]
        all_known = len(networks) == len(segments)

        cidr = self.take(table, "cluster", "cidr", "a string", None)
        if isinstance(cidr, str):
            cidr = self.parse_cidr(cidr, "cluster.cidr")
            if isinstance(cidr, IPv4Network):
                outside = next((s for s in networks if not s.cidr.subnet_of(cidr)), None)
                if outside is not None:
                    cidr = self.fail(
                        "cluster.cidr",
                        f"{cidr} does not contain {outside.cidr_path} {outside.cidr}; the cluster "
                        "CIDR must hold every pod address of the node",
                    )
        elif cidr is None:
            # The smallest network holding every segment: node.pod_cidr itself on a node with
            # only the default segment.
            cidr = _covering_network([s.cidr for s in networks]) if all_known else INVALID
        # A default CIDR only promises to cover the segments; on a node whose segments lie far
        # apart it is wide, so the service CIDR and the hairpin address are checked against the
        # segments themselves then, not against the whole default.
        explicit = cidr if "cidr" in table else None

        service_cidr = self.take(table, "cluster", "service_cidr", "a string", None)
        if service_cidr is None:
            service_cidr = IPv4Network(model.DEFAULT_SERVICE_CIDR)
        elif isinstance(service_cidr, str):
            service_cidr = self.parse_cidr(service_cidr, "cluster.service_cidr")
        if isinstance(service_cidr, IPv4Network):
            clash = next((s for s in networks if s.cidr.overlaps(service_cidr)), None)
            if clash is not None:
                service_cidr = self.fail(
                    "cluster.service_cidr",
                    f"{service_cidr} overlaps {clash.cidr_path} {clash.cidr}; cluster IPs must "
                    "not be pod addresses",
                )
            elif isinstance(explicit, IPv4Network) and explicit.overlaps(service_cidr):
                service_cidr = self.fail(
                    "cluster.service_cidr",
                    f"{service_cidr} overlaps cluster.cidr {explicit}; cluster IPs must not be "
                    "pod addresses",
                )

        hairpin = self.take_address(table, "cluster", "hairpin_address")
        if hairpin is None:
            hairpin = model.Cluster.__dataclass_fields__["hairpin_address"].default
        if isinstance(hairpin, IPv4Address):
            checks = [(explicit, "cluster.cidr"), (service_cidr, "cluster.service_cidr")]
            checks += [(s.cidr, s.cidr_path) for s in networks]
            for network, label in checks:
                if isinstance(network, IPv4Network) and hairpin in network:
                    hairpin = self.fail(
                        "cluster.hairpin_address",
                        f"{hairpin} is inside {label} {network}; the hairpin address must be "
                        "one no pod or service has",
                    )
                    break

        conntrack_max = self.take_int(table, "cluster", "conntrack_max",
                                      model.DEFAULT_CONNTRACK_MAX, CONNTRACK_MAX_MIN,
                                      CONNTRACK_MAX_MAX)
        values = (cidr, service_cidr, hairpin, conntrack_max)
        if INVALID in values:
            return INVALID
        return model.Cluster(cidr=cidr, service_cidr=service_cidr, hairpin_address=hairpin,
                             conntrack_max=conntrack_max)

    def parse_interface(self, text: str, path: str) -> IPv4Interface | _Marker:
        """An address with its network's prefix length, such as ``192.0.2.2/24``."""
        if "/" not in text:
            return self.fail(path, f"expected an address with its prefix length like "
                                   f"192.0.2.2/24, got {text!r}")
        try:
            interface = IPv4Interface(text)
        except ValueError:
            return self.fail(path, f"{text!r} is not an IPv4 address with a prefix length like "
                                   "192.0.2.2/24")
        network = interface.network
        if not PREFIX_MIN <= network.prefixlen <= PREFIX_MAX:
            return self.fail(path, f"prefix length /{network.prefixlen} is outside "
                                   f"/{PREFIX_MIN}../{PREFIX_MAX}")
        if problem := _address_problem(interface.ip, network, str(network)):
            return self.fail(path, problem)
        return interface

    def read_uplink(self, document: Mapping[str, Any], node_name: Any, node_mtu: Any,
                    cluster: model.Cluster | _Marker,
                    segments: Sequence[_SegmentDraft]) -> model.Uplink | None | _Marker:
        if "uplink" not in document:
            return None
        table = self.section(document, "uplink", required=False)
        if table is INVALID:
            return INVALID
        self.check_keys(table, "uplink", UPLINK_KEYS)

        address = self.take(table, "uplink", "address", "a string", REQUIRED)
        if isinstance(address, str):
            address = self.parse_interface(address, "uplink.address")
        if isinstance(address, IPv4Interface):
            cluster_table = document.get("cluster")
            cluster_explicit = isinstance(cluster_table, dict) and "cidr" in cluster_table
            address = self.check_uplink_network(address, cluster, segments, cluster_explicit)

        gateway = self.take(table, "uplink", "gateway", "a string", REQUIRED)
        if isinstance(gateway, str):
            gateway = self.take_address(table, "uplink", "gateway")
        if isinstance(gateway, IPv4Address) and isinstance(address, IPv4Interface):
            network = address.network
            if problem := _address_problem(gateway, network, f"uplink.address's network {network}"):
                gateway = self.fail("uplink.gateway", problem)
            elif gateway == address.ip:
                gateway = self.fail("uplink.gateway", f"{gateway} is uplink.address itself; the "
                                                      "gateway is the far side's address")

        netns = self.take(table, "uplink", "netns", "a string", None)
        if isinstance(netns, str) and (problem := _netns_name_problem(netns)):
            netns = self.fail("uplink.netns", problem)

        default_mtu = node_mtu if isinstance(node_mtu, int) else INVALID
        mtu = self.take_int(table, "uplink", "mtu", default_mtu, MTU_MIN, MTU_MAX)
        if INVALID in (address, gateway, netns, mtu) or not isinstance(node_name, str):
            return INVALID
        assert isinstance(address, IPv4Interface) and isinstance(gateway, IPv4Address)
        return model.Uplink(address=address, gateway=gateway, netns=netns,
                            name=model.kernel_name("vsu", node_name),
                            mac=model.mac_for_ip(address.ip), far_mac=model.mac_for_ip(gateway),
                            mtu=mtu)

    def check_uplink_network(self, address: IPv4Interface, cluster: model.Cluster | _Marker,
                             segments: Sequence[_SegmentDraft],
                             cluster_explicit: bool) -> IPv4Interface | _Marker:
        """The uplink network is the outside world: no pod, service or hairpin address in it."""
        network = address.network
        clash = next((s for s in segments
                      if isinstance(s.cidr, IPv4Network) and s.cidr.overlaps(network)), None)
        if clash is not None:
            return self.fail("uplink.address", f"{network} overlaps {clash.cidr_path} {clash.cidr}; "
                                               "the uplink network must be outside the node's "
                                               "segments")
        if isinstance(cluster, model.Cluster):
            for other, label in ((cluster.cidr, "cluster.cidr"),
                                 (cluster.service_cidr, "cluster.service_cidr")):
                if other.overlaps(network):
                    if label == "cluster.cidr" and not cluster_explicit:
                        label = "the default cluster CIDR (the smallest network holding every " \
                                "segment; set [cluster] cidr)"
                    return self.fail("uplink.address", f"{network} overlaps {label} {other}; "
                                                       "the uplink network must be outside the "
                                                       "cluster")
            if cluster.hairpin_address in network:
                return self.fail("uplink.address", f"{network} contains cluster.hairpin_address "
                                                   f"{cluster.hairpin_address}")
        return address

    # -- services -------------------------------------------------------------------------------

    def take_choice(self, table: Mapping[str, Any], base: str, key: str, choices: Sequence[str],
                    default: str) -> str | _Marker:
        value = self.take(table, base, key, "a string", default)
        if isinstance(value, str) and value not in choices:
            hint = next((c for c in choices if c.lower() == value.lower()), None)
            suggestion = f" (did you mean {hint!r}?)" if hint else ""
            return self.fail(_key(base, key), f"must be one of {', '.join(map(repr, choices))}, "
                                              f"got {value!r}{suggestion}")
        return value

    def take_addresses(self, table: Mapping[str, Any], base: str,
                       key: str) -> list[tuple[str, IPv4Address]] | _Marker:
        """An array of IPv4 address strings, each with its own path, duplicates refused."""
        raw = self.take(table, base, key, "an array", [])
        if raw is INVALID:
            return INVALID
        path = _key(base, key)
        result: list[tuple[str, IPv4Address]] = []
        seen: set[IPv4Address] = set()
        valid = True
        for index, item in enumerate(raw):
            item_path = f"{path}[{index}]"
            if not isinstance(item, str):
                self.fail(item_path, f"expected a string, got {_type_name(item)}")
                valid = False
                continue
            try:
                address = IPv4Address(item)
            except ValueError:
                self.fail(item_path, f"{item!r} is not an IPv4 address")
                valid = False
                continue
            if address in seen:
                self.fail(item_path, f"{address} is listed twice")
                valid = False
                continue
            seen.add(address)
            result.append((item_path, address))
        return result if valid else INVALID

    def read_services(self, document: Mapping[str, Any],
                      context: "_ServiceContext") -> list["_ServiceDraft"]:
        raw = self.take(document, "", "services", "an array of tables", [])
        if raw is INVALID:
            return []
        drafts = []
        for index, entry in enumerate(raw):
            path = f"services[{index}]"
            if not isinstance(entry, dict):
                self.fail(path, f"expected a table, got {_type_name(entry)}")
                continue
            drafts.append(self.read_service(entry, path, context))
        return drafts

    def read_service(self, table: Mapping[str, Any], path: str,
                     context: "_ServiceContext") -> "_ServiceDraft":
        self.check_keys(table, path, SERVICE_KEYS)
        name = self.take(table, path, "name", "a string", REQUIRED)
        if isinstance(name, str) and (problem := _dns_label_problem(name, DNS_LABEL_MAX)):
            name = self.fail(_key(path, "name"), problem)
        namespace = self.take(table, path, "namespace", "a string", "default")
        if isinstance(namespace, str) and (problem := _dns_label_problem(namespace, DNS_LABEL_MAX)):
            namespace = self.fail(_key(path, "namespace"), problem)

        type_ = self.take_choice(table, path, "type", SERVICE_TYPES, "ClusterIP")
        cluster = context.cluster
        cluster_ip: Any = self.take(table, path, "cluster_ip", "a string", None)
        headless = cluster_ip == HEADLESS
        if isinstance(cluster_ip, str) and not headless:
            cluster_ip = self.take_address(table, path, "cluster_ip")
            if isinstance(cluster_ip, IPv4Address) and cluster is not None:
                where = f"cluster.service_cidr {cluster.service_cidr}"
                if problem := _address_problem(cluster_ip, cluster.service_cidr, where):
                    cluster_ip = self.fail(_key(path, "cluster_ip"), problem)
        if headless and type_ == "NodePort":
            type_ = self.fail(_key(path, "type"), "a headless service (cluster_ip = \"None\") "
                                                  "must be of type ClusterIP")
        if type_ == "NodePort" and context.uplink is None:
            type_ = self.fail(_key(path, "type"), "type NodePort needs an [uplink] section: node "
                                                  "ports listen on the uplink address")

        ports = self.read_service_ports(table, path, type_, headless)

        selector: Any = None
        if "selector" in table:
            selector = self.take_str_map(table, path, "selector")
            if isinstance(selector, dict):
                selector_path = _key(path, "selector")
                problems = [(_key(selector_path, key), problem) for key, value in selector.items()
                            if (problem := _label_key_problem(key) or _label_value_problem(value))]
                if not table["selector"]:
                    selector = self.fail(selector_path, "an empty selector would select every "
                                                        "pod; leave it out for a service "
                                                        "without endpoints")
                for problem_path, problem in problems:
                    selector = self.fail(problem_path, problem)
        endpoints = self.take_addresses(table, path, "endpoints")
        if "selector" in table and "endpoints" in table:
            endpoints = self.fail(_key(path, "endpoints"), "give either a selector or explicit "
                                                           "endpoints, not both")
        elif isinstance(endpoints, list) and cluster is not None:
            for item_path, address in endpoints:
                if address in cluster.service_cidr:
                    endpoints = self.fail(item_path, f"{address} is inside cluster.service_cidr "
                                                     f"{cluster.service_cidr}; an endpoint is a "
                                                     "pod or host address")
                    break

        affinity = self.take_choice(table, path, "session_affinity", SESSION_AFFINITIES, "None")
        timeout = self.take_int(table, path, "affinity_timeout", model.DEFAULT_AFFINITY_TIMEOUT,
                                1, AFFINITY_TIMEOUT_MAX)
        external_policy = self.take_choice(table, path, "external_traffic_policy",
                                           TRAFFIC_POLICIES, "Cluster")
        internal_policy = self.take_choice(table, path, "internal_traffic_policy",
                                           TRAFFIC_POLICIES, "Cluster")
        external_ips = self.take_addresses(table, path, "external_ips")
        if isinstance(external_ips, list):
            for item_path, address in external_ips:
                if problem := context.external_ip_problem(address):
                    external_ips = self.fail(item_path, problem)
                    break
        load_balancer = self.take_choice(table, path, "load_balancer", LOAD_BALANCERS, "random")
        return _ServiceDraft(
            path=path, name=name, namespace=namespace,
            cluster_ip=HEADLESS if headless else cluster_ip, type=type_, ports=ports,
            selector=selector,
            endpoints=INVALID if endpoints is INVALID else tuple(a for _, a in endpoints),
            session_affinity=affinity, affinity_timeout=timeout,
            external_traffic_policy=external_policy, internal_traffic_policy=internal_policy,
            external_ips=INVALID if external_ips is INVALID else tuple(a for _, a in external_ips),
            load_balancer=load_balancer,
        )

    def read_service_ports(self, table: Mapping[str, Any], path: str, type_: Any,
                           headless: bool) -> list["_PortDraft"] | _Marker:
        raw = self.take(table, path, "ports", "an array of tables", [])
        if raw is INVALID:
            return INVALID
        ports_path = _key(path, "ports")
        if not raw and not headless:
            return self.fail(ports_path, "a service with a cluster IP needs at least one port")
        drafts: list[_PortDraft] = []
        names: dict[str, str] = {}
        bindings: dict[tuple[str, int], str] = {}
        valid = True
        for index, entry in enumerate(raw):
            port_path = f"{ports_path}[{index}]"
            if not isinstance(entry, dict):
                self.fail(port_path, f"expected a table, got {_type_name(entry)}")
                valid = False
                continue
            errors_before = len(self.errors)
            self.check_keys(entry, port_path, SERVICE_PORT_KEYS)
            name = self.take(entry, port_path, "name", "a string", REQUIRED if len(raw) > 1 else "")
            if isinstance(name, str) and name:
                if problem := _dns_label_problem(name, DNS_LABEL_MAX):
                    self.fail(_key(port_path, "name"), problem)
                elif name in names:
                    self.fail(_key(port_path, "name"), f"duplicate port name {name!r} in this "
                                                       f"service (first used at {names[name]})")
                else:
                    names[name] = _key(port_path, "name")
            elif name == "" and "name" in entry:
                self.fail(_key(port_path, "name"), "must not be empty")
            protocol = self.take_choice(entry, port_path, "protocol", PROTOCOLS, "tcp")
            number = self.take_int(entry, port_path, "port", REQUIRED, 1, 65535)
            if isinstance(number, int) and isinstance(protocol, str):
                if (protocol, number) in bindings:
                    self.fail(_key(port_path, "port"), f"{protocol} port {number} is already "
                                                       f"declared at {bindings[protocol, number]}")
                else:
                    bindings[protocol, number] = _key(port_path, "port")
            target: Any = entry.get("target_port", number)
            target_path = _key(port_path, "target_port")
            if target is INVALID:
                pass  # defaults to a port that is itself wrong; its error says so
            elif isinstance(target, bool) or not isinstance(target, (int, str)):
                self.fail(target_path, f"expected a port number or a container port name, got "
                                       f"{_type_name(target)}")
            elif isinstance(target, int) and not 1 <= target <= 65535:
                self.fail(target_path, f"must be between 1 and 65535, got {target}")
            elif isinstance(target, str) and (problem := _port_name_problem(target)):
                self.fail(target_path, problem)
            node_port = self.take_int(entry, port_path, "node_port", None, *model.NODE_PORT_RANGE)
            if "node_port" in entry and type_ == "ClusterIP":
                self.fail(_key(port_path, "node_port"), "only a service of type NodePort has "
                                                        "node ports")
            if len(self.errors) != errors_before:
                valid = False
                continue
            drafts.append(_PortDraft(port_path, name, protocol, number, target, node_port))
        return drafts if valid else INVALID

    def check_services(self, drafts: Sequence["_ServiceDraft"], context: "_ServiceContext",
                       kept: Sequence[model.Service] = (),
                       previous: Mapping[str, model.Service] | None = None,
                       replace: bool = True) -> list[model.Service]:
        """Check what concerns services together, allocate cluster IPs and node ports, build.

        ``kept`` are the services of a running node that stay as they are: their names, cluster
        IPs and node ports are taken. ``previous`` maps the key of a service being replaced to its
        running version, whose allocated cluster IP and node ports it keeps where still free, so
        that re-applying the same file changes nothing. With ``replace`` False a draft may not
        name a kept service.
        """
        previous = previous or {}
        kept_keys = {service.key: service for service in kept}
        seen: dict[str, str] = {}
        for draft in drafts:
            if not (isinstance(draft.name, str) and isinstance(draft.namespace, str)):
                continue
            key = f"{draft.namespace}/{draft.name}"
            if key in seen:
                self.fail(_key(draft.path, "name"), f"duplicate service {key} (first at {seen[key]})")
            elif key in kept_keys and not replace:
                self.fail(_key(draft.path, "name"), f"service {key} already exists; change it "
                                                    "with `vswitchctl service set` or `apply`")
            seen.setdefault(key, draft.path)

        cluster_ips = self.allocate_cluster_ips(drafts, context, kept, previous)
        node_ports = self.allocate_node_ports(drafts, kept, previous)
        services: list[model.Service] = []
        for draft, cluster_ip, ports in zip(drafts, cluster_ips, node_ports):
            if not draft.valid or cluster_ip is INVALID or ports is INVALID:
                continue
            services.append(model.Service(
                name=draft.name, namespace=draft.namespace, cluster_ip=cluster_ip,
                type=draft.type, ports=ports,
                selector=(MappingProxyType(dict(draft.selector))
                          if draft.selector is not None else None),
                endpoints=draft.endpoints, session_affinity=draft.session_affinity,
                affinity_timeout=draft.affinity_timeout,
                external_traffic_policy=draft.external_traffic_policy,
                internal_traffic_policy=draft.internal_traffic_policy,
                external_ips=draft.external_ips, load_balancer=draft.load_balancer))
        return services

    def allocate_cluster_ips(self, drafts: Sequence["_ServiceDraft"], context: "_ServiceContext",
                             kept: Sequence[model.Service],
                             previous: Mapping[str, model.Service]) -> list[Any]:
        """Explicit cluster IPs must be unique; the others get network + 10 upwards, in order."""
        taken: dict[IPv4Address, str] = {s.cluster_ip: f"service {s.key}" for s in kept
                                         if s.cluster_ip is not None}
        result: list[Any] = []
        for draft in drafts:
            ip = draft.cluster_ip
            if isinstance(ip, IPv4Address):
                if ip in taken:
                    ip = self.fail(_key(draft.path, "cluster_ip"), f"{ip} is already the cluster "
                                                                   f"IP of {taken[ip]}")
                else:
                    taken[ip] = draft.path
            result.append(ip)
        cluster = context.cluster
        if cluster is None:
            return [INVALID if ip is None else ip for ip in result]
        # A replaced service keeps its address when it still may, so that re-applying a file
        # does not move it under its clients. This runs after every explicit address is placed
        # (the file wins a clash) and before any allocation (no earlier entry takes it).
        for index, draft in enumerate(drafts):
            old = previous.get(draft.key or "")
            if (result[index] is None and old is not None and old.cluster_ip is not None
                    and old.cluster_ip not in taken
                    and _address_problem(old.cluster_ip, cluster.service_cidr) is None):
                result[index] = old.cluster_ip
                taken[old.cluster_ip] = draft.path
        candidates = (a for a in allocation_order(cluster.service_cidr) if a not in taken)
        for index, draft in enumerate(drafts):
            if result[index] is not None:
                continue
            address = next(candidates, None)
            if address is None:
                result[index] = self.fail(draft.path, f"no free cluster IP left in "
                                                      f"cluster.service_cidr {cluster.service_cidr}")
            else:
                result[index] = address
        return [None if ip == HEADLESS else ip for ip in result]

    def allocate_node_ports(self, drafts: Sequence["_ServiceDraft"], kept: Sequence[model.Service],
                            previous: Mapping[str, model.Service]) -> list[Any]:
        """Node ports are unique per protocol across all services; missing ones are allocated
        from the bottom of the range, in file order, after every explicit one is placed.

        A port of a service in ``previous`` keeps its running node port while that is free, as
        cluster IPs do; those are placed before any allocation, so that a port listed earlier in
        the file cannot take the node port of one that stays.
        """
        taken: dict[tuple[str, int], str] = {}
        for service in kept:
            for port in service.ports:
                if port.node_port is not None:
                    taken[port.protocol, port.node_port] = f"service {service.key}"
        for draft in drafts:
            if not isinstance(draft.ports, list):
                continue
            for port in draft.ports:
                if isinstance(port.node_port, int):
                    binding = (port.protocol, port.node_port)
                    if binding in taken:
                        self.fail(_key(port.path, "node_port"),
                                  f"{port.protocol} node port {port.node_port} is already used "
                                  f"by {taken[binding]}")
                    else:
                        taken[binding] = port.path
        chosen: dict[str, int] = {}  # port path -> the running node port it keeps
        for draft in drafts:
            old = previous.get(draft.key or "")
            if old is None or draft.type != "NodePort" or not isinstance(draft.ports, list):
                continue
            for port in draft.ports:
                reuse = _previous_node_port(old, port) if port.node_port is None else None
                if reuse is not None and (port.protocol, reuse) not in taken:
                    chosen[port.path] = reuse
                    taken[port.protocol, reuse] = port.path
        low, high = model.NODE_PORT_RANGE
        result: list[Any] = []
        for draft in drafts:
            if not isinstance(draft.ports, list):
                result.append(INVALID)
                continue
            ports: list[model.ServicePort] = []
            for port in draft.ports:
                node_port = port.node_port
                if node_port is None and draft.type == "NodePort":
                    node_port = chosen.get(port.path)
                    if node_port is None:
                        node_port = next((n for n in range(low, high + 1)
                                          if (port.protocol, n) not in taken), None)
                        if node_port is None:
                            self.fail(port.path, f"no free {port.protocol} node port left")
                            break
                        taken[port.protocol, node_port] = port.path
                ports.append(model.ServicePort(name=port.name, protocol=port.protocol,
                                               port=port.number, target_port=port.target_port,
                                               node_port=node_port))
            else:
                result.append(tuple(ports))
                continue
            result.append(INVALID)
        return result


def _previous_node_port(old: model.Service, port: "_PortDraft") -> int | None:
    """The node port ``old`` gave the port ``port`` stands for, if it had one.

    A port is the same one when its name and protocol match, as Kubernetes matches them: the
    port number may change under a node port that clients outside know. A port whose name
    changed is still recognised by protocol and number.
    """
    by_name = next((p for p in old.ports if (p.name, p.protocol) == (port.name, port.protocol)),
                   None)
    if by_name is not None and by_name.node_port is not None:
        return by_name.node_port
    by_number = next((p for p in old.ports
                      if (p.protocol, p.port) == (port.protocol, port.number)), None)
    return by_number.node_port if by_number is not None else None


def _covering_network(networks: Sequence[IPv4Network]) -> IPv4Network | _Marker:
    """The smallest network that contains every one of ``networks``."""
    if not networks:
        return INVALID
    covering = networks[0]
    while not all(network.subnet_of(covering) for network in networks):
        covering = covering.supernet()
    return covering


def _netns_name_problem(name: str) -> str | None:
    if not name:
        return "must not be empty"
    if name in (".", "..") or "/" in name or "\0" in name:
        return f"{name!r} is not a usable namespace name (a file name under /run/netns)"
    if len(os.fsencode(name)) > NETNS_NAME_MAX:
        return f"is longer than {NETNS_NAME_MAX} bytes"
    if name.startswith(POD_NETNS_PREFIX):
        return (f"{name!r} starts with {POD_NETNS_PREFIX!r}, which vswitchd uses for pod "
                "namespaces; choose another name")
    return None


@dataclass(frozen=True)
class _PortDraft:
    path: str
    name: str
    protocol: str
    number: int
    target_port: int | str
    node_port: int | None


@dataclass(frozen=True)
class _ServiceDraft:
    """A service as written; fields are INVALID where they are wrong. ``cluster_ip`` is None when
    it is to be allocated and HEADLESS for a headless service."""

    path: str
    name: Any
    namespace: Any
    cluster_ip: Any
    type: Any
    ports: Any
    selector: Any
    endpoints: Any
    session_affinity: Any
    affinity_timeout: Any
    external_traffic_policy: Any
    internal_traffic_policy: Any
    external_ips: Any
    load_balancer: Any

    @property
    def key(self) -> str | None:
        if isinstance(self.name, str) and isinstance(self.namespace, str):
            return f"{self.namespace}/{self.name}"
        return None

    @property
    def valid(self) -> bool:
        return INVALID not in (self.name, self.namespace, self.cluster_ip, self.type, self.ports,
                               self.selector, self.endpoints, self.session_affinity,
                               self.affinity_timeout, self.external_traffic_policy,
                               self.internal_traffic_policy, self.external_ips,
                               self.load_balancer)


@dataclass(frozen=True)
class _ServiceContext:
    """What services are checked against. ``cluster`` is None when ``[cluster]`` is itself wrong
    (its error explains it, and checks against it are skipped); ``uplink`` is INVALID likewise."""

    cluster: model.Cluster | None
    uplink: model.Uplink | None | _Marker
    segments: tuple[tuple[str, IPv4Network], ...]
    node_addresses: Mapping[IPv4Address, str]

    @classmethod
    def of(cls, cluster: Any, uplink: Any, segments: Sequence[_SegmentDraft],
           host_address: Any) -> "_ServiceContext":
        addresses: dict[IPv4Address, str] = {}
        if isinstance(host_address, IPv4Address):
            addresses[host_address] = "host_port.address"
        if isinstance(uplink, model.Uplink):
            addresses[uplink.address.ip] = "uplink.address (the node address)"
            addresses[uplink.gateway] = "uplink.gateway"
        return cls(cluster=cluster if isinstance(cluster, model.Cluster) else None,
                   uplink=uplink,
                   segments=tuple((s.cidr_path, s.cidr) for s in segments
                                  if isinstance(s.cidr, IPv4Network)),
                   node_addresses=MappingProxyType(addresses))

    @classmethod
    def of_topology(cls, topology: Topology) -> "_ServiceContext":
        segments = [
            _SegmentDraft("node" if index == 0 else f"segments[{index - 1}]", segment.name,
                          segment.cidr, segment.gateway, segment.mtu, MappingProxyType({}))
            for index, segment in enumerate(topology.all_segments())
        ]
        return cls.of(runtime_cluster(topology), topology.uplink, segments,
                      topology.host_port.address.ip)

    def external_ip_problem(self, address: IPv4Address) -> str | None:
        """External IPs are addresses outside clients use; a pod's or the node's would be hijacked."""
        if address in self.node_addresses:
            return f"{address} is {self.node_addresses[address]}"
        for label, cidr in self.segments:
            if address in cidr:
                return f"{address} is inside {label} {cidr}: a pod or gateway address"
        cluster = self.cluster
        if cluster is not None:
            if address in cluster.cidr:
                return f"{address} is inside cluster.cidr {cluster.cidr}: a pod address"
            if address in cluster.service_cidr:
                return (f"{address} is inside cluster.service_cidr {cluster.service_cidr}; "
                        "an external IP is an address outside the cluster")
            if address == cluster.hairpin_address:
                return f"{address} is cluster.hairpin_address"
        return None


def runtime_cluster(topology: Topology) -> model.Cluster:
    """The topology's cluster settings; a topology built without them gets the loader's defaults."""
    if topology.cluster is not None:
        return topology.cluster
    networks = [segment.cidr for segment in topology.all_segments()]
    covering = _covering_network(networks)
    assert isinstance(covering, IPv4Network)
    return model.Cluster(cidr=covering, service_cidr=IPv4Network(model.DEFAULT_SERVICE_CIDR))


# -- changes to a running node ---------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """Pods and services to add to a running node, or to replace their namesakes with."""

    pods: tuple[Pod, ...] = ()
    services: tuple[model.Service, ...] = ()


def _document(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None


def parse_fragment(text: str, source: str, topology: Topology, *,
                   allowed: Sequence[str] = FRAGMENT_KEYS, replace: bool = True) -> Fragment:
    """Validate ``[[pods]]`` and ``[[services]]`` against the running ``topology``.

    With ``replace`` an entry named like a running pod or service replaces it (``apply``);
    without, such an entry is an error (``service add``). Either all of it is valid or nothing
    is returned, so a caller never applies half a file.
    """
    reader = _Reader()
    fragment = reader.read_fragment(_document(text, source), topology, allowed, replace)
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return fragment


def parse_pod(table: Any, topology: Topology, source: str = "pod add",
              path: str = "pod") -> Pod:
    """One pod table (as ``[[pods]]`` holds it) checked against the running node; a new name."""
    if not isinstance(table, dict):
        raise ConfigError(source, path, f"expected a table, got {_type_name(table)}")
    reader = _Reader()
    pods = reader.check_runtime_pods([reader.read_pod(table, path)], topology, replace=False)
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return pods[0]


def service_table(service: model.Service) -> dict[str, Any]:
    """A service written back as its ``[[services]]`` table, allocations made explicit."""
    table: dict[str, Any] = {
        "name": service.name,
        "namespace": service.namespace,
        "cluster_ip": str(service.cluster_ip) if service.cluster_ip is not None else HEADLESS,
        "type": service.type,
        "session_affinity": service.session_affinity,
        "affinity_timeout": service.affinity_timeout,
        "external_traffic_policy": service.external_traffic_policy,
        "internal_traffic_policy": service.internal_traffic_policy,
        "external_ips": [str(address) for address in service.external_ips],
        "load_balancer": service.load_balancer,
    }
    ports = []
    for port in service.ports:
        entry: dict[str, Any] = {"protocol": port.protocol, "port": port.port,
                                 "target_port": port.target_port}
        if port.name:
            entry["name"] = port.name
        if port.node_port is not None:
            entry["node_port"] = port.node_port
        ports.append(entry)
    table["ports"] = ports
    if service.selector is not None:
        table["selector"] = dict(service.selector)
    elif service.endpoints:
        table["endpoints"] = [str(address) for address in service.endpoints]
    return table


def _setting_value(key: str, text: str, path: str, source: str) -> Any:
    """A ``key=value`` word from the command line as the TOML value the loader expects."""
    if key == "affinity_timeout":
        try:
            return int(text)
        except ValueError:
            raise ConfigError(source, path, f"expected an integer, got {text!r}") from None
    if key == "selector":
        selector: dict[str, str] = {}
        for pair in filter(None, (part.strip() for part in text.split(","))):
            label, sep, value = pair.partition("=")
            if not sep:
                raise ConfigError(source, path, f"expected label=value pairs separated by ',', "
                                                f"got {pair!r}")
            selector[label.strip()] = value.strip()
        return selector
    if key == "endpoints":
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def update_service(service: model.Service, settings: Mapping[str, str], topology: Topology,
                   source: str = "service set") -> model.Service:
    """``service`` with ``settings`` (key -> text, as typed) applied, checked as a whole service.

    Giving a selector drops explicit endpoints and the other way round, since a service has one
    or the other; an empty selector or endpoint list removes it.
    """
    if not settings:
        raise ConfigError(source, "", f"nothing to set; settable: {', '.join(SERVICE_SETTABLE)}")
    table = service_table(service)
    for key, text in settings.items():
        path = _key("service", key)
        if key not in SERVICE_SETTABLE:
            raise ConfigError(source, path, f"cannot be changed with `service set`; settable: "
                                            f"{', '.join(SERVICE_SETTABLE)} (use `apply` for the "
                                            "rest)")
        if not isinstance(text, str):
            raise ConfigError(source, path, f"expected a string, got {_type_name(text)}")
        value = _setting_value(key, text, path, source)
        if key in ("selector", "endpoints"):
            table.pop("selector", None)
            table.pop("endpoints", None)
            if not value:
                continue
        table[key] = value
    reader = _Reader()
    context = _ServiceContext.of_topology(topology)
    draft = reader.read_service(table, "service", context)
    kept = [s for s in topology.services if s.key != service.key]
    services = reader.check_services([draft], context, kept, {service.key: service})
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return services[0]

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
# The switch and the control socket call the host port "host"; a pod of that name would be
# indistinguishable from it in traces, counters and `vswitchctl trace host ...`.
RESERVED_POD_NAMES = ("host",)

RESERVED_SECTIONS = ("cluster", "services", "uplink", "peers", "networks")

TOP_LEVEL_KEYS = ("node", "host_port", "dataplane", "control", "segments", "routes", "pods")
NODE_KEYS = ("name", "pod_cidr", "gateway", "mtu")
HOST_PORT_KEYS = ("enabled", "address")
DATAPLANE_KEYS = ("offloads", "fdb_aging", "mac_limit", "burst", "accel")
CONTROL_KEYS = ("socket", "state_dir")
SEGMENT_KEYS = ("name", "cidr", "gateway", "mtu")
ROUTE_KEYS = ("dst", "via")
POD_KEYS = ("name", "ip", "segment", "mtu", "labels", "ready", "containers")
CONTAINER_KEYS = ("name", "command", "env", "ports")
PORT_KEYS = ("name", "port", "protocol")

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


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and validate a topology file; ``Topology.source`` is ``path`` as given."""
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
    return parse_topology(text, source)


def parse_topology(text: str, source: str = "<string>") -> Topology:
    """Validate a topology given as TOML text; ``source`` names it in messages and in the model."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    reader = _Reader()
    topology = reader.read(document, source)
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

    def read(self, document: Mapping[str, Any], source: str) -> Topology | None:
        self.check_keys(document, "", TOP_LEVEL_KEYS)

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
        pod_ips = self.check_pod_addresses(drafts, segment_drafts)

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
        if socket is INVALID or state_dir is INVALID:
            return INVALID
        return Control(socket=socket, state_dir=state_dir)

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
                    _key(path, "name"), f"{name!r} is reserved: it names the node's host port"
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
        self, drafts: Sequence[_PodDraft], segments: Sequence[_SegmentDraft]
    ) -> list[IPv4Address | _Marker]:
        """Resolve each pod's segment, check explicit addresses, allocate the rest.

        One entry per draft. Each segment allocates on its own, in file order, from its own CIDR.
        """
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

            reserved = set(taken) | set(explicit)
            candidates = (a for a in allocation_order(cidr) if a not in reserved)
            for index in members[id(segment)]:
                draft = drafts[index]
                if draft.ip is not None:
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

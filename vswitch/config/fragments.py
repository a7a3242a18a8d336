"""Changes to a running node: ``vswitchctl apply FILE``, ``pod add`` and ``service set``.

Theory of operation: a change is checked against the running ``Topology`` instead of a whole
file. Only what comes and goes while the node runs may change (``FRAGMENT_KEYS``: pods,
services, namespaces and network policies); everything else needs a restart. Entries are read by the same section code as a
file, so a pod or service reads the same wherever it is written, and then checked against the
segments, pods and services that stay. An entry that replaces a running one of the same name
keeps that one's allocated address and node ports unless the change asks for others, so
re-applying an unchanged entry is no change at all. Either all of a change is valid or a
``ConfigError`` lists every mistake, so a caller never applies half of one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from vswitch import model
from vswitch.config.allocation import allocate_pod_addresses
from vswitch.config.errors import ConfigError
from vswitch.config.overlay import check_pod_mtu
from vswitch.config.namespaces import merge_namespaces, read_namespaces
from vswitch.config.pods import PodDraft, build_pod, read_pod, read_pods
from vswitch.config.policies import read_network_policies
from vswitch.config.reader import Reader, key_path, load_document, type_name
from vswitch.config.segments import running_segments
from vswitch.config.service_context import ServiceContext
from vswitch.config.services import HEADLESS, check_services, read_service, read_services
from vswitch.model import Pod, Topology

# What a runtime change (``vswitchctl apply``) may carry: the things that come and go while the
# node runs. Everything else needs a restart.
FRAGMENT_KEYS = ("pods", "services", "namespaces", "network_policies")
# The settings ``vswitchctl service set`` may change: the ones that do not move a frontend.
SERVICE_SETTABLE = ("session_affinity", "affinity_timeout", "external_traffic_policy",
                    "internal_traffic_policy", "load_balancer", "selector", "endpoints")


@dataclass(frozen=True)
class Fragment:
    """Pods, services, namespaces and network policies to add to a running node, or to replace
    their namesakes with."""

    pods: tuple[Pod, ...] = ()
    services: tuple[model.Service, ...] = ()
    namespaces: tuple[model.Namespace, ...] = ()  # only the ones the fragment declares
    network_policies: tuple[model.NetworkPolicy, ...] = ()


def parse_fragment(text: str, source: str, topology: Topology, *,
                   allowed: Sequence[str] = FRAGMENT_KEYS, replace: bool = True) -> Fragment:
    """Validate ``[[pods]]`` and ``[[services]]`` against the running ``topology``.

    With ``replace`` an entry named like a running pod or service replaces it (``apply``);
    without, such an entry is an error (``service add``). Either all of it is valid or nothing
    is returned, so a caller never applies half a file.
    """
    reader = Reader()
    fragment = read_fragment(reader, load_document(text, source), topology, allowed, replace)
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return fragment


def parse_pod(table: Any, topology: Topology, source: str = "pod add",
              path: str = "pod") -> Pod:
    """One pod table (as ``[[pods]]`` holds it) checked against the running node; a new name."""
    if not isinstance(table, dict):
        raise ConfigError(source, path, f"expected a table, got {type_name(table)}")
    reader = Reader()
    draft = read_pod(reader, table, path, topology.namespaces)
    pods = check_runtime_pods(reader, [draft], topology, replace=False)
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return pods[0]


def read_fragment(reader: Reader, document: Mapping[str, Any], topology: Topology,
                  allowed: Sequence[str], replace: bool) -> Fragment:
    for key in document:
        if key not in allowed:
            what = " and ".join(f"[[{k}]]" for k in allowed)
            reader.fail(key_path("", key), f"only {what} can be changed while the node runs; "
                                           "other sections need a restart")
    declared: tuple[model.Namespace, ...] = ()
    if "namespaces" in allowed and "namespaces" in document:
        declared = read_namespaces(reader, document, builtin=False)
    namespaces = merge_namespaces(topology.namespaces, declared)
    drafts = read_pods(reader, document, namespaces) if "pods" in allowed else []
    pods = check_runtime_pods(reader, drafts, topology, replace)
    context = ServiceContext.of_topology(topology)
    service_drafts = (read_services(reader, document, context, namespaces)
                      if "services" in allowed else [])
    keys = {draft.key for draft in service_drafts if draft.key}
    previous = {s.key: s for s in topology.services if s.key in keys} if replace else {}
    kept = [s for s in topology.services if s.key not in previous]
    services = check_services(reader, service_drafts, context, kept, previous, replace)
    policies: tuple[model.NetworkPolicy, ...] = ()
    if "network_policies" in allowed:
        policies = read_network_policies(reader, document, namespaces)
    return Fragment(pods=tuple(pods), services=tuple(services), namespaces=declared,
                    network_policies=policies)


def check_runtime_pods(reader: Reader, drafts: Sequence[PodDraft], topology: Topology,
                       replace: bool) -> list[Pod]:
    """Check pods against a running node: its segments, and the pods that stay.

    A pod that replaces one of the same name keeps that pod's address unless it asks for
    another (or another pod of the change asks for it explicitly), so re-applying an
    unchanged pod is no change at all.
    """
    existing = {pod.key: pod for pod in topology.pods}
    named = {draft.key for draft in drafts if draft.key is not None}
    if not replace:
        for draft in drafts:
            if draft.key is not None and draft.key in existing:
                reader.fail(key_path(draft.path, "name"), f"pod {draft.key!r} already exists")
    for draft in drafts:
        check_pod_mtu(reader, draft, topology.overlay)
    kept = [pod for pod in topology.pods if pod.key not in named]
    segments = running_segments(topology, kept)
    ips = allocate_pod_addresses(reader, drafts, segments, existing if replace else None)
    if reader.errors:
        return []
    pods = [build_pod(topology.node.name, draft, ip) for draft, ip in zip(drafts, ips)]
    taps = {pod.tap: f"pod {pod.key}" for pod in kept}
    for pod, draft in zip(pods, drafts):
        if pod.tap in taps:
            reader.fail(key_path(draft.path, "name"), f"the derived TAP name {pod.tap!r} collides "
                                                      f"with {taps[pod.tap]}; choose another name")
        taps[pod.tap] = draft.path
    return pods


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
        path = key_path("service", key)
        if key not in SERVICE_SETTABLE:
            raise ConfigError(source, path, f"cannot be changed with `service set`; settable: "
                                            f"{', '.join(SERVICE_SETTABLE)} (use `apply` for the "
                                            "rest)")
        if not isinstance(text, str):
            raise ConfigError(source, path, f"expected a string, got {type_name(text)}")
        value = _setting_value(key, text, path, source)
        if key in ("selector", "endpoints"):
            table.pop("selector", None)
            table.pop("endpoints", None)
            if not value:
                continue
        table[key] = value
    reader = Reader()
    context = ServiceContext.of_topology(topology)
    draft = read_service(reader, table, "service", context)
    kept = [s for s in topology.services if s.key != service.key]
    services = check_services(reader, [draft], context, kept, {service.key: service})
    if reader.errors:
        raise ConfigError.collected(source, reader.errors)
    return services[0]

"""Finding what a request names in the running node, for the handlers of several commands.

A name that does not exist is a ``ControlError`` that lists the names that do, so a person at a
terminal sees the choice at once. Lookups read the node's current desired state
(``ControlContext.current``), which runtime changes replace as a whole.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vswitch.control.command import ControlError

if TYPE_CHECKING:
    from vswitch.model import Pod, Service
    from vswitch.runtime.control import ControlContext


def pod(ctx: ControlContext, name: str) -> Pod:
    topology = ctx.current()
    try:
        return topology.pod(name)
    except KeyError:
        known = ", ".join(p.name for p in topology.pods) or "none"
        raise ControlError(f"no pod named {name!r}; pods: {known}") from None


def pod_row(ctx: ControlContext, pod: Pod) -> dict:
    """A pod as ``pods`` lists it: its settings, where it is plugged in, its containers."""
    return {
        "name": pod.name,
        "ip": str(pod.ip),
        "segment": pod.segment,
        "mtu": ctx.current().pod_mtu(pod),
        "mac": pod.mac,
        "netns": pod.netns,
        "netns_path": ctx.netns_path(pod.netns),
        "port": ctx.port_ids.get(pod.name),
        "device": pod.tap,
        "ready": pod.ready,
        "labels": dict(pod.labels),
        "containers": ctx.supervisor.info(pod.name),
    }


def service(ctx: ControlContext, name: str) -> Service:
    """A service by NAMESPACE/NAME, or by NAME alone when only one namespace has it."""
    services = ctx.current().services
    found = [s for s in services if s.key == name or ("/" not in name and s.name == name)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ControlError(f"{name!r} is ambiguous: {', '.join(s.key for s in found)}; "
                           "give NAMESPACE/NAME")
    known = ", ".join(s.key for s in services) or "none"
    raise ControlError(f"no service {name!r}; services: {known}")


def port_name(ctx: ControlContext, name: str) -> str:
    """``name`` if the switch has a port of that name (a pod, "host", "uplink")."""
    if name not in ctx.port_ids:
        known = ", ".join(sorted(ctx.port_ids)) or "none"
        raise ControlError(f"no port named {name!r}; ports: {known}")
    return name


def running_node(ctx: ControlContext) -> Any:
    """The node that runtime changes go to (``vswitch.runtime.daemon.NodeRuntime``)."""
    if ctx.node is None:
        raise ControlError("this daemon does not accept runtime changes")
    return ctx.node

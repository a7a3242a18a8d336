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


def pod(ctx: ControlContext, name: str, namespace: str | None = None) -> Pod:
    """The pod ``name`` of ``namespace``; without a namespace, NAMESPACE/NAME, or a NAME that only
    one namespace of the node has (as ``vswitchctl exec POD`` promises)."""
    pods = ctx.current().pods
    wanted = repr(name)
    if namespace is not None:
        found = [p for p in pods if p.namespace == namespace and p.name == name]
        wanted += f" in namespace {namespace!r}"
    elif "/" in name:
        found = [p for p in pods if f"{p.namespace}/{p.name}" == name]
    else:
        found = [p for p in pods if p.name == name]
    if len(found) == 1:
        return found[0]
    if found:
        choices = ", ".join(f"{p.namespace}/{p.name}" for p in found)
        raise ControlError(f"pod {name!r} is in several namespaces ({choices}); give the "
                           "namespace with -n NAMESPACE or as NAMESPACE/NAME")
    known = ", ".join(p.key for p in pods) or "none"
    raise ControlError(f"no pod named {wanted}; pods: {known}")


def namespace_filter(args: Any) -> Any:
    """Which namespace a listing keeps: ``args["namespace"]``, or None for all of them."""
    namespace = args.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise ControlError(f"argument 'namespace' must be a string, not {namespace!r}")
    return namespace


def pod_row(ctx: ControlContext, pod: Pod) -> dict:
    """A pod as ``pods`` lists it: its settings, where it is plugged in, its containers."""
    return {
        "name": pod.name,
        "namespace": pod.namespace,
        "ip": str(pod.ip),
        "segment": pod.segment,
        "mtu": ctx.current().pod_mtu(pod),
        "mac": pod.mac,
        "netns": pod.netns,
        "netns_path": ctx.netns_path(pod.netns),
        "port": ctx.port_ids.get(pod.key),
        "device": pod.tap,
        "ready": pod.ready,
        "labels": dict(pod.labels),
        "containers": ctx.supervisor.info(pod.key),
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

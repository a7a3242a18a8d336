"""Commands that change the node at runtime: ``pod add|del|ready|unready``,
``service add|del|set``, ``apply`` and ``reload``.

Every change is the same four steps, in ``change``: take the node's lock, so changes run one at
a time; validate the request against the node as it is now, with the config loader's own rules,
so a bad request changes nothing; mutate the node (namespaces, ports, containers, desired state);
program the core from the new desired state. The answer says what changed and carries the
core's summary of the re-programming. ``reload`` is the fifth change: the node's own ``reload``
(shared with SIGHUP) takes the lock and reads the file under it, so that of two reloads the later
one always sees the later file.

This module is imported by vswitchctl too, which must start fast: the config loader, which only
the daemon needs, is imported when a change runs.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from vswitch.control import lookup
from vswitch.control.client import CtlError, key_values
from vswitch.control.command import Args, ControlError, Group, Verb, command, require
from vswitch.control.rendering import format_cell

if TYPE_CHECKING:
    from vswitch.model import Service, Topology
    from vswitch.runtime.control import ControlContext

# A reload creates and removes namespaces, a few tens of milliseconds each, and may wait behind
# another change for the node's lock; a file with hundreds of new pods still fits in this.
RELOAD_TIMEOUT = 300.0

POD = Group("pod", "add, remove, ready or unready a pod")
SERVICE = Group("service", "add, remove or change services")


def config_loader() -> ModuleType:
    """The config loader, whose rules validate every change (see the module docstring)."""
    from vswitch import config

    return config


async def change(ctx: ControlContext, validate: Callable[[Topology], Any],
                 mutate: Callable[[Any, Any], Awaitable[dict]], *, program: bool = True) -> dict:
    """Lock, validate, mutate, program: one runtime change and its answer.

    ``validate`` gets the node's current desired state and returns what ``mutate`` (given the
    node and that) applies; a config error of the validation is the request's error. The
    answer is what ``mutate`` returns plus the core's ``program`` summary, unless ``mutate``
    programs itself (``program=False``).
    """
    node = lookup.running_node(ctx)
    config = config_loader()
    async with node.lock:
        try:
            target = validate(node.topology)
        except config.ConfigError as exc:
            raise ControlError(str(exc)) from None
        answer = await mutate(node, target)
        if program:
            answer["program"] = node.program()
    return answer


def render_change(result: Any) -> str:
    """A runtime change: what changed, then the core's re-programming summary."""
    if not isinstance(result, Mapping):
        return str(result)
    lines = []
    for key, value in result.items():
        if key == "program" and isinstance(value, Mapping):
            lines.append("program: " + format_cell(value))
        elif key == "pod" and isinstance(value, Mapping):
            lines.append(f"pod: {value.get('name')} {value.get('ip')} "
                         f"(segment {value.get('segment')}, port {value.get('port')})")
        elif isinstance(value, Mapping):
            lines.append(f"{key}: " + "; ".join(f"{k} {format_cell(v)}" for k, v in value.items()))
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            for item in value:
                lines.append(f"{key}: " + format_cell(item))
        else:
            lines.append(f"{key}: {format_cell(value)}")
    return "\n".join(lines)


def read_fragment(file: str) -> dict[str, str]:
    if file == "-":
        return {"toml": sys.stdin.read(), "source": "<stdin>"}
    try:
        with open(file, encoding="utf-8") as stream:
            return {"toml": stream.read(), "source": file}
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None


def _fragment_args(args: Args) -> tuple[str, str]:
    text = require(args, "toml", str, "the TOML text of the fragment")
    source = args.get("source", "<fragment>")
    if not isinstance(source, str):
        raise ControlError(f"argument 'source' must be a file name, not {source!r}")
    return text, source


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")


def _pod_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace",
                        help="the pod's namespace (default: the one namespace that has NAME)")
    parser.add_argument("name", help="NAME, or NAMESPACE/NAME")


def _pod_name_request(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"name": args.name, **extra}
    if args.namespace is not None:
        request["namespace"] = args.namespace
    return request


def _namespace_of(args: Args) -> str | None:
    namespace = args.get("namespace")
    return None if namespace is None else require(args, "namespace", str, "a namespace name")


def _service_name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="NAMESPACE/NAME, or NAME when it is unambiguous")


# -- pods -----------------------------------------------------------------------------------------


def _pod_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", help='default: "default"')
    parser.add_argument("--ip", help="default: allocated from the segment")
    parser.add_argument("--segment", help="default: the node's default segment")
    parser.add_argument("--mtu", type=int, help="default: the segment's")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--unready", action="store_true",
                        help="start not ready: it receives no service traffic")
    parser.add_argument("--container", action="append", default=[], metavar="NAME=COMMAND",
                        help="a container: its name and command line (split like a shell)")
    parser.add_argument("--port", action="append", default=[], metavar="NAME=PORT[/udp]",
                        help="a named port of the first container")


def _pod_table(args: argparse.Namespace) -> dict[str, Any]:
    """The pod as the table a ``[[pods]]`` entry would be; the daemon checks it like the loader."""
    table: dict[str, Any] = {"name": args.name}
    if args.namespace is not None:
        table["namespace"] = args.namespace
    if args.ip is not None:
        table["ip"] = args.ip
    if args.segment is not None:
        table["segment"] = args.segment
    if args.mtu is not None:
        table["mtu"] = args.mtu
    if args.label:
        table["labels"] = key_values(args.label, "--label")
    if args.unready:
        table["ready"] = False
    containers = []
    for name, command_line in key_values(args.container, "--container").items():
        try:
            argv = shlex.split(command_line)
        except ValueError as exc:
            raise CtlError(f"--container {name}: {exc}") from None
        containers.append({"name": name, "command": argv})
    if args.port:
        if not containers:
            raise CtlError("--port needs a --container to belong to")
        ports = []
        for name, spec in key_values(args.port, "--port").items():
            number, _, protocol = spec.partition("/")
            try:
                port: dict[str, Any] = {"name": name, "port": int(number)}
            except ValueError:
                raise CtlError(f"--port {name}: expected PORT[/udp], got {spec!r}") from None
            if protocol:
                port["protocol"] = protocol
            ports.append(port)
        containers[0]["ports"] = ports
    if containers:
        table["containers"] = containers
    return table


@command("pod_add", render_change,
         Verb("add", "create a pod now", _pod_add_arguments,
              lambda args: {"pod": _pod_table(args)}, group=POD))
async def pod_add(ctx: ControlContext, args: Args) -> dict:
    table = require(args, "pod", dict, "a pod table like [[pods]] holds")

    async def add(node: Any, pod: Any) -> dict:
        await node.add_pod(pod)
        return {"pod": lookup.pod_row(ctx, pod)}

    return await change(ctx,
                        lambda topology: config_loader().parse_pod(table, topology, "pod add"),
                        add)


@command("pod_del", render_change,
         Verb("del", "stop a pod's containers and remove it", _pod_name_argument,
              _pod_name_request, group=POD))
async def pod_del(ctx: ControlContext, args: Args) -> dict:
    name = require(args, "name", str, "a pod name")
    namespace = _namespace_of(args)

    async def remove(node: Any, pod: Any) -> dict:
        await node.remove_pod(pod.key)
        return {"removed": pod.key}

    return await change(ctx, lambda topology: lookup.pod(ctx, name, namespace), remove)


@command("pod_ready", render_change,
         Verb("ready", "let a pod receive service traffic", _pod_name_argument,
              lambda args: _pod_name_request(args, ready=True), group=POD),
         Verb("unready", "take a pod out of its services' endpoints", _pod_name_argument,
              lambda args: _pod_name_request(args, ready=False), group=POD))
async def pod_ready(ctx: ControlContext, args: Args) -> dict:
    name = require(args, "name", str, "a pod name")
    namespace = _namespace_of(args)
    ready = require(args, "ready", bool, "true or false")

    async def set_ready(node: Any, found: Any) -> dict:
        pod = node.set_ready(found.key, ready)
        return {"pod": pod.key, "ready": pod.ready}

    return await change(ctx, lambda topology: lookup.pod(ctx, name, namespace), set_ready)


# -- services -------------------------------------------------------------------------------------


def _service_summary(service: Service) -> dict:
    return {"service": service.key,
            "cluster_ip": str(service.cluster_ip) if service.cluster_ip is not None else None,
            "type": service.type,
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port,
                       "target_port": p.target_port, "node_port": p.node_port}
                      for p in service.ports]}


def _file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a TOML file with [[services]] entries; - for stdin")


@command("service_add", render_change,
         Verb("add", "add the [[services]] of a TOML file", _file_argument,
              lambda args: read_fragment(args.file), group=SERVICE))
async def service_add(ctx: ControlContext, args: Args) -> dict:
    text, source = _fragment_args(args)

    def validate(topology: Topology) -> tuple[Service, ...]:
        fragment = config_loader().parse_fragment(text, source, topology, allowed=("services",),
                                            replace=False)
        if not fragment.services:
            raise ControlError(f"{source}: no [[services]] to add")
        return fragment.services

    async def add(node: Any, services: tuple[Service, ...]) -> dict:
        node.put_services(services)
        return {"added": [_service_summary(s) for s in services]}

    return await change(ctx, validate, add)


@command("service_del", render_change,
         Verb("del", "remove a service", _service_name_argument,
              lambda args: {"name": args.name}, group=SERVICE))
async def service_del(ctx: ControlContext, args: Args) -> dict:
    name = require(args, "name", str, "a service name (NAMESPACE/NAME or NAME)")

    async def remove(node: Any, found: Service) -> dict:
        return {"removed": node.remove_service(found.key).key}

    return await change(ctx, lambda topology: lookup.service(ctx, name), remove)


def _service_set_arguments(parser: argparse.ArgumentParser) -> None:
    _service_name_argument(parser)
    parser.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                        help="session_affinity, affinity_timeout, external_traffic_policy, "
                             "internal_traffic_policy, load_balancer, selector (k=v,k2=v2), "
                             "endpoints (ip,ip)")


@command("service_set", render_change,
         Verb("set", "change a service's settings", _service_set_arguments,
              lambda args: {"name": args.name,
                            "settings": key_values(args.settings, "service set")},
              group=SERVICE))
async def service_set(ctx: ControlContext, args: Args) -> dict:
    name = require(args, "name", str, "a service name (NAMESPACE/NAME or NAME)")
    settings = require(args, "settings", dict, "an object of key: value text")

    def validate(topology: Topology) -> Service:
        return config_loader().update_service(lookup.service(ctx, name), settings, topology,
                                        "service set")

    async def replace(node: Any, service: Service) -> dict:
        node.put_services((service,))
        return {"service": _service_summary(service)}

    return await change(ctx, validate, replace)


# -- the node as a whole --------------------------------------------------------------------------


def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a TOML file; - for stdin")


@command("apply", render_change,
         Verb("apply", "add or replace the [[pods]], [[services]], [[namespaces]] and "
                       "[[network_policies]] of a TOML file",
              _apply_arguments, lambda args: read_fragment(args.file)))
async def apply(ctx: ControlContext, args: Args) -> dict:
    text, source = _fragment_args(args)

    async def apply_fragment(node: Any, fragment: Any) -> dict:
        return await node.apply(fragment.pods, fragment.services, fragment.namespaces,
                                fragment.network_policies)

    # NodeRuntime.apply programs once, after all its pods and services, and reports it.
    return await change(ctx,
                        lambda topology: config_loader().parse_fragment(text, source, topology),
                        apply_fragment, program=False)


def render_reload(result: Any) -> str:
    """The daemon's one-line summary, then the names behind each count."""
    if not isinstance(result, Mapping):
        return str(result)
    lines = [str(result.get("summary", "reload: done"))]
    for kind in ("pods", "services", "namespaces", "network_policies"):
        changes = result.get(kind)
        if not isinstance(changes, Mapping):
            continue
        for what, names in changes.items():
            if what != "unchanged" and isinstance(names, list) and names:
                lines.append(f"{kind} {what}: {', '.join(map(str, names))}")
    if isinstance(result.get("program"), Mapping):
        lines.append("program: " + format_cell(result["program"]))
    return "\n".join(lines)


@command("reload", render_reload,
         Verb("reload", "make the node what its configuration file says now (as SIGHUP); "
                        "pods and services not in the file are removed"),
         timeout=RELOAD_TIMEOUT)
async def reload(ctx: ControlContext, args: Args) -> dict:
    """What SIGHUP does, with the outcome as the answer: the daemon's configuration file
    becomes the node's desired state, or nothing changes and the error says why."""
    result = await lookup.running_node(ctx).reload()
    if not result.ok:
        raise ControlError(result.message)
    return result.details


COMMANDS = (pod_add, pod_del, pod_ready, service_add, service_del, service_set, apply, reload)

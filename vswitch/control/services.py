"""Commands that show services and connection tracking: services, endpoints, affinity,
conntrack, and ``conntrack flush``, which removes the tracked connections a filter matches.

The filter language is the core's (``vswitch.core.conntrack_filter``): the daemon checks the keys,
so vswitchctl only splits ``KEY=VALUE`` words.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from vswitch.control.client import EXIT_OK, Session, key_values
from vswitch.control import lookup
from vswitch.control.command import (Args, ControlError, Verb, command, namespace_arguments,
                                    namespace_request)
from vswitch.control.rendering import format_table, table_of
from vswitch.core import presentation

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext


def _service_ports(ports: Sequence[Mapping[str, Any]]) -> str:
    """``http:80/tcp->8080`` plus ``:30080`` for a node port, one per port."""
    parts = []
    for port in ports:
        text = f"{port.get('port')}/{port.get('protocol')}->{port.get('target_port')}"
        if port.get("name"):
            text = f"{port['name']}:{text}"
        if port.get("node_port") is not None:
            text += f" (node {port['node_port']})"
        parts.append(text)
    return ", ".join(parts) or "-"


def render_services(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    rows = []
    for service in result:
        affinity = service.get("affinity") or {}
        policies = service.get("policies") or {}
        mode = affinity.get("mode", "None") if isinstance(affinity, Mapping) else affinity
        rows.append({
            "name": f"{service.get('namespace', 'default')}/{service.get('name')}",
            "type": service.get("type"),
            "cluster_ip": service.get("cluster_ip") or "None",
            "ports": _service_ports(service.get("ports") or []),
            "endpoints": service.get("endpoints"),
            "affinity": (f"{mode} {affinity.get('timeout')}s" if mode == "ClientIP"
                         else mode),
            "policy": (f"ext={policies.get('external')},int={policies.get('internal')}"
                       if isinstance(policies, Mapping) and policies else None),
            "lb": service.get("load_balancer"),
            "external_ips": service.get("external_ips"),
        })
    return format_table(rows, [("name", "NAME"), ("type", "TYPE"), ("cluster_ip", "CLUSTER-IP"),
                               ("ports", "PORTS"), ("endpoints", "ENDPOINTS"),
                               ("affinity", "AFFINITY"), ("policy", "POLICY"), ("lb", "LB"),
                               ("external_ips", "EXTERNAL-IPS")])


@command("services", render_services,
         Verb("services", "services, their cluster IPs, ports and endpoint counts",
              namespace_arguments, namespace_request))
async def services(ctx: ControlContext, args: Args) -> list[dict]:
    namespace = lookup.namespace_filter(args)
    return [row for row in presentation.service_rows(ctx.switch)
            if namespace is None or row.get("namespace") == namespace]


@command("endpoints",
         table_of(("service", "port", "protocol", "service_port", "backend", "pod", "local")),
         Verb("endpoints", "each service port's ready backends"))
async def endpoints(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.endpoint_rows(ctx.switch)


@command("affinity",
         table_of(("service", "protocol", "port", "client", "backend", "pod", "expires_in")),
         Verb("affinity", "ClientIP session affinity: client -> backend"))
async def affinity(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.affinity_rows(ctx.switch, ctx.now())


# -- connection tracking --------------------------------------------------------------------------


def _filters(args: Args) -> dict[str, str]:
    filters = args.get("filters", {})
    if filters is None:
        return {}
    if not isinstance(filters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in filters.items()):
        raise ControlError("argument 'filters' must be an object of KEY: VALUE strings")
    return dict(filters)


def _endpoint_text(endpoint: Any) -> str | None:
    if isinstance(endpoint, Mapping):
        return f"{endpoint.get('ip')}:{endpoint.get('port')}"
    return None if endpoint is None else str(endpoint)


def render_conntrack(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(no entries)"
    rows = []
    for entry in result:
        labels = entry.get("labels") if isinstance(entry.get("labels"), Mapping) else {}
        state = entry.get("state") or ("REPLIED" if entry.get("replied") else "UNREPLIED")
        rows.append({
            "flow": entry.get("description"),
            "state": state,
            "dnat": _endpoint_text(entry.get("dnat")),
            "snat": _endpoint_text(entry.get("snat")),
            "service": labels.get("service"),
            "expires_in": entry.get("expires_in"),
        })
    return format_table(rows, [("flow", "FLOW"), ("state", "STATE"), ("dnat", "DNAT"),
                               ("snat", "SNAT"), ("service", "SERVICE"),
                               ("expires_in", "EXPIRES")])


def _conntrack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["flush"],
                        help="remove the matching entries instead of listing them")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="proto, src, dst, sport, dport, service or state; repeatable")


def _run_conntrack(session: Session, args: argparse.Namespace) -> int:
    """``conntrack`` lists, ``conntrack flush`` removes: one verb, two requests."""
    target = conntrack_flush if args.action == "flush" else conntrack
    payload = {"filters": key_values(args.filter, "--filter")}
    session.emit(session.call(target.name, payload, target.timeout), target.render)
    return EXIT_OK


@command("conntrack", render_conntrack,
         Verb("conntrack", "tracked connections; 'conntrack flush' removes them",
              _conntrack_arguments, run=_run_conntrack))
async def conntrack(ctx: ControlContext, args: Args) -> list[dict]:
    filters = _filters(args)
    try:
        return presentation.conntrack_rows(ctx.switch, ctx.now(), filters)
    except ValueError as exc:
        raise ControlError(str(exc)) from None


@command("conntrack_flush", lambda result: f"flushed {result.get('flushed', 0)} entries")
async def conntrack_flush(ctx: ControlContext, args: Args) -> dict:
    filters = _filters(args)
    try:
        return {"flushed": ctx.switch.programming.conntrack_flush(filters)}
    except ValueError as exc:
        raise ControlError(str(exc)) from None


COMMANDS = (services, endpoints, affinity, conntrack, conntrack_flush)

"""Commands that show the node: status, pods, ports, fdb, routes, neighbors, stats.

They only read: the switch's tables as ``vswitch.core.presentation`` turns them into rows, and
the node's desired state. Each answers at once.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import vswitch
from vswitch.control import lookup
from vswitch.control.command import (Args, Verb, command, namespace_arguments,
                                    namespace_request)
from vswitch.control.rendering import (format_pairs, format_table, is_number, render_rows,
                                       table_of)
from vswitch.core import presentation

if TYPE_CHECKING:
    from vswitch.runtime.control import ControlContext


@command("status", format_pairs, Verb("status", "daemon overview"))
async def status(ctx: ControlContext, args: Args) -> dict:
    topology = ctx.current()
    return {
        "node": ctx.topology.node.name,
        "version": vswitch.__version__,
        "pid": os.getpid(),
        "config": ctx.config_path or ctx.topology.source,
        "accel": ctx.switch.accel_name,
        "offloads": ctx.topology.dataplane.offloads,
        "pods": len(topology.pods),
        "services": len(topology.services),
        "uplink": str(topology.uplink.address) if topology.uplink is not None else None,
        "segments": len(topology.all_segments()),
        "static_routes": len(topology.routes),
        "ports": len(ctx.port_ids),
        "uptime_s": round(time.monotonic() - ctx.started, 3),
        "runtime_errors": ctx.errors.snapshot(),
        # The hot standby (vswitch.runtime.standby): its pid and state, or None when it is off.
        "standby": _standby(ctx),
    }


def _standby(ctx: ControlContext) -> dict | None:
    supervisor = getattr(ctx.node, "standby", None)
    return supervisor.status() if supervisor is not None else None


def render_pods(result: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for pod in result:
        containers = pod.get("containers") or []
        states = [f"{c.get('name', '?')}:{c.get('state', '?')}" for c in containers
                  if isinstance(c, Mapping)]
        rows.append({**pod, "containers": ",".join(states) or "-"})
    return format_table(rows, [("namespace", "NAMESPACE"), ("name", "NAME"), ("ip", "IP"),
                               ("segment", "SEGMENT"),
                               ("mac", "MAC"), ("netns", "NETNS"), ("port", "PORT"),
                               ("device", "DEVICE"), ("ready", "READY"),
                               ("containers", "CONTAINERS")])


@command("pods", render_pods, Verb("pods", "pods and their containers", namespace_arguments,
                                   namespace_request))
async def pods(ctx: ControlContext, args: Args) -> list[dict]:
    namespace = lookup.namespace_filter(args)
    return [lookup.pod_row(ctx, pod) for pod in ctx.current().pods
            if namespace is None or pod.namespace == namespace]


@command("ports", render_rows, Verb("ports", "switch ports"))
async def ports(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.port_rows(ctx.switch)


@command("fdb", render_rows, Verb("fdb", "learned MAC addresses"))
async def fdb(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.fdb_rows(ctx.switch, ctx.now())


@command("routes", table_of(("prefix", "kind", "segment", "via", "origin")),
         Verb("routes", "the router's table: connected and static routes"))
async def routes(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.route_rows(ctx.switch)


@command("neighbors", table_of(("segment", "ip", "mac", "state", "age_s", "queued")),
         Verb("neighbors", "next hops the router resolved (or is resolving) by ARP"))
async def neighbors(ctx: ControlContext, args: Args) -> list[dict]:
    return presentation.neighbor_rows(ctx.switch, ctx.now())


def _nonzero(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if not (is_number(value) and value == 0)}


def render_stats(result: Mapping[str, Any]) -> str:
    """Per-port traffic and drops, then per-stage counters, then dispositions."""
    sections = []
    ports = result.get("ports", {})
    if isinstance(ports, Mapping):
        port_rows = []
        for name, counters in ports.items():
            row: dict[str, Any] = {"port": name}
            for key, value in (counters.items() if isinstance(counters, Mapping) else []):
                # Drops by reason are a mapping; show only the reasons that happened.
                row[key] = _nonzero(value) if isinstance(value, Mapping) else value
            port_rows.append(row)
    else:
        port_rows = list(ports)
    sections.append("Ports\n" + (format_table(port_rows) if port_rows else "(none)"))

    stage_rows = []
    stages = result.get("stages", {})
    for stage, counters in (stages.items() if isinstance(stages, Mapping) else []):
        if isinstance(counters, Mapping):
            for counter, value in counters.items():
                if not (is_number(value) and value == 0):
                    stage_rows.append({"stage": stage, "counter": counter, "count": value})
        elif not (is_number(counters) and counters == 0):
            stage_rows.append({"stage": stage, "counter": "-", "count": counters})
    sections.append("Stages\n" + (format_table(stage_rows) if stage_rows else "(all zero)"))

    dispositions = result.get("dispositions", {})
    if isinstance(dispositions, Mapping):
        rows = [{"disposition": k, "packets": v} for k, v in dispositions.items()]
    else:
        rows = list(dispositions)
    sections.append("Dispositions\n" + (format_table(rows) if rows else "(none)"))

    # Other sections (flow cache, fdb, ...) are shown as they come; "descriptions" explains the
    # counter names and is left to --json, where a program can use it.
    scalars = {}
    for key, value in result.items():
        if key in ("ports", "stages", "dispositions", "descriptions"):
            continue
        if isinstance(value, Mapping):
            sections.append(f"{key.replace('_', ' ').capitalize()}\n{format_pairs(value)}")
        else:
            scalars[key] = value
    if scalars:
        sections.append(format_pairs(scalars))
    return "\n\n".join(sections)


@command("stats", render_stats, Verb("stats", "counters: ports, stages, dispositions"))
async def stats(ctx: ControlContext, args: Args) -> dict:
    return node_statistics(ctx.switch, ctx.node, ctx.control_counters)


def node_statistics(switch: Any, node: Any, control: Any = None) -> dict:
    """The switch's counters, the cluster membership's state when the node has a store, the
    cluster DNS server's counters when it serves, and the control socket's (``control``, the
    server's ``ControlCounters``) when given."""
    result = switch.statistics()
    if control is not None:
        result["control"] = control.snapshot()
    cluster = getattr(node, "cluster", None)
    membership = cluster.statistics() if cluster is not None else None
    if membership is not None:
        result["membership"] = membership
    dns = getattr(node, "dns", None)
    if dns is not None:
        result["dns"] = dns.statistics()
    return result


COMMANDS = (status, pods, ports, fdb, routes, neighbors, stats)

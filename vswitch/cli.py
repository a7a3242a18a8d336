"""Command-line entry points: ``vswitchd`` (the daemon) and ``vswitchctl`` (talks to it).

``python3 -m vswitch.cli vswitchd ...`` and ``python3 -m vswitch.cli vswitchctl ...`` run the same
code as the installed scripts, for checkouts that are not installed.

vswitchctl is deliberately synchronous and free of trio: it sends one request, prints one answer,
and must start fast enough to be used in shell loops.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import glob
import json
import logging
import os
import socket
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

from vswitch.wire.pcap import write_pcap
from vswitch.wire.summary import summarize

DEFAULT_SOCKET_DIR = "/run/vswitch"
CONNECT_TIMEOUT = 10.0  # seconds to wait for an answer to a request that does not wait itself
# A reload creates and removes namespaces, a few tens of milliseconds each, and may wait behind
# another change for the node's lock; a file with hundreds of new pods still fits in this.
RELOAD_TIMEOUT = 300.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_NOT_FOUND = 127


# ---------------------------------------------------------------------------------------------
# vswitchd


def _vswitchd_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vswitchd", description="Userspace virtual switch daemon for one node's pods.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--config", metavar="FILE", help="run with this topology")
    mode.add_argument("--check", metavar="FILE", help="validate a topology and exit")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"], help="default: info")
    return parser


def _leaf_exceptions(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaf_exceptions(inner)
    else:
        yield exc


def vswitchd_main(argv: Sequence[str] | None = None) -> int:
    args = _vswitchd_parser().parse_args(argv)
    from vswitch.config import ConfigError, load_topology

    path = args.check or args.config
    try:
        topology = load_topology(path)
    except ConfigError as exc:
        print(f"vswitchd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        parts = [f"{len(topology.pods)} pods"]
        segments, routes = len(topology.all_segments()), len(topology.routes)
        if segments > 1 or routes:
            parts += [f"{segments} segment{'s' * (segments != 1)}",
                      f"{routes} static route{'s' * (routes != 1)}"]
        if topology.services:
            count = len(topology.services)
            parts.append(f"{count} service{'s' * (count != 1)}")
        if topology.uplink is not None:
            parts.append(f"uplink {topology.uplink.address}")
        print(f"{path}: ok ({', '.join(parts)})")
        return EXIT_OK

    if os.geteuid() != 0:
        print("vswitchd: must run as root: it creates network namespaces and TAP devices "
              "(CAP_NET_ADMIN, CAP_SYS_ADMIN)", file=sys.stderr)
        return EXIT_FAILURE

    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)
    # --log-level debug is for vswitch's own decisions; pyroute2 at debug logs every netlink
    # message in full, which buries them.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    log = logging.getLogger("vswitchd")
    import trio

    from vswitch.runtime.control import ControlSocketBusy
    from vswitch.runtime.daemon import run_daemon
    from vswitch.runtime.journal import JournalError, NodeBusyError
    from vswitch.runtime.kernel import KernelError

    # Failures a person can act on from the message alone; anything else gets a traceback.
    operational = (ControlSocketBusy, NodeBusyError, JournalError, KernelError)

    try:
        trio.run(lambda: run_daemon(topology, config_path=os.path.abspath(path)))
    except KeyboardInterrupt:
        # Only reachable before the daemon installed its signal handling.
        return 130
    except BaseException as exc:
        leaves = list(_leaf_exceptions(exc))
        if leaves and all(isinstance(leaf, operational) for leaf in leaves):
            for leaf in leaves:
                print(f"vswitchd: {leaf}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(exc, SystemExit):
            raise
        log.critical("vswitchd failed", exc_info=exc)
        return EXIT_FAILURE
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# vswitchctl: talking to the daemon


class CtlError(Exception):
    """Something vswitchctl reports as ``vswitchctl: <message>`` with exit status 1."""


def discover_socket(explicit: str | None, environ: Mapping[str, str],
                    directory: str = DEFAULT_SOCKET_DIR) -> str:
    """--socket, else $VSWITCH_SOCKET, else the only control socket in the run directory."""
    if explicit:
        return explicit
    if environ.get("VSWITCH_SOCKET"):
        return environ["VSWITCH_SOCKET"]
    found = sorted(glob.glob(os.path.join(glob.escape(directory), "*.sock")))
    if not found:
        raise CtlError(f"no vswitchd running (no control socket in {directory})")
    if len(found) > 1:
        raise CtlError("several vswitchd control sockets; choose one with --socket or "
                       "VSWITCH_SOCKET: " + ", ".join(found))
    return found[0]


def request(path: str, cmd: str, args: Mapping[str, Any] | None = None,
            timeout: float = CONNECT_TIMEOUT) -> Any:
    """Send one request and return its result; an ``ok: false`` answer raises CtlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise CtlError(f"no vswitchd running (no socket at {path})") from None
        except ConnectionRefusedError:
            raise CtlError(f"vswitchd is not answering on {path} (stale socket?)") from None
        except PermissionError:
            raise CtlError(f"permission denied on {path} (the control socket is root's)") from None
        except OSError as exc:
            raise CtlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        line = json.dumps({"cmd": cmd, "args": dict(args or {})}).encode() + b"\n"
        try:
            sock.sendall(line)
            buffer = bytearray()
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise CtlError("vswitchd closed the connection without answering")
                buffer += chunk
        except socket.timeout:
            raise CtlError(f"no answer from vswitchd within {timeout:g} s") from None
        except OSError as exc:
            raise CtlError(f"talking to vswitchd: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(buffer[: buffer.index(b"\n")])
    except json.JSONDecodeError as exc:
        raise CtlError(f"unreadable answer from vswitchd: {exc}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise CtlError(f"unexpected answer from vswitchd: {response!r}")
    if not response["ok"]:
        raise CtlError(str(response.get("error", "unknown error")))
    return response.get("result")


# ---------------------------------------------------------------------------------------------
# vswitchctl: rendering


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={format_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(format_cell(v) for v in value) or "-"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Rows as an aligned text table; numbers right-aligned, text left-aligned.

    ``columns`` is a list of (key, HEADER); by default every key that occurs, in order of first
    appearance, so that a field added to the daemon's answer shows up without a change here.
    """
    if columns is None:
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        columns = [(key, key.upper()) for key in keys]
    if not columns:
        return ""
    cells = [[format_cell(row.get(key)) for key, _ in columns] for row in rows]
    # A column is numeric when it holds numbers and nothing else but gaps; one of only gaps
    # ("-") is text, so that it lines up under its header like its neighbours.
    numeric = [any(_is_number(row.get(key)) for row in rows)
               and all(_is_number(row.get(key)) or row.get(key) is None for row in rows)
               for key, _ in columns]
    widths = [max([len(header)] + [len(line[i]) for line in cells])
              for i, (_, header) in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = [value.rjust(width) if right else value.ljust(width)
                 for value, width, right in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [render([header for _, header in columns])]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def format_pairs(pairs: Mapping[str, Any]) -> str:
    width = max((len(key) for key in pairs), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {format_cell(value)}" for key, value in pairs.items())


def _named_rows(mapping: Mapping[str, Any], name_key: str) -> list[dict]:
    rows = []
    for name, value in mapping.items():
        row = {name_key: name}
        row.update(value if isinstance(value, Mapping) else {"value": value})
        rows.append(row)
    return rows


def render_status(result: Mapping[str, Any]) -> str:
    return format_pairs(result)


def render_pods(result: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for pod in result:
        containers = pod.get("containers") or []
        states = [f"{c.get('name', '?')}:{c.get('state', '?')}" for c in containers
                  if isinstance(c, Mapping)]
        rows.append({**pod, "containers": ",".join(states) or "-"})
    return format_table(rows, [("name", "NAME"), ("ip", "IP"), ("segment", "SEGMENT"),
                               ("mac", "MAC"), ("netns", "NETNS"), ("port", "PORT"),
                               ("device", "DEVICE"), ("ready", "READY"),
                               ("containers", "CONTAINERS")])


def _columns(rows: Sequence[Mapping[str, Any]], preferred: Sequence[str]) -> list[tuple[str, str]]:
    """``preferred`` first, in that order, then any other key the daemon sent, so that a field
    the core adds later still shows."""
    keys: dict[str, None] = dict.fromkeys(preferred)
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [(key, key.upper()) for key in keys]


ROUTE_COLUMNS = ("prefix", "kind", "segment", "via", "origin")
NEIGHBOR_COLUMNS = ("segment", "ip", "mac", "state", "age_s", "queued")


def render_routes(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    return format_table(result, _columns(result, ROUTE_COLUMNS))


def render_neighbors(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    return format_table(result, _columns(result, NEIGHBOR_COLUMNS))


def render_rows(result: Any) -> str:
    if isinstance(result, Mapping):
        result = _named_rows(result, "name")
    if not result:
        return "(none)"
    return format_table(result)


def _nonzero(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if not (_is_number(value) and value == 0)}


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
                if not (_is_number(value) and value == 0):
                    stage_rows.append({"stage": stage, "counter": counter, "count": value})
        elif not (_is_number(counters) and counters == 0):
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


ENDPOINT_COLUMNS = ("service", "port", "protocol", "service_port", "backend", "pod", "local")
AFFINITY_COLUMNS = ("service", "protocol", "port", "client", "backend", "pod", "expires_in")


def render_endpoints(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    return format_table(result, _columns(result, ENDPOINT_COLUMNS))


def render_affinity(result: Sequence[Mapping[str, Any]]) -> str:
    if not result:
        return "(none)"
    return format_table(result, _columns(result, AFFINITY_COLUMNS))


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


def render_reload(result: Any) -> str:
    """The daemon's one-line summary, then the names behind each count."""
    if not isinstance(result, Mapping):
        return str(result)
    lines = [str(result.get("summary", "reload: done"))]
    for kind in ("pods", "services"):
        changes = result.get(kind)
        if not isinstance(changes, Mapping):
            continue
        for what, names in changes.items():
            if what != "unchanged" and isinstance(names, list) and names:
                lines.append(f"{kind} {what}: {', '.join(map(str, names))}")
    if isinstance(result.get("program"), Mapping):
        lines.append("program: " + format_cell(result["program"]))
    return "\n".join(lines)


def render_traces(result: Any) -> str:
    traces = result if isinstance(result, list) else [result]
    return "\n\n".join(str(trace.get("text", json.dumps(trace, indent=2)))
                       if isinstance(trace, Mapping) else str(trace) for trace in traces)


# ---------------------------------------------------------------------------------------------
# vswitchctl: commands


def _vswitchctl_parser() -> argparse.ArgumentParser:
    # --json and --socket are accepted before and after the command: each subparser has them too,
    # with SUPPRESS defaults so that a value given before the command is not reset after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="control socket (default: $VSWITCH_SOCKET, else the only one in "
                             f"{DEFAULT_SOCKET_DIR})")

    parser = argparse.ArgumentParser(prog="vswitchctl", parents=[common],
                                     description="Query and operate a running vswitchd.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in [("status", "daemon overview"), ("pods", "pods and their containers"),
                       ("ports", "switch ports"), ("fdb", "learned MAC addresses"),
                       ("routes", "the router's table: connected and static routes"),
                       ("neighbors", "next hops the router resolved (or is resolving) by ARP"),
                       ("stats", "counters: ports, stages, dispositions")]:
        commands.add_parser(name, parents=[common], help=text)

    trace = commands.add_parser("trace", parents=[common],
                                help="trace a described packet, or the next real packets of a pod")
    trace.add_argument("pod", help="the port (pod name, or 'host') the packet enters on")
    trace.add_argument("packet", nargs="?", help="packet description, e.g. 'udp 10.244.1.3:53'")
    trace.add_argument("--count", type=int, help="trace the next N real packets instead")
    trace.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for --count packets (default 10)")

    capture = commands.add_parser("capture", parents=[common],
                                  help="capture the next frames a port receives and sends")
    capture.add_argument("pod", help="the port (pod name, 'host' or 'uplink')")
    capture.add_argument("-c", "--count", type=int, default=10,
                         help="frames to capture (default 10, at most 1000)")
    capture.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for them (default 10)")
    capture.add_argument("--direction", choices=("rx", "tx", "both"), default="both",
                         help="frames the port receives (rx), sends (tx) or both (default)")
    capture.add_argument("--snaplen", type=int, default=65535,
                         help="bytes kept of each frame (default 65535)")
    capture.add_argument("-w", "--write", metavar="FILE",
                         help="write a pcap file (tcpdump, Wireshark) instead of printing")

    for name, text in [("services", "services, their cluster IPs, ports and endpoint counts"),
                       ("endpoints", "each service port's ready backends"),
                       ("affinity", "ClientIP session affinity: client -> backend")]:
        commands.add_parser(name, parents=[common], help=text)

    conntrack = commands.add_parser("conntrack", parents=[common],
                                    help="tracked connections; 'conntrack flush' removes them")
    conntrack.add_argument("action", nargs="?", choices=["flush"],
                           help="remove the matching entries instead of listing them")
    conntrack.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                           help="proto, src, dst, sport, dport, service or state; repeatable")

    pod = commands.add_parser("pod", parents=[common], help="add, remove, ready or unready a pod")
    pod_commands = pod.add_subparsers(dest="pod_command", required=True, metavar="ACTION")
    pod_add = pod_commands.add_parser("add", parents=[common], help="create a pod now")
    pod_add.add_argument("name")
    pod_add.add_argument("--ip", help="default: allocated from the segment")
    pod_add.add_argument("--segment", help="default: the node's default segment")
    pod_add.add_argument("--mtu", type=int, help="default: the segment's")
    pod_add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    pod_add.add_argument("--unready", action="store_true",
                         help="start not ready: it receives no service traffic")
    pod_add.add_argument("--container", action="append", default=[], metavar="NAME=COMMAND",
                         help="a container: its name and command line (split like a shell)")
    pod_add.add_argument("--port", action="append", default=[], metavar="NAME=PORT[/udp]",
                         help="a named port of the first container")
    for action, text in [("del", "stop a pod's containers and remove it"),
                         ("ready", "let a pod receive service traffic"),
                         ("unready", "take a pod out of its services' endpoints")]:
        pod_commands.add_parser(action, parents=[common], help=text).add_argument("name")

    service = commands.add_parser("service", parents=[common], help="add, remove or change services")
    service_commands = service.add_subparsers(dest="service_command", required=True,
                                              metavar="ACTION")
    service_add = service_commands.add_parser("add", parents=[common],
                                              help="add the [[services]] of a TOML file")
    service_add.add_argument("file", help="a TOML file with [[services]] entries; - for stdin")
    service_del = service_commands.add_parser("del", parents=[common], help="remove a service")
    service_del.add_argument("name", help="NAMESPACE/NAME, or NAME when it is unambiguous")
    service_set = service_commands.add_parser("set", parents=[common],
                                              help="change a service's settings")
    service_set.add_argument("name", help="NAMESPACE/NAME, or NAME when it is unambiguous")
    service_set.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                             help="session_affinity, affinity_timeout, external_traffic_policy, "
                                  "internal_traffic_policy, load_balancer, selector (k=v,k2=v2), "
                                  "endpoints (ip,ip)")

    apply = commands.add_parser("apply", parents=[common],
                                help="add or replace the [[pods]] and [[services]] of a TOML file")
    apply.add_argument("file", help="a TOML file; - for stdin")

    commands.add_parser("reload", parents=[common],
                        help="make the node what its configuration file says now (as SIGHUP); "
                             "pods and services not in the file are removed")

    exec_ = commands.add_parser("exec", parents=[common],
                                help="run a command in a pod's network namespace")
    exec_.add_argument("pod")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    clean = commands.add_parser("clean", parents=[common],
                                help="remove a node's leftover namespaces and TAPs (no daemon needed)")
    source = clean.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="the node's topology")
    source.add_argument("--node", metavar="NAME", help="the node name")
    clean.add_argument("--state-dir", metavar="DIR", help="default: the topology's, else "
                                                          f"{DEFAULT_SOCKET_DIR}")
    return parser


def _emit(result: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))


def _cmd_capture(path: str, args: argparse.Namespace, as_json: bool) -> int:
    payload = {"port": args.pod, "count": args.count, "timeout": args.timeout,
               "direction": args.direction, "snaplen": args.snaplen}
    records = request(path, "capture", payload, timeout=args.timeout + CONNECT_TIMEOUT)
    frames = [(r["time"], r["length"], base64.b64decode(r["data"])) for r in records]
    if args.write:
        try:
            with open(args.write, "wb") as out:
                write_pcap(out, frames, args.snaplen)
        except OSError as exc:
            raise CtlError(f"cannot write {args.write}: {exc.strerror}") from None
        print(f"{len(frames)} frames from {args.pod} written to {args.write}", file=sys.stderr)
    elif as_json:
        _emit(records, True, render_rows)
    else:
        for (when, length, data), record in zip(frames, records):
            stamp = datetime.datetime.fromtimestamp(when).strftime("%H:%M:%S.%f")
            print(f"{stamp} {record['direction']} {summarize(data, length)}")
    if not frames:
        print(f"no frames on {args.pod} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_exec(path: str, args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CtlError("exec needs a command: vswitchctl exec POD -- CMD [ARG...]")
    netns_path = request(path, "netns", {"pod": args.pod})["netns_path"]
    from vswitch.runtime.netns import enter_netns

    try:
        enter_netns(netns_path)
    except OSError as exc:
        raise CtlError(f"cannot enter {netns_path}: {exc.strerror or exc}") from None
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"vswitchctl: exec: {argv[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"vswitchctl: exec: {argv[0]}: permission denied", file=sys.stderr)
        return 126
    return EXIT_FAILURE  # not reached: execvp returns only by raising


def _cmd_clean(args: argparse.Namespace, as_json: bool) -> int:
    from vswitch.runtime.kernel import clean_node

    topology = None
    if args.config:
        from vswitch.config import ConfigError, load_topology

        try:
            topology = load_topology(args.config)
        except ConfigError as exc:
            print(f"vswitchctl: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        node = topology.node.name
        state_dir = args.state_dir or topology.control.state_dir
    else:
        node = args.node
        state_dir = args.state_dir or DEFAULT_SOCKET_DIR
    from vswitch.runtime.journal import JournalError, NodeBusyError

    try:
        removed = clean_node(node, state_dir, topology)
    except (NodeBusyError, JournalError) as exc:
        raise CtlError(f"clean: {exc}") from None
    except PermissionError as exc:
        raise CtlError(f"clean: {exc} (clean needs root)") from None
    if as_json:
        print(json.dumps(removed, indent=2))
    elif removed:
        print("\n".join(f"removed {item}" for item in removed))
    else:
        print(f"nothing to clean for node {node}")
    return EXIT_OK


def _pairs(words: Sequence[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` words as a dict; the value may itself hold '=' (a selector does)."""
    result: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise CtlError(f"{what}: expected KEY=VALUE, got {word!r}")
        result[key] = value
    return result


def _read_fragment(file: str) -> dict[str, str]:
    if file == "-":
        return {"toml": sys.stdin.read(), "source": "<stdin>"}
    try:
        with open(file, encoding="utf-8") as stream:
            return {"toml": stream.read(), "source": file}
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"cannot read {file}: {getattr(exc, 'strerror', None) or exc}") from None


def _pod_table(args: argparse.Namespace) -> dict[str, Any]:
    """The pod as the table a ``[[pods]]`` entry would be; the daemon checks it like the loader."""
    import shlex

    table: dict[str, Any] = {"name": args.name}
    if args.ip is not None:
        table["ip"] = args.ip
    if args.segment is not None:
        table["segment"] = args.segment
    if args.mtu is not None:
        table["mtu"] = args.mtu
    if args.label:
        table["labels"] = _pairs(args.label, "--label")
    if args.unready:
        table["ready"] = False
    containers = []
    for name, command in _pairs(args.container, "--container").items():
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise CtlError(f"--container {name}: {exc}") from None
        containers.append({"name": name, "command": argv})
    if args.port:
        if not containers:
            raise CtlError("--port needs a --container to belong to")
        ports = []
        for name, spec in _pairs(args.port, "--port").items():
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


def _change_request(args: argparse.Namespace) -> tuple[str, dict[str, Any], Callable[[Any], str]]:
    """The control request for a command that changes the node (or flushes conntrack)."""
    if args.command == "conntrack":
        filters = _pairs(args.filter, "--filter")
        if args.action == "flush":
            return "conntrack_flush", {"filters": filters}, \
                lambda result: f"flushed {result.get('flushed', 0)} entries"
        return "conntrack", {"filters": filters}, render_conntrack
    if args.command == "apply":
        return "apply", _read_fragment(args.file), render_change
    if args.command == "pod":
        action = args.pod_command
        if action == "add":
            return "pod_add", {"pod": _pod_table(args)}, render_change
        if action == "del":
            return "pod_del", {"name": args.name}, render_change
        return "pod_ready", {"name": args.name, "ready": action == "ready"}, render_change
    action = args.service_command
    if action == "add":
        return "service_add", _read_fragment(args.file), render_change
    if action == "del":
        return "service_del", {"name": args.name}, render_change
    return ("service_set", {"name": args.name, "settings": _pairs(args.settings, "service set")},
            render_change)


def vswitchctl_main(argv: Sequence[str] | None = None,
                    environ: Mapping[str, str] | None = None,
                    socket_dir: str = DEFAULT_SOCKET_DIR) -> int:
    args = _vswitchctl_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    environ = os.environ if environ is None else environ
    try:
        if args.command == "clean":
            return _cmd_clean(args, as_json)
        path = discover_socket(getattr(args, "socket", None), environ, socket_dir)
        if args.command == "exec":
            return _cmd_exec(path, args)
        if args.command == "trace":
            if (args.packet is None) == (args.count is None):
                raise CtlError("trace needs either a PACKET or --count N")
            if args.packet is not None:
                result = request(path, "trace", {"port": args.pod, "packet": args.packet})
            else:
                result = request(path, "trace",
                                 {"port": args.pod, "count": args.count, "timeout": args.timeout},
                                 timeout=args.timeout + CONNECT_TIMEOUT)
                if not result and not as_json:
                    print(f"no packets from {args.pod} within {args.timeout:g} s", file=sys.stderr)
                    return EXIT_FAILURE
            _emit(result, as_json, render_traces)
            return EXIT_OK
        if args.command == "capture":
            return _cmd_capture(path, args, as_json)
        if args.command == "reload":
            _emit(request(path, "reload", timeout=RELOAD_TIMEOUT), as_json, render_reload)
            return EXIT_OK
        if args.command in ("pod", "service", "apply", "conntrack"):
            cmd, payload, render = _change_request(args)
            _emit(request(path, cmd, payload), as_json, render)
            return EXIT_OK
        renderers: dict[str, Callable[[Any], str]] = {
            "status": render_status, "pods": render_pods, "ports": render_rows,
            "fdb": render_rows, "routes": render_routes, "neighbors": render_neighbors,
            "stats": render_stats, "services": render_services, "endpoints": render_endpoints,
            "affinity": render_affinity,
        }
        _emit(request(path, args.command), as_json, renderers[args.command])
        return EXIT_OK
    except CtlError as exc:
        print(f"vswitchctl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # Output piped into `head`: the reader is gone, and so is the point of printing.
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    programs = {"vswitchd": vswitchd_main, "vswitchctl": vswitchctl_main}
    if not argv or argv[0] not in programs:
        print("usage: python3 -m vswitch.cli {vswitchd|vswitchctl} ...", file=sys.stderr)
        return EXIT_CONFIG
    return programs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())

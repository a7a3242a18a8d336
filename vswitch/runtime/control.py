"""The control socket that vswitchctl talks to: one JSON object per line, each way.

Protocol
--------
A client connects to the Unix stream socket and sends requests, one per line::

    {"cmd": "status", "args": {}}

and gets one line back for each, in order::

    {"ok": true, "result": ...}        or        {"ok": false, "error": "message"}

A connection may carry any number of requests; the server answers until the client closes. A bad
request (not JSON, not an object, unknown command, wrong arguments) gets ``ok: false`` and the
connection stays usable; nothing a client sends can stop the server. A line longer than
``MAX_LINE`` is answered with an error and the connection is closed, because the rest of the
stream can no longer be framed.

Commands run in the daemon's trio thread, between batches, so they read the switch without locks.
Commands that change the node (``pod_add``, ``service_set``, ``apply`` ...) validate their input
with the config loader's own rules against the node as it is now, and change nothing unless all
of it is valid; they then run one at a time under the node's lock, and answer with what changed
and the core's summary of the re-programming. ``reload`` re-reads the daemon's configuration
file and makes the node match it, exactly as SIGHUP does; its answer is the summary of the changes.
The socket is mode 0600: whoever can talk to it can trace any pod's traffic and enter any pod's
namespace, which is root's business.
"""
from __future__ import annotations

import base64

import json
import logging
import math
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import trio

import vswitch
from vswitch import config
from vswitch.model import Pod, Service, Topology
from vswitch.runtime.ports import RuntimeErrors

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
MAX_CAPTURE = 1000  # frames per capture request: an answer of at most ~90 MB of base64
TRACE_POLL_INTERVAL = 0.05
MAX_TRACE_COUNT = 1000
MAX_TRACE_TIMEOUT = 300.0
DEFAULT_TRACE_TIMEOUT = 10.0
LINGER = 1.0  # seconds an overlong request is drained before its connection is closed


class ControlError(Exception):
    """A request the daemon cannot serve; the message goes back to the client as is."""


class ControlSocketBusy(Exception):
    """Another daemon already answers on our control socket; starting a second one would fight it."""


@dataclass(frozen=True)
class ControlContext:
    """What the commands need to see of the running daemon."""

    topology: Topology
    switch: Any
    supervisor: Any
    netns_path: Callable[[str], str]
    port_ids: Mapping[str, int]  # pod name (or "host") -> switch port id
    config_path: str = ""
    started: float = field(default_factory=time.monotonic)
    errors: RuntimeErrors = field(default_factory=RuntimeErrors)
    # The running node (vswitch.runtime.daemon.NodeRuntime): current desired state and the means
    # to change it. None: a read-only context, where ``topology`` is the state.
    node: Any = None

    def current(self) -> Topology:
        return self.node.topology if self.node is not None else self.topology


def _require(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if name not in args:
        raise ControlError(f"missing argument {name!r} ({what})")
    value = args[name]
    # bool is an int in Python; a count of "true" is a client bug worth reporting.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ControlError(f"argument {name!r} must be {what}, not {value!r}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class ControlCommands:
    """The command table: one method per command, each returning a JSON-able result."""

    def __init__(self, context: ControlContext) -> None:
        self.context = context
        self._table: dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = {
            "status": self.status,
            "pods": self.pods,
            "ports": self.ports,
            "fdb": self.fdb,
            "routes": self.routes,
            "neighbors": self.neighbors,
            "stats": self.stats,
            "trace": self.trace,
            "capture": self.capture,
            "netns": self.netns,
            "services": self.services,
            "endpoints": self.endpoints,
            "affinity": self.affinity,
            "conntrack": self.conntrack,
            "conntrack_flush": self.conntrack_flush,
            "pod_add": self.pod_add,
            "pod_del": self.pod_del,
            "pod_ready": self.pod_ready,
            "service_add": self.service_add,
            "service_del": self.service_del,
            "service_set": self.service_set,
            "apply": self.apply,
            "reload": self.reload,
        }

    @property
    def names(self) -> list[str]:
        return sorted(self._table)

    async def dispatch(self, request: Any) -> Any:
        if not isinstance(request, dict):
            raise ControlError("a request must be a JSON object like {\"cmd\": \"status\"}")
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            raise ControlError("the request has no \"cmd\" string")
        args = request.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ControlError("\"args\" must be a JSON object")
        handler = self._table.get(cmd)
        if handler is None:
            raise ControlError(f"unknown command {cmd!r}; known: {', '.join(self.names)}")
        return await handler(args)

    async def status(self, args: Mapping[str, Any]) -> dict:
        ctx = self.context
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
        }

    def _pod_row(self, pod: Pod) -> dict:
        ctx = self.context
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

    async def pods(self, args: Mapping[str, Any]) -> list[dict]:
        return [self._pod_row(pod) for pod in self.context.current().pods]

    async def ports(self, args: Mapping[str, Any]) -> list[dict]:
        return self.context.switch.ports_info()

    async def fdb(self, args: Mapping[str, Any]) -> list[dict]:
        return self.context.switch.fdb_info(time.monotonic())

    async def routes(self, args: Mapping[str, Any]) -> list[dict]:
        """The router's table: rows with prefix, kind (connected/static), segment, via, origin."""
        return self.context.switch.routes_info()

    async def neighbors(self, args: Mapping[str, Any]) -> list[dict]:
        """Resolved and pending next hops: segment, ip, mac, state, age_s, queued."""
        return self.context.switch.neighbors_info(time.monotonic())

    async def stats(self, args: Mapping[str, Any]) -> dict:
        return self.context.switch.statistics()

    async def trace(self, args: Mapping[str, Any]) -> Any:
        switch = self.context.switch
        port = _require(args, "port", str, "a port name")
        if port not in self.context.port_ids:
            known = ", ".join(sorted(self.context.port_ids)) or "none"
            raise ControlError(f"no port named {port!r}; ports: {known}")
        if "packet" in args:
            if "count" in args:
                raise ControlError("give either 'packet' (trace one synthetic packet) or "
                                   "'count' (trace real packets), not both")
            packet = _require(args, "packet", str, "a packet description")
            try:
                return switch.trace(port, packet, time.monotonic())
            except ValueError as exc:
                raise ControlError(f"bad packet: {exc}") from None
        if "count" not in args:
            raise ControlError("trace needs 'packet' or 'count'")
        count = _require(args, "count", int, f"an integer from 1 to {MAX_TRACE_COUNT}")
        if not 1 <= count <= MAX_TRACE_COUNT:
            raise ControlError(f"argument 'count' must be from 1 to {MAX_TRACE_COUNT}, not {count}")
        timeout = args.get("timeout", DEFAULT_TRACE_TIMEOUT)
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout) or not 0 < timeout <= MAX_TRACE_TIMEOUT):
            raise ControlError(f"argument 'timeout' must be seconds in (0, {MAX_TRACE_TIMEOUT:g}],"
                               f" not {timeout!r}")
        switch.arm_trace(port, count)
        traces: list[dict] = []
        # Polling keeps the core free of callbacks into the shell; 50 ms is well below what a
        # person at a terminal notices and costs nothing between batches.
        with trio.move_on_after(timeout):
            while True:
                traces.extend(switch.take_traces(port))
                if len(traces) >= count:
                    break
                await trio.sleep(TRACE_POLL_INTERVAL)
        if len(traces) < count:
            # Stop collecting for a client that is no longer waiting.
            switch.disarm_trace(port)
        return traces[:count]

    async def capture(self, args: Mapping[str, Any]) -> list[dict]:
        """The next ``count`` frames a port receives and/or sends, base64 in the answer; the
        client writes the pcap file. Times are wall-clock seconds."""
        switch = self.context.switch
        port = _require(args, "port", str, "a port name")
        if port not in self.context.port_ids:
            known = ", ".join(sorted(self.context.port_ids)) or "none"
            raise ControlError(f"no port named {port!r}; ports: {known}")
        count = args.get("count", 10)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CAPTURE:
            raise ControlError(f"argument 'count' must be from 1 to {MAX_CAPTURE}, not {count!r}")
        timeout = args.get("timeout", DEFAULT_TRACE_TIMEOUT)
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout) or not 0 < timeout <= MAX_TRACE_TIMEOUT):
            raise ControlError(f"argument 'timeout' must be seconds in (0, {MAX_TRACE_TIMEOUT:g}],"
                               f" not {timeout!r}")
        try:
            switch.arm_capture(port, count, args.get("direction", "both"),
                               args.get("snaplen", 65535))
        except (TypeError, ValueError) as exc:
            raise ControlError(str(exc)) from None
        records: list[dict] = []
        with trio.move_on_after(timeout):
            while len(records) < count:
                records.extend(switch.take_capture(port))
                if len(records) >= count:
                    break
                await trio.sleep(TRACE_POLL_INTERVAL)
        records.extend(switch.take_capture(port))
        switch.disarm_capture(port)
        # The core keeps monotonic time; a pcap file wants the wall clock.
        offset = time.time() - time.monotonic()
        return [{"time": r["time"] + offset, "direction": r["direction"], "length": r["length"],
                 "data": base64.b64encode(r["data"]).decode("ascii")} for r in records[:count]]

    async def netns(self, args: Mapping[str, Any]) -> dict:
        pod = self._pod(_require(args, "pod", str, "a pod name"))
        return {"pod": pod.name, "netns": pod.netns, "netns_path": self.context.netns_path(pod.netns)}

    def _pod(self, name: str) -> Pod:
        topology = self.context.current()
        try:
            return topology.pod(name)
        except KeyError:
            known = ", ".join(p.name for p in topology.pods) or "none"
            raise ControlError(f"no pod named {name!r}; pods: {known}") from None

    # -- services and connection tracking -----------------------------------------------------

    async def services(self, args: Mapping[str, Any]) -> list[dict]:
        return self.context.switch.services_info()

    async def endpoints(self, args: Mapping[str, Any]) -> list[dict]:
        return self.context.switch.endpoints_info()

    async def affinity(self, args: Mapping[str, Any]) -> list[dict]:
        return self.context.switch.affinity_info(time.monotonic())

    async def conntrack(self, args: Mapping[str, Any]) -> list[dict]:
        filters = _filters(args)
        try:
            return self.context.switch.conntrack_info(time.monotonic(), filters)
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    async def conntrack_flush(self, args: Mapping[str, Any]) -> dict:
        filters = _filters(args)
        try:
            return {"flushed": self.context.switch.conntrack_flush(filters)}
        except ValueError as exc:
            raise ControlError(str(exc)) from None

    # -- runtime changes ------------------------------------------------------------------------

    def _node(self) -> Any:
        if self.context.node is None:
            raise ControlError("this daemon does not accept runtime changes")
        return self.context.node

    async def pod_add(self, args: Mapping[str, Any]) -> dict:
        table = _require(args, "pod", dict, "a pod table like [[pods]] holds")
        node = self._node()
        async with node.lock:
            pod = _validated(config.parse_pod, table, node.topology, "pod add")
            await node.add_pod(pod)
            summary = node.program()
        return {"pod": self._pod_row(pod), "program": summary}

    async def pod_del(self, args: Mapping[str, Any]) -> dict:
        name = _require(args, "name", str, "a pod name")
        node = self._node()
        async with node.lock:
            pod = self._pod(name)
            await node.remove_pod(pod.name)
            summary = node.program()
        return {"removed": pod.name, "program": summary}

    async def pod_ready(self, args: Mapping[str, Any]) -> dict:
        name = _require(args, "name", str, "a pod name")
        ready = _require(args, "ready", bool, "true or false")
        node = self._node()
        async with node.lock:
            self._pod(name)
            pod = node.set_ready(name, ready)
            summary = node.program()
        return {"pod": pod.name, "ready": pod.ready, "program": summary}

    async def service_add(self, args: Mapping[str, Any]) -> dict:
        text, source = _fragment_args(args)
        node = self._node()
        async with node.lock:
            fragment = _validated(config.parse_fragment, text, source, node.topology,
                                  allowed=("services",), replace=False)
            if not fragment.services:
                raise ControlError(f"{source}: no [[services]] to add")
            node.put_services(fragment.services)
            summary = node.program()
        return {"added": [_service_summary(s) for s in fragment.services], "program": summary}

    def _service(self, name: str) -> Service:
        """A service by NAMESPACE/NAME, or by NAME alone when only one namespace has it."""
        services = self.context.current().services
        found = [s for s in services if s.key == name or ("/" not in name and s.name == name)]
        if len(found) == 1:
            return found[0]
        if found:
            raise ControlError(f"{name!r} is ambiguous: {', '.join(s.key for s in found)}; "
                               "give NAMESPACE/NAME")
        known = ", ".join(s.key for s in services) or "none"
        raise ControlError(f"no service {name!r}; services: {known}")

    async def service_del(self, args: Mapping[str, Any]) -> dict:
        name = _require(args, "name", str, "a service name (NAMESPACE/NAME or NAME)")
        node = self._node()
        async with node.lock:
            service = node.remove_service(self._service(name).key)
            summary = node.program()
        return {"removed": service.key, "program": summary}

    async def service_set(self, args: Mapping[str, Any]) -> dict:
        name = _require(args, "name", str, "a service name (NAMESPACE/NAME or NAME)")
        settings = _require(args, "settings", dict, "an object of key: value text")
        node = self._node()
        async with node.lock:
            old = self._service(name)
            service = _validated(config.update_service, old, settings, node.topology,
                                 "service set")
            node.put_services((service,))
            summary = node.program()
        return {"service": _service_summary(service), "program": summary}

    async def apply(self, args: Mapping[str, Any]) -> dict:
        text, source = _fragment_args(args)
        node = self._node()
        async with node.lock:
            fragment = _validated(config.parse_fragment, text, source, node.topology)
            return await node.apply(fragment.pods, fragment.services)


    async def reload(self, args: Mapping[str, Any]) -> dict:
        """What SIGHUP does, with the outcome as the answer: the daemon's configuration file
        becomes the node's desired state, or nothing changes and the error says why."""
        result = await self._node().reload()
        if not result.ok:
            raise ControlError(result.message)
        return result.details


def _validated(parse: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The loader's answer, or its complete list of mistakes as the command's error."""
    try:
        return parse(*args, **kwargs)
    except config.ConfigError as exc:
        raise ControlError(str(exc)) from None


def _fragment_args(args: Mapping[str, Any]) -> tuple[str, str]:
    text = _require(args, "toml", str, "the TOML text of the fragment")
    source = args.get("source", "<fragment>")
    if not isinstance(source, str):
        raise ControlError(f"argument 'source' must be a file name, not {source!r}")
    return text, source


def _filters(args: Mapping[str, Any]) -> dict[str, str]:
    filters = args.get("filters", {})
    if filters is None:
        return {}
    if not isinstance(filters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in filters.items()):
        raise ControlError("argument 'filters' must be an object of KEY: VALUE strings")
    return dict(filters)


def _service_summary(service: Service) -> dict:
    return {"service": service.key,
            "cluster_ip": str(service.cluster_ip) if service.cluster_ip is not None else None,
            "type": service.type,
            "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port,
                       "target_port": p.target_port, "node_port": p.node_port}
                      for p in service.ports]}


async def answer(commands: ControlCommands, line: bytes) -> dict:
    """The response object for one request line. Never raises for anything the client sent."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"bad JSON: {exc}"}
    try:
        result = await commands.dispatch(request)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        log.exception("control command %r failed", cmd)
        return {"ok": False, "error": f"internal error in {cmd!r}: {exc.__class__.__name__}: {exc}"}
    return {"ok": True, "result": result}


def encode(response: dict) -> bytes:
    # default=str renders addresses and enums the core might leave in a row, instead of failing
    # the whole answer over one field.
    return json.dumps(response, default=str, separators=(",", ":")).encode() + b"\n"


async def _close_gently(stream: trio.abc.HalfCloseableStream) -> None:
    """Say we are done, then discard input for a moment before closing.

    Closing a socket that still has unread input makes the kernel send a reset, and the client
    would lose the error answer it has not read yet.
    """
    await stream.send_eof()
    with trio.move_on_after(LINGER):
        while await stream.receive_some(65536):
            pass


async def serve_connection(commands: ControlCommands, stream: trio.abc.HalfCloseableStream) -> None:
    buffer = bytearray()
    async with stream:
        try:
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > MAX_LINE:
                        await stream.send_all(encode(
                            {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}))
                        await _close_gently(stream)
                        return
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                    continue
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                if not line.strip():
                    continue
                await stream.send_all(encode(await answer(commands, line)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away mid-answer; that is its business, not an error of ours.
            return


def prepare_socket_path(path: str) -> None:
    """Make the directory and clear a stale socket; refuse if a live daemon answers there."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketBusy(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody listens: the file is what a crashed daemon left behind.
        log.info("removing stale control socket %s", path)
        os.unlink(path)
        return
    except OSError as exc:
        raise ControlSocketBusy(f"cannot tell whether a daemon answers on {path}: {exc}") from None
    finally:
        probe.close()
    raise ControlSocketBusy(f"another vswitchd answers on {path}")


async def bind_control_socket(path: str) -> trio.socket.SocketType:
    """A listening socket at ``path``, mode 0600 from its first moment.

    The socket is bound under a temporary name, restricted, and then renamed into place: binding at
    the final path and chmod-ing afterwards would leave a window in which anyone could connect, and
    changing the process-wide umask would affect every other thread.
    """
    prepare_socket_path(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        await sock.bind(temporary)
        os.chmod(temporary, 0o600)
        os.rename(temporary, path)
        sock.listen(64)
    except BaseException:
        sock.close()
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return sock


def remove_socket(path: str, inode: int) -> None:
    """Remove our socket file, unless another daemon has replaced it since (then it is theirs)."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def serve_control(path: str, commands: ControlCommands, *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket until cancelled; the socket file is removed on the way out."""
    sock = await bind_control_socket(path)
    inode = os.lstat(path).st_ino
    try:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started(path)

            async def handle(stream: trio.abc.Stream) -> None:
                await serve_connection(commands, stream)

            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        remove_socket(path, inode)
        sock.close()

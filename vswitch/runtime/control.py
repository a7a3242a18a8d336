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
The socket is mode 0600: whoever can talk to it can trace any pod's traffic and enter any pod's
namespace, which is root's business.
"""
from __future__ import annotations

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
from vswitch.model import Topology
from vswitch.runtime.ports import RuntimeErrors

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
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
            "netns": self.netns,
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
        return {
            "node": ctx.topology.node.name,
            "version": vswitch.__version__,
            "pid": os.getpid(),
            "config": ctx.config_path or ctx.topology.source,
            "accel": ctx.switch.accel_name,
            "offloads": ctx.topology.dataplane.offloads,
            "pods": len(ctx.topology.pods),
            "segments": len(ctx.topology.all_segments()),
            "static_routes": len(ctx.topology.routes),
            "ports": len(ctx.port_ids),
            "uptime_s": round(time.monotonic() - ctx.started, 3),
            "runtime_errors": ctx.errors.snapshot(),
        }

    async def pods(self, args: Mapping[str, Any]) -> list[dict]:
        ctx = self.context
        return [
            {
                "name": pod.name,
                "ip": str(pod.ip),
                "segment": pod.segment,
                "mtu": ctx.topology.pod_mtu(pod),
                "mac": pod.mac,
                "netns": pod.netns,
                "netns_path": ctx.netns_path(pod.netns),
                "port": ctx.port_ids.get(pod.name),
                "device": pod.tap,
                "ready": pod.ready,
                "labels": dict(pod.labels),
                "containers": ctx.supervisor.info(pod.name),
            }
            for pod in ctx.topology.pods
        ]

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

    async def netns(self, args: Mapping[str, Any]) -> dict:
        name = _require(args, "pod", str, "a pod name")
        try:
            pod = self.context.topology.pod(name)
        except KeyError:
            known = ", ".join(p.name for p in self.context.topology.pods) or "none"
            raise ControlError(f"no pod named {name!r}; pods: {known}") from None
        return {"pod": pod.name, "netns": pod.netns, "netns_path": self.context.netns_path(pod.netns)}


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

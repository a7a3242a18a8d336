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

Limits
------
The socket is root's, but a stuck script or a half-written tool must not cost the node anything,
so every connection is bounded in time and space (``ControlLimits``):

* a request line may be at most ``max_line`` bytes (1 MiB); a longer one is answered with an error
  and the connection closed;
* a complete request line must arrive within ``idle_timeout`` (30 s) of the connection opening or
  of the previous answer. A client that connects and sends nothing, or trickles a request a byte
  at a time, gets an error line and is closed; the timeout is per request, not per byte, so
  trickling does not extend it;
* the socket must take each answer within ``send_timeout`` (10 s); a client that sends requests
  and never reads its answers is dropped without a word (it is not reading);
* at most ``max_connections`` (128) connections are served at once; one more is answered with
  ``{"ok": false, "error": "too many control connections ..."}`` and closed.

A request that is not UTF-8, not JSON, nested too deeply or holds a number too long to convert is
a bad request like any other. A client that goes away mid-answer is no error. All of these are
counted in ``ControlCounters`` (``vswitchctl stats``, section ``control``): ``connections``
served (refused ones not included), ``active`` now, ``refused`` over the limit, ``timeouts``
(silent, trickling or not reading), ``bad_requests`` (answered with ``ok: false`` for what the
client sent: garbage, unknown commands, wrong arguments, overlong lines) and ``aborted`` (the
connection broke under us, as when the client leaves mid-answer). The commands run in the
daemon's trio thread, but every wait of the server is on the socket, so none of this holds up
the ports.

Commands are defined in ``vswitch.control``, one module per subject; this module serves them by
name. They run in the daemon's trio thread, between batches, so they read the switch without
locks. Commands that change the node validate their input with the config loader's own rules
against the node as it is now, and change nothing unless all of it is valid; they then run one
at a time under the node's lock (``vswitch.control.changes``).

The socket is mode 0600: whoever can talk to it can trace any pod's traffic and enter any pod's
namespace, which is root's business.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import trio

from vswitch.control import COMMANDS
from vswitch.control.command import Command, ControlError
from vswitch.model import Topology
from vswitch.runtime.port_io import RuntimeErrors

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
LINGER = 1.0  # seconds a closing connection's input is drained, so our last answer is not lost
# How much of an unknown command's name an error repeats: the name comes from the client and may
# be as long as a request.
NAME_IN_ERROR = 64


@dataclass(frozen=True)
class ControlLimits:
    """What one control connection may cost; see "Limits" above."""

    max_line: int = MAX_LINE
    idle_timeout: float = 30.0
    send_timeout: float = 10.0
    max_connections: int = 128


@dataclass
class ControlCounters:
    """The control server's own counters, shown by ``stats`` as its ``control`` section."""

    connections: int = 0
    active: int = 0
    refused: int = 0
    timeouts: int = 0
    bad_requests: int = 0
    aborted: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


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
    control_counters: ControlCounters = field(default_factory=ControlCounters)

    def current(self) -> Topology:
        return self.node.topology if self.node is not None else self.topology

    @staticmethod
    def now() -> float:
        """The core's time: the shell hands the switch trio's clock, so questions about ages and
        deadlines must be asked on it too (``started`` and uptime stay on the system clock)."""
        return trio.current_time()


class ControlCommands:
    """The commands of ``vswitch.control``, served by name against one running daemon."""

    def __init__(self, context: ControlContext) -> None:
        self.context = context
        self._table: dict[str, Command] = {command.name: command for command in COMMANDS}

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
        command = self._table.get(cmd)
        if command is None:
            shown = cmd if len(cmd) <= NAME_IN_ERROR else cmd[:NAME_IN_ERROR] + "..."
            raise ControlError(f"unknown command {shown!r}; known: {', '.join(self.names)}")
        return await command.handler(self.context, args)


def parse_request(line: bytes) -> Any:
    """The JSON value of one request line; ControlError for anything that is not one."""
    try:
        text = line.decode()
    except UnicodeDecodeError as exc:
        raise ControlError(f"bad JSON: the request is not UTF-8 ({exc})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ControlError("bad JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, and the interpreter's limit on the digits of an integer.
        raise ControlError(f"bad JSON: {exc}") from None


async def answer(commands: ControlCommands, line: bytes) -> dict:
    """The response object for one request line. Never raises for anything the client sent."""
    counters = commands.context.control_counters
    try:
        request = parse_request(line)
    except ControlError as exc:
        counters.bad_requests += 1
        return {"ok": False, "error": str(exc)}
    try:
        result = await commands.dispatch(request)
    except ControlError as exc:
        counters.bad_requests += 1
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        cmd = request.get("cmd") if isinstance(request, dict) else None
        log.exception("control command %r failed", cmd)
        return {"ok": False, "error": f"internal error in {cmd!r}: {exc.__class__.__name__}: {exc}"}
    return {"ok": True, "result": result}


def encode(response: dict) -> bytes:
    # default=str renders addresses and enums the core might leave in a row, instead of failing
    # the whole answer over one field.
    try:
        return json.dumps(response, default=str, separators=(",", ":")).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        # A command returned something JSON cannot hold (a cycle): its bug, the client's error.
        log.error("control answer could not be encoded: %s", exc)
        return encode({"ok": False, "error": f"internal error: the answer is not JSON: {exc}"})


class _Closing(Exception):
    """The connection must be closed, with ``message`` as the client's last answer."""

    def __init__(self, message: str, counter: str) -> None:
        super().__init__(message)
        self.message = message
        self.counter = counter  # the ControlCounters field this counts in


async def _close_gently(stream: trio.abc.HalfCloseableStream) -> None:
    """Say we are done, then discard input for a moment before closing.

    Closing a socket that still has unread input makes the kernel send a reset, and the client
    would lose the error answer it has not read yet.
    """
    await stream.send_eof()
    with trio.move_on_after(LINGER):
        while await stream.receive_some(65536):
            pass


async def _send(stream: trio.abc.Stream, response: dict, limits: ControlLimits,
                counters: ControlCounters) -> bool:
    """Send one answer; False if the socket did not take it within the send timeout.

    A cancelled ``send_all`` leaves the stream unusable, so False means: close the connection.
    """
    with trio.move_on_after(limits.send_timeout):
        await stream.send_all(encode(response))
        return True
    counters.timeouts += 1
    return False


async def _refuse(stream: trio.abc.HalfCloseableStream, message: str, limits: ControlLimits,
                  counters: ControlCounters) -> None:
    """Answer ``message`` as an error and close the connection."""
    if await _send(stream, {"ok": False, "error": message}, limits, counters):
        await _close_gently(stream)


class _LineReader:
    """Request lines off a stream, each due by a deadline and at most ``max_line`` bytes long."""

    def __init__(self, stream: trio.abc.Stream, limits: ControlLimits) -> None:
        self._stream = stream
        self._limits = limits
        self._buffer = bytearray()

    async def next(self, deadline: float) -> bytes | None:
        """The next non-blank line without its newline; None when the client has closed.

        Raises ``_Closing`` for a line that is too long or not complete by ``deadline``.
        """
        while True:
            line = await self._line(deadline)
            if line is None or line.strip():
                return line

    async def _line(self, deadline: float) -> bytes | None:
        limit = self._limits.max_line
        buffer = self._buffer
        scanned = 0  # ``buffer[:scanned]`` holds no newline: a trickled line is searched once
        while (newline := buffer.find(b"\n", scanned)) < 0:
            scanned = len(buffer)
            if len(buffer) > limit:
                raise _Closing(f"request longer than {limit} bytes", "bad_requests")
            data = None
            with trio.move_on_at(deadline):
                data = await self._stream.receive_some(65536)
            if data is None:
                raise _Closing(f"no complete request within {self._limits.idle_timeout:g} s; "
                               "closing the connection", "timeouts")
            if not data:
                return None
            buffer += data
        if newline > limit:
            raise _Closing(f"request longer than {limit} bytes", "bad_requests")
        line = bytes(buffer[:newline])
        del buffer[: newline + 1]
        return line


async def serve_connection(commands: ControlCommands, stream: trio.abc.HalfCloseableStream,
                           limits: ControlLimits = ControlLimits()) -> None:
    """Answer the requests of one connection, in order, until the client closes or a limit
    closes the connection (see "Limits" above)."""
    counters = commands.context.control_counters
    lines = _LineReader(stream, limits)
    async with stream:
        try:
            while True:
                # Per request, not per byte: a client that trickles gains nothing by it.
                try:
                    line = await lines.next(trio.current_time() + limits.idle_timeout)
                except _Closing as closing:
                    setattr(counters, closing.counter, getattr(counters, closing.counter) + 1)
                    await _refuse(stream, closing.message, limits, counters)
                    return
                if line is None:
                    return
                if not await _send(stream, await answer(commands, line), limits, counters):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away mid-answer; that is its business, not an error of ours.
            counters.aborted += 1


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
        # The kernel's own limit: connections beyond ours are refused with an answer instead
        # of waiting unaccepted.
        sock.listen(socket.SOMAXCONN)
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


async def serve_control(path: str, commands: ControlCommands,
                        limits: ControlLimits | None = None, *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket until cancelled; the socket file is removed on the way out."""
    limits = limits or ControlLimits()
    counters = commands.context.control_counters
    sock = await bind_control_socket(path)
    inode = os.lstat(path).st_ino
    try:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started(path)

            async def handle(stream: trio.SocketStream) -> None:
                if counters.active >= limits.max_connections:
                    counters.refused += 1
                    async with stream:
                        try:
                            await _refuse(stream, f"too many control connections (at most "
                                          f"{limits.max_connections} at once); try again",
                                          limits, counters)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            counters.aborted += 1
                    return
                counters.connections += 1
                counters.active += 1
                try:
                    await serve_connection(commands, stream, limits)
                finally:
                    counters.active -= 1

            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        remove_socket(path, inode)
        sock.close()

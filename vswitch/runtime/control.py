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
LINGER = 1.0  # seconds an overlong request is drained before its connection is closed


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
            raise ControlError(f"unknown command {cmd!r}; known: {', '.join(self.names)}")
        return await command.handler(self.context, args)


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

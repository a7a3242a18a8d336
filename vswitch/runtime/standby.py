"""The hot standby: a second vswitchd process, ready to take the node over when the daemon dies.

Why
---
A restart that keeps the pods (persistent TAPs, the journal, the connection snapshot) still
leaves the pods without a switch while the next process starts, and most of that time is Python
importing the daemon's code (most of a second idle, seconds on a loaded machine). TCP backs off
(0.2, 0.6, 1.4 s ...) while nothing forwards, so a stream stalls for up to twice that. A process
that has imported everything beforehand starts forwarding within a fraction of the first backoff.

Theory of operation
-------------------
Once the daemon is ready, ``StandbySupervisor.run`` starts one standby: the same command line
plus ``--standby``, its stdin a socket to the daemon. The daemon sends it one JSON document: the
node's lock (state directory and node name) and the names of the modules the daemon has imported
by then, those it imports lazily included (pyroute2, the native module, httpx for a cluster
store). The standby (``wait_as_standby``) imports them, answers ``waiting``, drops the socket,
and blocks on the node's lock (``NodeLock.wait_for_holder``). It holds nothing: no socket, no
TAP, no namespace, no lock, no connection to a store; it never reads the configuration file while
it waits, and it never sends anything to systemd.

The lock tells a death from a stop. A daemon that dies (SIGKILL, the OOM killer, a crash in native
code, systemd's watchdog abort) leaves the lock file; the kernel frees the lock with the process,
the standby gets it and takes over: it reads the configuration file again (a file that does not
validate, or that now describes another node, is logged and the standby exits with an error; the
lock file stays, as after any death) and runs the ordinary start-up, whose re-attach path
(journal, persistent TAPs, re-adopted containers, the connection snapshot, loose pickup of
mid-stream TCP) does the rest. It then starts a standby of its own.

A deliberate stop never lets the standby take over, twice over: on SIGTERM, SIGINT or any other
way out of ``run_daemon`` the daemon ends its standby (SIGTERM, then SIGKILL) before it releases
the lock, since the task that supervises the standby lives inside the kernel layer's lock; and a
daemon that stops unlinks its lock file while it holds the lock, so a standby that got the lock
all the same finds the file gone and exits without touching anything.

A standby that ends while its daemon runs (killed by someone, out of memory) is started again
after ``RESPAWN_DELAY``; ``vswitchctl status`` shows the standby's pid and state.

What the standby runs is the code it imported when it started: an upgrade on disk takes effect at
the next deliberate restart, which replaces the standby as well.

systemd
-------
The process that took over sends ``MAINPID=<its pid>`` with ``READY=1`` and becomes the one whose
``WATCHDOG_PID`` pings count (``become_main_process``). With the unit's ``ExitType=main`` (the
default), systemd has by then seen its main process die, so it ignores that message and
``Restart=`` starts ``ExecStart`` again after ``RestartSec=``. That process finds the node's lock
held by the daemon that took over, in the unit's own control group: as the unit's main process
it hands the unit over (``hand_over_to_running``: ``MAINPID=<holder>`` and ``READY=1``, then a
barrier so that systemd has read both before it sees this process exit) and exits 0. A live
holder outside the unit's control group is another daemon altogether, and the start is refused
as before. systemd/vswitchd.service discusses the settings this relies on.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import trio

from vswitch.runtime import sdnotify
from vswitch.runtime.journal import NodeLock

STANDBY_FLAG = "--standby"
# How long a standby may take to exit on SIGTERM before it gets SIGKILL. It holds nothing, and
# SIGTERM's default action ends it at once, even in the middle of its imports.
STOP_TIMEOUT = 2.0
# Between a standby that ended on its own and the next one: long enough that a standby that
# cannot start does not keep a core busy.
RESPAWN_DELAY = 10.0
MAX_HEADER = 1 << 20  # the JSON document the daemon sends: a few thousand module names
WAITING = b"waiting\n"


def standby_command(argv: Sequence[str]) -> list[str]:
    """The command line of this process's standby: its own, plus ``--standby``.

    ``argv`` are vswitchd's arguments (in a standby that took over, ``--standby`` is among them;
    it appears once all the same). When they are this process's own (the console script, or
    ``python3 -c``), the interpreter's original command line is repeated, interpreter options
    included; otherwise (vswitchd_main called with arguments of its own), the module is run.
    """
    args = [arg for arg in argv if arg != STANDBY_FLAG]
    if args == [arg for arg in sys.argv[1:] if arg != STANDBY_FLAG]:
        return [sys.executable, *(arg for arg in sys.orig_argv[1:] if arg != STANDBY_FLAG),
                STANDBY_FLAG]
    return [sys.executable, "-m", "vswitch.cli", "vswitchd", *args, STANDBY_FLAG]


def imported_modules(modules: Mapping[str, Any] | None = None) -> list[str]:
    """The modules this process has imported, to import in the standby too."""
    modules = sys.modules if modules is None else modules
    return sorted(name for name, module in modules.items()
                  if module is not None and name != "__main__" and not name.startswith("__"))


@dataclass(frozen=True)
class StandbyBrief:
    """What the daemon tells its standby: whose lock to wait on, what to import."""

    state_dir: str
    node: str
    modules: tuple[str, ...]

    def encode(self) -> bytes:
        return json.dumps({"state_dir": self.state_dir, "node": self.node,
                           "modules": list(self.modules)}).encode()

    @classmethod
    def decode(cls, data: bytes) -> "StandbyBrief":
        document = json.loads(data)
        return cls(state_dir=str(document["state_dir"]), node=str(document["node"]),
                   modules=tuple(str(name) for name in document["modules"]))


# ---------------------------------------------------------------------------------------------
# The daemon's side


class StandbySupervisor:
    """Keeps one standby process of this daemon running, and ends it when the daemon stops.

    ``state`` is ``starting`` (importing), ``waiting`` (blocked on the node's lock) or
    ``restarting`` (the last one ended; the next starts after ``RESPAWN_DELAY``).
    """

    def __init__(self, command: Sequence[str], state_dir: str, node: str,
                 log: logging.Logger, respawn_delay: float = RESPAWN_DELAY) -> None:
        self.command = list(command)
        self.state_dir = state_dir
        self.node = node
        self.log = log
        self.respawn_delay = respawn_delay
        self.pid: int | None = None
        self.state = "starting"

    def status(self) -> dict:
        return {"pid": self.pid, "state": self.state}

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            returncode = await self._run_one()
            self.pid = None
            self.state = "restarting"
            self.log.warning("the standby ended with status %s; starting another in %.0f s",
                             returncode, self.respawn_delay)
            await trio.sleep(self.respawn_delay)
            self.state = "starting"

    async def _run_one(self) -> int:
        """Start a standby, brief it, and return its exit status once it ends; end it if this
        task is cancelled (the daemon stops)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await trio.lowlevel.open_process(self.command, stdin=theirs.fileno())
        finally:
            theirs.close()
        self.pid = process.pid
        self.state = "starting"
        self.log.info("standby started: pid %d", process.pid)
        try:
            brief = StandbyBrief(self.state_dir, self.node, tuple(imported_modules()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, trio.socket.from_stdlib_socket(ours),
                                   brief.encode())
                returncode = await process.wait()
                nursery.cancel_scope.cancel()
            return returncode
        finally:
            with trio.CancelScope(shield=True):
                await self._end(process)

    async def _follow(self, sock: trio.socket.SocketType, brief: bytes) -> None:
        with sock:
            try:
                view = memoryview(brief)
                while view:
                    view = view[await sock.send(view):]
                sock.shutdown(socket.SHUT_WR)
                if await sock.recv(len(WAITING)) == WAITING:
                    self.state = "waiting"
                    self.log.info("standby pid %s ready to take over", self.pid)
            except OSError as exc:
                # The standby ended before it read its brief; its exit status says why.
                self.log.debug("standby pid %s: %s", self.pid, exc)

    async def _end(self, process: trio.Process) -> None:
        if process.returncode is not None:
            return
        process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
            return
        self.log.warning("standby pid %d did not end on SIGTERM; killing it", process.pid)
        process.kill()
        await process.wait()


# ---------------------------------------------------------------------------------------------
# The standby's side


def _read_brief(channel: socket.socket) -> StandbyBrief:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_HEADER:
        chunk = channel.recv(65536)
        if not chunk:
            return StandbyBrief.decode(b"".join(chunks))
        chunks.append(chunk)
        size += len(chunk)
    raise ValueError(f"the daemon's brief is longer than {MAX_HEADER} bytes")


def import_all(names: Sequence[str], log: logging.Logger) -> int:
    """Import every module of ``names`` that can be; the number that could not (logged)."""
    failed = 0
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # a module of the daemon's may need what this process lacks
            failed += 1
            log.debug("standby: not importing %s: %s", name, exc)
    return failed


def wait_as_standby(log: logging.Logger, stdin_fd: int = 0) -> NodeLock | None:
    """The standby's life until it takes over: the node's lock, held, or None when the daemon
    stopped deliberately (or never briefed it) and this process should exit."""
    # Ctrl-C in a terminal reaches the whole process group: the standby just goes, as the daemon
    # would end it anyway.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    channel = socket.socket(fileno=os.dup(stdin_fd))
    try:
        try:
            brief = _read_brief(channel)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("standby: no usable brief from the daemon (%s); exiting", exc)
            return None
        failed = import_all(brief.modules, log)
        try:
            channel.sendall(WAITING)
        except OSError:
            log.info("standby: the daemon went away before the standby was ready")
    finally:
        channel.close()
    # Keep nothing of the daemon's: stdin becomes /dev/null.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, stdin_fd)
    os.close(null)
    log.info("standby pid %d: %d modules imported%s, waiting for node %s's lock",
             os.getpid(), len(brief.modules), f" ({failed} could not be)" if failed else "",
             brief.node)
    lock = NodeLock(brief.state_dir, brief.node)
    if not lock.wait_for_holder():
        log.info("standby pid %d: the daemon of node %s stopped deliberately; exiting",
                 os.getpid(), brief.node)
        return None
    log.warning("standby pid %d: the daemon of node %s died; taking over", os.getpid(),
                brief.node)
    return lock


def become_main_process(environ: Any = None) -> None:
    """Make this process the one whose watchdog pings count (systemd's ``WATCHDOG_PID`` named
    the daemon that died); ``run_daemon`` tells systemd ``MAINPID=`` with ``READY=1``."""
    environ = os.environ if environ is None else environ
    if environ.get("WATCHDOG_PID"):
        environ["WATCHDOG_PID"] = str(os.getpid())


# ---------------------------------------------------------------------------------------------
# A start that finds the node already taken over


def _cgroup(pid: int | str) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def hand_over_to_running(state_dir: str, node: str, log: logging.Logger,
                         environ: Mapping[str, str] | None = None) -> bool:
    """Under systemd, give the unit to a daemon of this node that already runs in the unit's
    control group (one that took over from a daemon that died, when ``Restart=`` starts
    ``ExecStart`` again); True if that was done and this process should exit 0.

    Without ``NOTIFY_SOCKET``, with nobody holding the lock, or with a holder that is not in our
    control group, nothing is done and the ordinary start-up runs (and refuses a busy node).
    """
    environ = os.environ if environ is None else environ
    if sdnotify.notify_address(environ) is None:
        return False
    holder = NodeLock(state_dir, node).holder()
    if holder is None or holder == os.getpid():
        return False
    ours, theirs = _cgroup("self"), _cgroup(holder)
    if ours is None or theirs != ours:
        return False
    log.warning("node %s is already run by pid %d in this unit (it took over from a daemon "
                "that died); handing the unit to it", node, holder)
    if not sdnotify.notify(f"MAINPID={holder}\nREADY=1\nSTATUS=node {node}, run by pid {holder}",
                           environ):
        return False
    # systemd must have read MAINPID= before it sees this process, its main one until then, exit.
    if not sdnotify.notify_barrier(environ=environ):
        log.warning("systemd did not confirm the hand-over; exiting all the same")
    return True

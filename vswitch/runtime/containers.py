"""Pod processes ("containers"): commands run inside a pod's network namespace, supervised by trio.

Theory of operation
-------------------
A container here is a plain host process whose network namespace is the pod's: it shares the
pod's IP, port space and loopback with the pod's other containers, and everything else (files,
users, PIDs) with the host. That is the part of the Kubernetes model a network lab needs.

The child enters the namespace between ``fork`` and ``exec`` (``preexec_fn``), using only calls
prepared in the parent. It starts a new session, so a terminal's Ctrl-C reaches the daemon only
and the daemon decides the order of shutdown; signals then go to the whole process group, which
covers a shell's children as well. When the node serves cluster DNS, the child also gets a mount
namespace of its own in which its namespace's resolv.conf is bind-mounted over /etc/resolv.conf
(``vswitch.runtime.resolv_conf``): the host's file stays as it is.

Containers outlive the daemon
-----------------------------
A daemon that is restarted (SIGTERM, or killed) leaves its containers running, so nothing ties
a container's life to the daemon's: no ``PR_SET_PDEATHSIG``, and no pipe, whose reader's death
would SIGPIPE the container. Its stdout and stderr go to a file, ``{state_dir}/{netns}.{name}.log``
(``vswitch.runtime.journal``), which the daemon reads from a position of its own and forwards
to its log line by line; the part already forwarded is punched out of the file, so it holds
little more than what no daemon has read yet. Each container's pid and start time (field 22 of
``/proc/PID/stat``, which tells a reused pid apart) and a digest of how it was started (command,
environment, resolv.conf) are recorded next to it. A starting daemon re-adopts a container whose
record matches: same digest, the pid alive with the same start time, in the pod's (kept)
namespace. It watches an adopted container through a pidfd; its exit status is not ours to read
(it is no longer our child), so it shows as ``exited(unknown)``. A recorded container that does
not match is stopped, and the container is started again. Without a state directory (tests,
tools) the output goes to an anonymous memory file and nothing is recorded.

Policy:

* A container that exits is not restarted. Its exit status is logged and shown in ``info``; the
  pod's network stays up. (A lab wants to see a crash, not have it papered over by a restart loop.)
* When the main process exits, the rest of its process group gets SIGKILL, as a container runtime
  ends a container with its main process.
* On cancellation: SIGTERM to the group, up to ``STOP_GRACE`` seconds (shielded), then SIGKILL;
  our child is always reaped. After ``ContainerSupervisor.keep`` (the daemon's SIGTERM),
  cancellation leaves the containers running, with their records and output files, instead.
* Processes that left the group (``setsid``) are found by namespace instead: ``Kernel.delete_pod``
  and ``remove_leftovers`` kill whatever runs in a pod.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Callable

import trio

from vswitch.model import Container, Pod
from vswitch.runtime.journal import (ContainerRecord, container_log_path, erase_container,
                                     read_container, record_container)
from vswitch.runtime.netns import netns_path, process_in_netns, setns_function
from vswitch.runtime.resolv_conf import private_resolv_conf

STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a container is stopped
OUTPUT_POLL = 0.1  # how often a container's output file is checked for new lines
MAX_LINE = 8192  # longer output lines are forwarded in pieces of this size
READ_SIZE = 65536
# Forwarded output is punched out of the file once this much has gathered (FALLOC_FL_PUNCH_HOLE).
PUNCH_AFTER = 1 << 20
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/",
    "LANG": "C.UTF-8",
}


@dataclass(frozen=True)
class ContainerInfo:
    """What is known about one container at one moment, for ``vswitchctl`` and the logs."""

    name: str
    pid: int | None
    # "starting", "running", "exited(CODE)" (negative: killed by signal), "exited(unknown)" (a
    # container adopted from an earlier run, whose status only its parent could read), "failed"
    state: str
    exit_code: int | None = None
    error: str = ""  # why it failed to start

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def container_env(pod: Pod, container: Container) -> dict[str, str]:
    env = dict(BASE_ENV)
    env.update(container.env)
    env["POD_NAME"] = pod.name
    env["POD_NAMESPACE"] = pod.namespace
    env["POD_IP"] = str(pod.ip)
    return env


def spec_digest(pod: Pod, container: Container, resolv_conf: str | None) -> str:
    """What a container was started with, as a digest: equal digests, same container."""
    started_with = {"command": list(container.command), "env": container_env(pod, container),
                    "resolv_conf": resolv_conf}
    return hashlib.sha256(json.dumps(started_with, sort_keys=True).encode()).hexdigest()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited (status unknown: started by an earlier run of the daemon)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def exit_state(code: int | None) -> str:
    return f"exited({'unknown' if code is None else code})"


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, it names one process
    for good, since a reused pid starts later. None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": skip past the last.
    fields = text[text.rindex(b")") + 2:].split()
    return int(fields[19])


def _make_preexec(netns_fd: int,
                  resolv_conf: Callable[[], None] | None = None) -> Callable[[], None]:
    """The child's last steps before exec: join the pod's namespace, see the pod's resolv.conf
    (``resolv_conf``, from ``private_resolv_conf``).

    Everything the child calls is resolved here, in the parent: after ``fork`` only this thread
    exists, and loading a library or importing could wait forever on a lock another thread held.
    """
    enter = setns_function()

    def preexec() -> None:
        enter(netns_fd)
        if resolv_conf is not None:
            resolv_conf()

    return preexec


def _readable_now(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class ContainerProcess:
    """A container's main process, our child or adopted from an earlier run, watched through a
    pidfd (which becomes readable when the process exits, whoever its parent is)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None) -> None:
        self.pid = pid
        self._popen = popen
        self._pidfd: int | None = os.pidfd_open(pid)
        self.exited = False

    @classmethod
    def adopt(cls, pid: int) -> "ContainerProcess | None":
        """Watch a process that is not our child; None when it is gone."""
        try:
            return cls(pid)
        except ProcessLookupError:
            return None

    @property
    def returncode(self) -> int | None:
        """The exit status once exited; always None for an adopted process."""
        return None if self._popen is None else self._popen.returncode

    def running(self) -> bool:
        return not self.exited and self._pidfd is not None and not _readable_now(self._pidfd)

    async def wait(self) -> int | None:
        if not self.exited:
            assert self._pidfd is not None, "waiting on a released process"
            await trio.lowlevel.wait_readable(self._pidfd)
            if self._popen is not None:
                self._popen.wait()
            self.exited = True
            self.release()
        return self.returncode

    def release(self) -> None:
        """Stop watching (the process may go on running)."""
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            os.close(fd)


class ContainerOutput:
    """The file a container's stdout and stderr go to, read from the daemon's own position.

    Reads use ``pread``, so the position is the daemon's alone even where the file description is
    shared with the writer (an anonymous memory file). A named file is opened apart for the
    container (appending) and for the daemon (reading, and punching out what it forwarded).
    """

    def __init__(self, fd: int, offset: int, writer: int | None) -> None:
        self._fd = fd
        self.offset = offset
        self._punched = 0
        self._pending = b""
        self._writer = writer

    @classmethod
    def fresh(cls, path: str | None, label: str) -> "ContainerOutput":
        """An empty file (``path``, or an anonymous one) for a container about to start."""
        if path is None:
            fd = os.memfd_create(label.replace("/", "."), os.MFD_CLOEXEC)
            return cls(fd, 0, fd)
        writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                         0o600)
        try:
            return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC), 0, writer)
        except BaseException:
            os.close(writer)
            raise

    @classmethod
    def existing(cls, path: str) -> "ContainerOutput":
        """The file of an adopted container, from its end: what was written while no daemon
        ran stays in the file only (where a person can read it)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return cls(fd, os.fstat(fd).st_size, None)

    @property
    def writer(self) -> int:
        """The fd to give the container as stdout and stderr."""
        assert self._writer is not None, "an adopted container's output has no writer here"
        return self._writer

    def spawned(self) -> None:
        """The container has its copy of the writer; a separate one is closed here."""
        if self._writer is not None and self._writer != self._fd:
            os.close(self._writer)
        self._writer = None

    def forward(self, log: logging.Logger, label: str) -> bool:
        """Log the complete lines written since the last call; whether there were any bytes."""
        chunk = os.pread(self._fd, READ_SIZE, self.offset)
        if not chunk:
            self._punch()
            return False
        self.offset += len(chunk)
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_LINE:
            lines.append(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        for line in lines:
            log.info("[%s] %s", label, line.decode("utf-8", errors="replace").rstrip("\r"))
        return True

    async def follow(self, log: logging.Logger, label: str) -> None:
        """Forward new lines as they are written, until cancelled."""
        while True:
            if not self.forward(log, label):
                await trio.sleep(OUTPUT_POLL)
            else:
                await trio.lowlevel.checkpoint()

    def finish(self, log: logging.Logger, label: str) -> None:
        """Forward everything written so far, an unterminated last line included, and close.
        What a container that keeps running writes meanwhile is left to the next daemon."""
        end = os.fstat(self._fd).st_size
        while self.offset < end and self.forward(log, label):
            continue
        if self._pending:
            log.info("[%s] %s", label, self._pending.decode("utf-8", errors="replace"))
            self._pending = b""
        self.spawned()
        os.close(self._fd)

    def _punch(self) -> None:
        """Free the forwarded part of the file, which keeps its size but no longer its blocks."""
        end = self.offset & ~0xFFF
        if end - self._punched < PUNCH_AFTER:
            return
        if _fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, end) != 0:
            # A file system without holes: the file keeps growing; stop asking it.
            self._punched = 1 << 62
            return
        self._punched = end


def _fallocate_function() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _fallocate_function()


async def start_container(pod: Pod, container: Container, resolv_conf: str | None = None,
                          stdout: int = subprocess.DEVNULL) -> ContainerProcess:
    """Spawn the container's command in the pod's namespace, with ``resolv_conf`` (a path) as
    its /etc/resolv.conf when given and its stdout and stderr into the fd ``stdout``;
    OSError/SubprocessError if it fails."""
    if not container.command:
        raise ValueError(f"container {pod.key}/{container.name} has no command")
    await trio.lowlevel.checkpoint()
    show_resolv_conf = private_resolv_conf(resolv_conf) if resolv_conf is not None else None
    netns_fd = os.open(netns_path(pod.netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            list(container.command),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=container_env(pod, container),
            cwd="/",
            start_new_session=True,
            preexec_fn=_make_preexec(netns_fd, show_resolv_conf),
        )
    finally:
        os.close(netns_fd)
    return ContainerProcess(popen.pid, popen)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return


async def _stop(proc: ContainerProcess) -> None:
    """SIGTERM the group, give it STOP_GRACE seconds, then SIGKILL; always reap a child."""
    if proc.running():
        _signal_group(proc.pid, signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            await proc.wait()
        if not proc.exited:
            _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def supervise_container(proc: ContainerProcess, output: ContainerOutput, label: str, *,
                              log: logging.Logger,
                              keep: Callable[[], bool] = lambda: False) -> int | None:
    """Forward the output of a started container until it exits. When cancelled, stop it, or
    leave it running if ``keep()`` says so then; its exit status (None: adopted, or left)."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.follow, log, label)
            await proc.wait()
            # The main process is gone: its group goes with it.
            _signal_group(proc.pid, signal.SIGKILL)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            left = keep() and proc.running()
            if left:
                proc.release()
            else:
                await _stop(proc)
            output.finish(log, label)
            if left:
                log.info("[%s] left running, pid %d, for the next start", label, proc.pid)
            else:
                log.log(logging.INFO if proc.returncode == 0 else logging.WARNING,
                        "[%s] %s", label, describe_exit(proc.returncode))
    return proc.returncode


async def run_container(pod: Pod, container: Container, *, log: logging.Logger,
                        task_status: Any = trio.TASK_STATUS_IGNORED,
                        on_state: Callable[[ContainerInfo], None] | None = None) -> int | None:
    """Run one container until it exits (returning its exit code) or until cancelled.

    Reports ``task_status.started(pid)`` once the process exists. ``on_state`` is told about each
    state change (running, exited), for whoever keeps a table of containers.
    """
    label = f"{pod.key}/{container.name}"
    output = ContainerOutput.fresh(None, label)
    try:
        proc = await start_container(pod, container, stdout=output.writer)
    except BaseException:
        output.finish(log, label)
        raise
    output.spawned()
    pid = proc.pid
    try:
        if on_state is not None:
            on_state(ContainerInfo(container.name, pid, "running"))
        log.info("[%s] started, pid %d, in %s", label, pid, pod.netns)
        task_status.started(pid)
        return await supervise_container(proc, output, label, log=log)
    finally:
        if on_state is not None:
            code = proc.returncode
            on_state(ContainerInfo(container.name, pid, exit_state(code), exit_code=code))


class ContainerSupervisor:
    """Runs the containers of pods and keeps a table of their state for ``vswitchctl``.

    One supervisor serves every pod of a daemon; each pod's containers run in the task that calls
    ``run``, so cancelling that task (the daemon does so before ``Kernel.delete_pod``) stops them.
    ``resolv_conf`` gives the resolv.conf path of a pod's namespace (None: the host's file).
    With a ``state_dir``, containers write their output there and are recorded for the next
    daemon to re-adopt (see the module docstring); ``keep`` makes cancellation leave them.
    """

    def __init__(self, log: logging.Logger,
                 resolv_conf: Callable[[str], str | None] | None = None,
                 state_dir: str | None = None) -> None:
        self._log = log
        self._resolv_conf = resolv_conf
        self._state_dir = state_dir
        self._table: dict[str, dict[str, ContainerInfo]] = {}
        self._keep = False

    def info(self, pod_name: str) -> list[dict[str, Any]]:
        """Name, pid, state (and exit code or start error) of each container of the pod."""
        return [info.as_dict() for info in self._table.get(pod_name, {}).values()]

    def containers(self, pod_name: str) -> tuple[ContainerInfo, ...]:
        return tuple(self._table.get(pod_name, {}).values())

    def forget(self, pod_name: str) -> None:
        self._table.pop(pod_name, None)

    def keep(self) -> None:
        """From now on, cancellation leaves running containers running (a restart follows)."""
        self._keep = True

    def _update(self, pod_name: str, info: ContainerInfo) -> None:
        self._table.setdefault(pod_name, {})[info.name] = info

    async def run(self, pod: Pod, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start (or re-adopt) the pod's containers, report started, and run until all exit or
        cancellation.

        A container that cannot start (no such command, say) is logged and shown as failed; the
        others run regardless, so one typo does not take a pod's neighbours down.
        """
        self._table[pod.key] = {c.name: ContainerInfo(c.name, None, "starting")
                                 for c in pod.containers}
        async with trio.open_nursery() as nursery:
            for container in pod.containers:
                await nursery.start(self._run_one, pod, container)
            task_status.started()

    async def _adopt_or_clear(self, pod: Pod, container: Container, digest: str,
                              label: str) -> tuple[ContainerProcess, ContainerOutput] | None:
        """The recorded container of an earlier run when it is this one and still runs in the
        pod; otherwise None, after stopping whatever the record names that still runs."""
        assert self._state_dir is not None
        record = read_container(self._state_dir, pod.netns, container.name)
        if record is None:
            return None
        alive = process_start_time(record.pid) == record.start_time
        proc = ContainerProcess.adopt(record.pid) if alive else None
        if proc is not None and record.spec == digest and process_in_netns(record.pid, pod.netns):
            self._log.info("[%s] re-adopted, pid %d, in %s", label, record.pid, pod.netns)
            return proc, ContainerOutput.existing(
                container_log_path(self._state_dir, pod.netns, container.name))
        if proc is not None:
            self._log.info("[%s] stopping pid %d of an earlier run: %s", label, record.pid,
                           "its spec changed" if record.spec != digest else "its pod is new")
            await _stop(proc)
        erase_container(self._state_dir, pod.netns, container.name)
        return None

    async def _start(self, pod: Pod, container: Container, resolv_conf: str | None,
                     digest: str, label: str) -> tuple[ContainerProcess, ContainerOutput]:
        path = (container_log_path(self._state_dir, pod.netns, container.name)
                if self._state_dir is not None else None)
        output = ContainerOutput.fresh(path, label)
        try:
            proc = await start_container(pod, container, resolv_conf, stdout=output.writer)
        except BaseException:
            output.finish(self._log, label)
            raise
        output.spawned()
        if self._state_dir is not None:
            start_time = process_start_time(proc.pid)
            if start_time is not None:
                record_container(self._state_dir, pod.netns, container.name,
                                 ContainerRecord(proc.pid, start_time, digest))
        self._log.info("[%s] started, pid %d, in %s", label, proc.pid, pod.netns)
        return proc, output

    async def _run_one(self, pod: Pod, container: Container,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        label = f"{pod.key}/{container.name}"
        try:
            resolv_conf = (self._resolv_conf(pod.namespace) if self._resolv_conf is not None
                           else None)
            digest = spec_digest(pod, container, resolv_conf)
            found = (await self._adopt_or_clear(pod, container, digest, label)
                     if self._state_dir is not None else None)
            proc, output = found or await self._start(pod, container, resolv_conf, digest, label)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._log.error("[%s] cannot start %r: %s", label, list(container.command), exc)
            self._update(pod.key, ContainerInfo(container.name, None, "failed", error=str(exc)))
            task_status.started()
            return
        pid = proc.pid
        self._update(pod.key, ContainerInfo(container.name, pid, "running"))
        try:
            task_status.started()
            await supervise_container(proc, output, label, log=self._log,
                                      keep=lambda: self._keep)
        finally:
            if proc.exited:
                code = proc.returncode
                self._update(pod.key, ContainerInfo(container.name, pid, exit_state(code),
                                                     exit_code=code))
                if self._state_dir is not None:
                    erase_container(self._state_dir, pod.netns, container.name)

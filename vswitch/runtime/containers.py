"""Pod processes ("containers"): commands run inside a pod's network namespace, supervised by trio.

Theory of operation
-------------------
A container here is a plain host process whose network namespace is the pod's: it shares the
pod's IP, port space and loopback with the pod's other containers, and everything else (files,
users, PIDs) with the host. That is the part of the Kubernetes model a network lab needs.

The child enters the namespace between ``fork`` and ``exec`` (``preexec_fn``), using only calls
prepared in the parent, and asks for SIGKILL when its parent dies, so a daemon killed by SIGKILL
does not leave its containers running. It starts a new session, so a terminal's Ctrl-C reaches
the daemon only and the daemon decides the order of shutdown; signals then go to the whole process
group, which covers a shell's children as well. When the node serves cluster DNS, the child
also gets a mount namespace of its own in which its namespace's resolv.conf is bind-mounted over
/etc/resolv.conf (``vswitch.runtime.resolv_conf``): the host's file stays as it is.

Policy:

* A container that exits is not restarted. Its exit status is logged and shown in ``info``; the
  pod's network stays up. (A lab wants to see a crash, not have it papered over by a restart loop.)
* When the main process exits, the rest of its process group gets SIGKILL, as a container runtime
  ends a container with its main process.
* On cancellation: SIGTERM to the group, up to ``STOP_GRACE`` seconds (shielded), then SIGKILL;
  the process is always reaped.
* Processes that left the group (``setsid``) and the children of a SIGKILLed daemon are found by
  namespace instead: ``Kernel.delete_pod`` and ``remove_leftovers`` kill whatever runs in a pod.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
from dataclasses import asdict, dataclass
from typing import Any, Callable

import trio

from vswitch.model import Container, Pod
from vswitch.runtime.netns import netns_path, setns_function
from vswitch.runtime.resolv_conf import private_resolv_conf

PR_SET_PDEATHSIG = 1
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL when a container is stopped
OUTPUT_DRAIN = 1.0  # how long output is still forwarded after the main process exited
MAX_LINE = 8192  # longer output lines are forwarded in pieces of this size

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
    state: str  # "starting", "running", "exited(CODE)" (negative: killed by signal), "failed"
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


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _prctl_function() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    return lambda option, value: prctl(option, value, 0, 0, 0)


def _make_preexec(netns_fd: int,
                  resolv_conf: Callable[[], None] | None = None) -> Callable[[], None]:
    """The child's last steps before exec: join the pod's namespace, see the pod's resolv.conf
    (``resolv_conf``, from ``private_resolv_conf``), die with the daemon.

    Everything the child calls is resolved here, in the parent: after ``fork`` only this thread
    exists, and loading a library or importing could wait forever on a lock another thread held.
    """
    enter = setns_function()
    prctl = _prctl_function()
    parent = os.getpid()
    kill = os.kill
    getppid = os.getppid
    getpid = os.getpid

    def preexec() -> None:
        enter(netns_fd)
        if resolv_conf is not None:
            resolv_conf()
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The daemon may have died between fork and prctl; then nobody would send the signal.
        if getppid() != parent:
            kill(getpid(), signal.SIGKILL)

    return preexec


class ContainerProcess:
    """A container's main process, spawned from the event-loop thread and awaited through a pidfd.

    ``trio.lowlevel.open_process`` forks from a worker thread, and ``PR_SET_PDEATHSIG`` fires when
    the *thread* that forked the child exits, not the process: trio retires idle worker threads
    after ten seconds, which would kill every container ten seconds after it started. Spawning from
    the thread that runs the daemon ties the signal to the daemon's life, as intended.
    """

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        out = popen.stdout
        self.stdout: trio.lowlevel.FdStream | None = None
        if out is not None:
            self.stdout = trio.lowlevel.FdStream(os.dup(out.fileno()))
            out.close()

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._pidfd is not None else self._popen.returncode

    async def wait(self) -> int:
        if self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._popen.wait()
            os.close(self._pidfd)
            self._pidfd = None
        return self._popen.returncode


async def start_container(pod: Pod, container: Container,
                          resolv_conf: str | None = None) -> ContainerProcess:
    """Spawn the container's command in the pod's namespace, with ``resolv_conf`` (a path) as
    its /etc/resolv.conf when given; OSError/SubprocessError if it fails."""
    if not container.command:
        raise ValueError(f"container {pod.key}/{container.name} has no command")
    await trio.lowlevel.checkpoint()
    show_resolv_conf = private_resolv_conf(resolv_conf) if resolv_conf is not None else None
    netns_fd = os.open(netns_path(pod.netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            list(container.command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=container_env(pod, container),
            cwd="/",
            start_new_session=True,
            preexec_fn=_make_preexec(netns_fd, show_resolv_conf),
        )
    finally:
        os.close(netns_fd)
    return ContainerProcess(popen)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return


async def _forward_output(stream: trio.abc.ReceiveStream, log: logging.Logger,
                          label: str) -> None:
    pending = b""
    async for chunk in stream:
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        while len(pending) > MAX_LINE:
            lines.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        for line in lines:
            log.info("[%s] %s", label, line.decode("utf-8", errors="replace").rstrip("\r"))
    if pending:
        log.info("[%s] %s", label, pending.decode("utf-8", errors="replace"))


async def _stop(proc: ContainerProcess) -> None:
    """SIGTERM the group, give it STOP_GRACE seconds, then SIGKILL; always reap."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            await proc.wait()
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def supervise_container(proc: ContainerProcess, label: str, *, log: logging.Logger) -> int:
    """Forward the output of a started container until it exits; stop it if cancelled."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_output, proc.stdout, log, label)
            await proc.wait()
            # The main process is gone: its group goes with it, and the output gets a moment to
            # drain (a process outside the group could hold the pipe open forever).
            _signal_group(proc.pid, signal.SIGKILL)
            nursery.cancel_scope.deadline = trio.current_time() + OUTPUT_DRAIN
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proc)
            if proc.stdout is not None:
                await proc.stdout.aclose()
            log.log(logging.INFO if proc.returncode == 0 else logging.WARNING,
                    "[%s] %s", label, describe_exit(proc.returncode))
    return proc.returncode


async def run_container(pod: Pod, container: Container, *, log: logging.Logger,
                        task_status: Any = trio.TASK_STATUS_IGNORED,
                        on_state: Callable[[ContainerInfo], None] | None = None) -> int:
    """Run one container until it exits (returning its exit code) or until cancelled.

    Reports ``task_status.started(pid)`` once the process exists. ``on_state`` is told about each
    state change (running, exited), for whoever keeps a table of containers.
    """
    label = f"{pod.key}/{container.name}"
    proc = await start_container(pod, container)
    pid = proc.pid
    try:
        if on_state is not None:
            on_state(ContainerInfo(container.name, pid, "running"))
        log.info("[%s] started, pid %d, in %s", label, pid, pod.netns)
        task_status.started(pid)
        return await supervise_container(proc, label, log=log)
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proc)
        if on_state is not None:
            code = proc.returncode
            on_state(ContainerInfo(container.name, pid, f"exited({code})", exit_code=code))


class ContainerSupervisor:
    """Runs the containers of pods and keeps a table of their state for ``vswitchctl``.

    One supervisor serves every pod of a daemon; each pod's containers run in the task that calls
    ``run``, so cancelling that task (the daemon does so before ``Kernel.delete_pod``) stops them.
    ``resolv_conf`` gives the resolv.conf path of a pod's namespace (None: the host's file).
    """

    def __init__(self, log: logging.Logger,
                 resolv_conf: Callable[[str], str | None] | None = None) -> None:
        self._log = log
        self._resolv_conf = resolv_conf
        self._table: dict[str, dict[str, ContainerInfo]] = {}

    def info(self, pod_name: str) -> list[dict[str, Any]]:
        """Name, pid, state (and exit code or start error) of each container of the pod."""
        return [info.as_dict() for info in self._table.get(pod_name, {}).values()]

    def containers(self, pod_name: str) -> tuple[ContainerInfo, ...]:
        return tuple(self._table.get(pod_name, {}).values())

    def forget(self, pod_name: str) -> None:
        self._table.pop(pod_name, None)

    def _update(self, pod_name: str, info: ContainerInfo) -> None:
        self._table.setdefault(pod_name, {})[info.name] = info

    async def run(self, pod: Pod, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the pod's containers, report started, and run until all exit or cancellation.

        A container that cannot start (no such command, say) is logged and shown as failed; the
        others run regardless, so one typo does not take a pod's neighbours down.
        """
        self._table[pod.key] = {c.name: ContainerInfo(c.name, None, "starting")
                                 for c in pod.containers}
        async with trio.open_nursery() as nursery:
            for container in pod.containers:
                await nursery.start(self._run_one, pod, container)
            task_status.started()

    async def _run_one(self, pod: Pod, container: Container,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        label = f"{pod.key}/{container.name}"
        try:
            resolv_conf = (self._resolv_conf(pod.namespace) if self._resolv_conf is not None
                           else None)
            proc = await start_container(pod, container, resolv_conf)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._log.error("[%s] cannot start %r: %s", label, list(container.command), exc)
            self._update(pod.key, ContainerInfo(container.name, None, "failed", error=str(exc)))
            task_status.started()
            return
        pid = proc.pid
        self._update(pod.key, ContainerInfo(container.name, pid, "running"))
        self._log.info("[%s] started, pid %d, in %s", label, pid, pod.netns)
        try:
            task_status.started()
            await supervise_container(proc, label, log=self._log)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)
            code = proc.returncode
            self._update(pod.key, ContainerInfo(container.name, pid, f"exited({code})",
                                                 exit_code=code))

"""Named network namespaces as files, and the processes that live in them.

A named namespace is a bind mount of an nsfs inode at ``/run/netns/NAME`` (the iproute2
convention, which pyroute2 follows). Two things refer to the same namespace exactly when their
``stat`` results share device and inode, which is how processes are attributed to a pod here: it
works for processes the daemon never started (a pod's grandchildren, or anything left from a run
that was killed) and needs no netlink.

Nothing in this module talks netlink, so it is safe to call from any thread, from a forked child
before ``exec``, and from the synchronous ``vswitchctl clean``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import threading
import time
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

# How long kill_netns_processes waits for SIGTERM to work before it sends SIGKILL.
DEFAULT_TERM_GRACE = 2.0


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def setns_function() -> Callable[[int], None]:
    """A callable that moves the calling thread into the network namespace behind an open fd.

    It is resolved up front so that a ``preexec_fn`` calls it without loading a library or
    importing anything between ``fork`` and ``exec``, where another thread's lock could be held.
    Python 3.12 has ``os.setns``; 3.11 needs libc's ``setns`` through ctypes.
    """
    os_setns = getattr(os, "setns", None)
    if os_setns is not None:
        return lambda fd: os_setns(fd, CLONE_NEWNET)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc_setns = libc.setns
    libc_setns.argtypes = (ctypes.c_int, ctypes.c_int)
    libc_setns.restype = ctypes.c_int

    def enter(fd: int) -> None:
        if libc_setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns: {os.strerror(code)}")

    return enter


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace mounted at ``path``.

    Only the calling thread moves. That is what a forked child wants before ``exec``; a thread of
    the daemon must never call this, since sockets it opened afterwards would land in the pod.
    """
    enter = setns_function()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(fd)
    finally:
        os.close(fd)


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is the named one, except the calling process.

    Processes that exit while the scan runs, and zombies (which have dropped their namespaces),
    are simply not listed. Returns an empty list when the namespace does not exist.
    """
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    own = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == own:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if _same_inode(st, target):
            pids.append(pid)
    return sorted(pids)


def process_in_netns(pid: int, name: str) -> bool:
    """Whether the process ``pid`` lives in the named namespace (False when either is gone)."""
    try:
        return _same_inode(os.stat(f"/proc/{pid}/ns/net"), os.stat(netns_path(name)))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


def kill_netns_processes(name: str, grace: float = DEFAULT_TERM_GRACE) -> list[int]:
    """Stop every process in the namespace: SIGTERM, up to ``grace`` seconds, then SIGKILL.

    Blocks the calling thread for at most about ``grace`` seconds plus a short wait for SIGKILL to
    land. Returns the pids that were found. The processes' parents reap them; a pid that lingers
    as a zombie no longer counts as being in the namespace, so the wait ends without that.
    """
    found = pids_in_netns(name)
    if not found:
        return []
    _signal_all(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = pids_in_netns(name)
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = pids_in_netns(name)
    # Processes can fork during the grace period; whatever is there now gets SIGKILL, repeatedly,
    # until the namespace is empty or it is clear something cannot be killed (e.g. a process in
    # uninterruptible sleep), which the caller then sees in a later pids_in_netns.
    for _ in range(20):
        if not remaining:
            break
        _signal_all(remaining, signal.SIGKILL)
        found.extend(pid for pid in remaining if pid not in found)
        time.sleep(0.05)
        remaining = pids_in_netns(name)
    return sorted(found)


def remove_netns_mount(name: str) -> bool:
    """Unmount and unlink a named namespace; False when it did not exist.

    The namespace itself dies once nothing else refers to it (processes, open fds), so callers
    kill its processes first.
    """
    from pyroute2 import netns as pyroute2_netns

    if not netns_exists(name):
        return False
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def call_in_netns(name: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a short-lived thread that first enters the named namespace; its result.

    What a thread opens there (``/proc/sys/net`` files, ``/dev/net/tun`` bound to a device of the
    namespace) stays bound to that namespace after the thread is gone, so the daemon's own
    threads never move. Blocks the calling thread until ``fn`` returns; its exception is raised.
    """
    results: list[T] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(netns_path(name))
            results.append(fn(*args))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            failures.append(exc)

    thread = threading.Thread(target=run, name=f"in-{name}")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
    return results[0]


def write_netns_sysctls(name: str, settings: Mapping[str, str]) -> None:
    """Write ``/proc/sys`` values inside a pod's namespace (never the host's)."""

    def write() -> None:
        for key, value in settings.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as handle:
                handle.write(value)

    call_in_netns(name, write)

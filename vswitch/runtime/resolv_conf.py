"""The /etc/resolv.conf pods see: one file per namespace under the daemon's state directory,
shown in place of the host's own through a private mount namespace per process.

Theory of operation
-------------------
A container here shares the host's file system, so its /etc/resolv.conf is the host's, which
names the host's resolvers. ``ip netns exec`` solves the same problem with /etc/netns/NAME: the
child gets a mount namespace of its own in which that file is bind-mounted over
/etc/resolv.conf, and nobody else sees the mount. The same is done here, between ``fork`` and
``exec`` of a container (``vswitch.runtime.containers``) and before ``vswitchctl exec`` becomes
its program:

1. ``unshare(CLONE_NEWNS)``: a copy of the mount table, private to the process;
2. mount ``/`` recursively as a slave, so that the bind mount never propagates back to the
   host's table (on systemd hosts ``/`` is shared), while the host's later mounts still show;
3. bind-mount the namespace's file over /etc/resolv.conf. When that is a symlink (to
   systemd-resolved's stub file, say), the mount goes over the file it points to, resolved in
   the parent: the child sees the pod's file under either name.

Python 3.11 has neither ``os.unshare`` nor ``os.mount``: libc's are called through ctypes, and
everything is resolved in the parent, since after ``fork`` only async-signal-safe work is safe
(another thread of the daemon may have held a lock).

The files are written when first needed and rewritten when their content changes; the content
depends only on the node's settings and the namespace (``vswitch.dns.stub``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Callable

from vswitch.config import runtime_cluster
from vswitch.dns.stub import resolv_conf_text
from vswitch.model import Topology

HOST_RESOLV_CONF = "/etc/resolv.conf"
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000


def dns_off_reason(topology: Topology) -> str | None:
    """Why the node serves no cluster DNS, or None when it does."""
    if runtime_cluster(topology).dns_ip is None:
        return "cluster DNS is off ([cluster] dns = false)"
    if not topology.host_port.enabled:
        return ("cluster DNS is off: its answers are served on the host port address, and "
                "host_port.enabled = false")
    return None


def resolv_conf_dir(topology: Topology) -> str:
    return os.path.join(topology.control.state_dir, f"{topology.node.name}.resolv")


def resolv_conf_path(topology: Topology, namespace: str) -> str | None:
    """The pods' resolv.conf of ``namespace``, written if it is missing or stale; None when
    the node serves no cluster DNS (pods then see the host's file)."""
    if dns_off_reason(topology) is not None:
        return None
    cluster = runtime_cluster(topology)
    assert cluster.dns_ip is not None
    text = resolv_conf_text(cluster.dns_ip, namespace, cluster.domain)
    directory = resolv_conf_dir(topology)
    path = os.path.join(directory, f"{namespace}.conf")
    try:
        with open(path, encoding="utf-8") as existing:
            if existing.read() == text:
                return path
    except FileNotFoundError:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    staged = f"{path}.{os.getpid()}.tmp"
    with open(staged, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(staged, 0o644)
    os.replace(staged, path)
    return path


def remove_resolv_confs(topology: Topology) -> None:
    directory = resolv_conf_dir(topology)
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def private_resolv_conf(source: str, shown_as: str = HOST_RESOLV_CONF) -> Callable[[], None]:
    """A callable that gives the calling process its own mount namespace showing ``source`` as
    ``shown_as`` (/etc/resolv.conf); prepared here, called in a forked child (or a
    single-threaded process).

    OSError (here) when there is no file to mount over; OSError (from the callable) when a step
    fails, with the step named.
    """
    target = os.path.realpath(shown_as)
    if not os.path.isfile(target):
        raise OSError(f"{shown_as} resolves to {target}, which is not a file")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    unshare = libc.unshare
    unshare.argtypes = (ctypes.c_int,)
    unshare.restype = ctypes.c_int
    mount = libc.mount
    mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                      ctypes.c_void_p)
    mount.restype = ctypes.c_int
    get_errno = ctypes.get_errno
    source_path, target_path, root = source.encode(), target.encode(), b"/"
    none = b"none"

    def fail(step: str) -> None:
        code = get_errno()
        raise OSError(code, f"{step}: {os.strerror(code)}")

    def enter() -> None:
        if unshare(CLONE_NEWNS) != 0:
            fail("unshare(CLONE_NEWNS)")
        if mount(none, root, None, MS_REC | MS_SLAVE, None) != 0:
            fail("making / a slave mount")
        if mount(source_path, target_path, None, MS_BIND, None) != 0:
            fail(f"bind-mounting {source} over {target}")

    return enter

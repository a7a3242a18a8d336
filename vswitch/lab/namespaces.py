"""Named network namespaces for labs: made with their removal registered, and their sysctls.

A lab registers the removal of each namespace on an ``ExitStack`` the moment it exists, so that a
failure halfway through building still leaves nothing behind. Per-namespace sysctls (forwarding,
above all) are written from inside the namespace: ``/proc/sys/net`` shows the values of the
namespace of the thread that opens it, so the calling thread enters the namespace, writes, and
returns to where it was. The host's own settings are never touched.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from pyroute2 import netns

THREAD_NETNS = "/proc/thread-self/ns/net"


def random_suffix() -> str:
    """Six hex digits: short enough for interface names, random enough for parallel labs."""
    return secrets.token_hex(3)


def create_netns(stack: contextlib.ExitStack, name: str) -> str:
    """Create namespace ``name`` and register its removal on ``stack``; returns the name."""
    netns.create(name)
    stack.callback(remove_netns, name)
    return name


def remove_netns(name: str) -> None:
    """Remove namespace ``name``; one that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        netns.remove(name)


@contextlib.contextmanager
def _inside(name: str) -> Iterator[None]:
    """The calling thread in namespace ``name`` for the block, then back where it was."""
    home = os.open(THREAD_NETNS, os.O_RDONLY)
    try:
        netns.setns(name, flags=0)
        try:
            yield
        finally:
            netns.setns(home)
    finally:
        os.close(home)


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set sysctl ``key`` (as in ``net.ipv4.ip_forward``) inside namespace ``name`` only."""
    with _inside(name):
        sysctl_path(key).write_text(value)


def read_sysctl(name: str, key: str) -> str:
    """The value of sysctl ``key`` inside namespace ``name``."""
    with _inside(name):
        return sysctl_path(key).read_text().strip()

"""A real etcd for the tests, started the way a user would start a one-member cluster.

:class:`EtcdServer` (``vswitch.lab.etcd_server``, which ``vswitch-lab`` uses too) runs Debian's
``etcd`` (package ``etcd-server``) on two free loopback ports with a temporary data directory and
a unique member name, waits until ``/health`` answers, and on :meth:`EtcdServer.close` kills it and
removes the data directory. :meth:`stop` and :meth:`start` may be called in between to take the
store away and bring it back with its data (same ports, same directory), as when etcd restarts.

Run as a program (``python3 etcd_support.py member ENDPOINT CLUSTER NAME POD_CIDR TTL``), this file
is a node that registers itself and then waits forever: the tests SIGKILL it to play a node whose
daemon dies without revoking its lease. It prints ``registered`` once its record is in the store.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import trio

from vswitch.lab.etcd_server import ETCD, EtcdServer, etcd_problem, free_port

__all__ = ["ETCD", "EtcdServer", "etcd_problem", "free_port", "require_etcd", "running_etcd"]


def require_etcd() -> None:
    """Skip the calling test where etcd is missing, but fail it in CI (``CI=true``), where the
    etcd-server package is installed: a CI that skips the store tests would hide their failures."""
    import pytest

    problem = etcd_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"this test needs etcd: {problem}")
    pytest.skip(f"this test needs etcd: {problem}")


def running_etcd() -> Iterator[EtcdServer]:
    """A started etcd, closed (data removed) when the generator is: a fixture's body,
    ``yield from running_etcd()``."""
    require_etcd()
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


class CuttableProxy:
    """A TCP relay to etcd that a test can cut and restore, to play a network partition between
    one node and the store while the store stays up for everyone else.

    Cut: every relayed connection is closed and new ones are closed as soon as accepted. Run
    :meth:`run` in a nursery (``await nursery.start(proxy.run)``); :attr:`endpoint` is its URL.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.endpoint = ""
        self._is_cut = False
        self._relays: set = set()

    async def run(self, *, task_status) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.endpoint = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client) -> None:
        async with client:
            if self._is_cut:
                return
            async with await trio.open_tcp_stream("127.0.0.1", self.target_port) as upstream:
                with trio.CancelScope() as relay:
                    self._relays.add(relay)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, upstream, relay)
                            nursery.start_soon(self._pump, upstream, client, relay)
                    finally:
                        self._relays.discard(relay)

    @staticmethod
    async def _pump(source, sink, scope) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        except trio.BrokenResourceError:
            pass  # the other side went away: the relay is over either way
        scope.cancel()

    def cut(self) -> None:
        self._is_cut = True
        for scope in list(self._relays):
            scope.cancel()

    def restore(self) -> None:
        self._is_cut = False


def spawn_member(endpoint: str, cluster: str, name: str, pod_cidr: str, ttl: int
                 ) -> subprocess.Popen:
    """A node in its own process (see the module docstring); returns once it has registered."""
    process = subprocess.Popen(
        [sys.executable, __file__, "member", endpoint, cluster, name, pod_cidr, str(ttl)],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if line.strip() != "registered":
        process.kill()
        process.wait()
        raise RuntimeError(f"member {name} did not register (said {line!r})")
    return process


def _member_main(endpoint: str, cluster: str, name: str, pod_cidr: str, ttl: str) -> None:
    from vswitch.membership.etcd import EtcdClient
    from vswitch.membership.members import Membership

    async def main() -> None:
        send, receive = trio.open_memory_channel(1000)
        async with EtcdClient([endpoint]) as client, trio.open_nursery() as nursery:
            membership = Membership(client, cluster, node_record(name, pod_cidr), send,
                                    lease_ttl=int(ttl), rng=random.Random(0))
            await nursery.start(membership.run)
            print("registered" if membership.statistics().connected else "unreachable", flush=True)
            async for _ in receive:
                pass  # drain: this node only has to stay registered

    trio.run(main)


def node_record(name: str, pod_cidr: str, address: str = "192.0.2.1"):
    from ipaddress import IPv4Address, IPv4Network

    from vswitch.membership.members import NodeRecord

    mac = "02:00:" + ":".join(f"{b:02x}" for b in name.encode().ljust(4, b"-")[:4])
    return NodeRecord(name=name, pod_cidr=IPv4Network(pod_cidr), address=IPv4Address(address),
                      vtep_mac=mac)


if __name__ == "__main__":
    if sys.argv[1:2] == ["member"] and len(sys.argv) == 7:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        _member_main(*sys.argv[2:])
    else:
        sys.exit(f"usage: {sys.argv[0]} member ENDPOINT CLUSTER NAME POD_CIDR TTL")

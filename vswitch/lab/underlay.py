"""An L2 underlay for nodes on one host: a namespace holding a Linux bridge.

Each node plugs into it with a veth whose far end is a port of the bridge, so the nodes share one
broadcast domain, as machines on one switch do. The bridge may hold an address of the underlay
network (the gateway a node would route off-link traffic to), which also lets a test reach every
node's underlay address from inside the underlay namespace. Nothing of it lives in the root
namespace.
"""
from __future__ import annotations

import contextlib
from ipaddress import IPv4Interface
from types import TracebackType

from pyroute2 import IPRoute

from vswitch.lab.namespaces import create_netns, random_suffix


class Underlay:
    """The namespace ``netns`` with the bridge ``bridge`` in it, removed on close.

    ``address`` (optional) goes onto the bridge. ``mtu`` is the bridge's; ports added later take
    the smallest MTU of their bridge's ports, so nodes set their own veths to it.
    """

    def __init__(self, address: IPv4Interface | None = None, mtu: int = 1500) -> None:
        suffix = random_suffix()
        self.netns = f"lab-under-{suffix}"
        self.bridge = f"labbr-{suffix}"
        self.address = address
        self.mtu = mtu
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Underlay:
        with contextlib.ExitStack() as stack:
            create_netns(stack, self.netns)
            with IPRoute(netns=self.netns, flags=0) as ipr:
                ipr.link("add", ifname=self.bridge, kind="bridge", mtu=self.mtu)
                index = ipr.link_lookup(ifname=self.bridge)[0]
                if self.address is not None:
                    ipr.addr("add", index=index, address=str(self.address.ip),
                             prefixlen=self.address.network.prefixlen)
                ipr.link("set", index=index, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove the namespace, and with it the bridge and every node's port on it."""
        self._stack.close()

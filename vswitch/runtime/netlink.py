"""Netlink through pyroute2, confined to one thread, and how trio code hands work to that thread.

Theory of operation
-------------------
pyroute2 0.9's synchronous ``IPRoute`` drives an asyncio event loop of its own inside whatever
thread uses it, and its objects must not cross threads. trio must not block on netlink either. So
a ``NetlinkWorker`` owns one dedicated thread, and that thread owns one ``NetlinkSession``: the
root namespace's ``IPRoute`` plus short-lived ``IPRoute(netns=...)`` objects for pods. trio tasks
submit plain functions that take the session; the thread runs them one at a time, in submission
order, which also serialises the journal writes that go with them.

Rules:

* Every pyroute2 object is created, used and closed in the worker thread (``NetlinkSession``
  checks the calling thread, so a mistake fails loudly instead of corrupting an event loop).
* A submitted job always runs to completion; a cancelled caller waits for it (cancellation takes
  effect right after). Half-created kernel objects would be worse than a short delay.
* ``vswitchctl clean`` uses a ``NetlinkSession`` directly in its own (only) thread.
* The functions at the end (bridges, addresses, the links of a namespace) take an ``IPRoute``
  rather than a session, because the shared underlay they serve lives either in the root
  namespace or in a named one (``NetlinkSession.in_namespace``). Each treats "already there" (for
  an addition) and "already gone" (for a removal) as success: several daemons share those objects,
  and whichever comes second must not fail on the first one's work.
"""
from __future__ import annotations

import contextlib
import errno
import queue
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Callable, Iterator, TypeVar

import outcome
import trio
from pyroute2 import IPRoute, NetlinkError

T = TypeVar("T")

ROUTE_TABLE_MAIN = 254


class NetlinkSession:
    """The netlink handles of one thread: the root namespace's IPRoute, opened on first use."""

    def __init__(self) -> None:
        self._owner = threading.get_ident()
        self._root: IPRoute | None = None

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("a NetlinkSession is used from a thread that does not own it")

    @property
    def root(self) -> IPRoute:
        self._check_thread()
        if self._root is None:
            self._root = IPRoute()
        return self._root

    @contextlib.contextmanager
    def in_netns(self, name: str) -> Iterator[IPRoute]:
        """An IPRoute inside an existing named namespace; FileNotFoundError if there is none.

        ``flags=0`` matters: pyroute2's default would silently create the namespace.
        """
        self._check_thread()
        ipr = IPRoute(netns=name, flags=0)
        try:
            yield ipr
        finally:
            ipr.close()

    @contextlib.contextmanager
    def in_namespace(self, name: str | None) -> Iterator[IPRoute]:
        """The root namespace's IPRoute for None, else ``in_netns(name)``."""
        if name is None:
            yield self.root
        else:
            with self.in_netns(name) as ipr:
                yield ipr

    def close(self) -> None:
        self._check_thread()
        if self._root is not None:
            root, self._root = self._root, None
            root.close()

    def __enter__(self) -> "NetlinkSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Operations in the root namespace.

    def link_index(self, name: str) -> int | None:
        found = self.root.link_lookup(ifname=name)
        return found[0] if found else None

    def delete_link(self, name: str) -> bool:
        """Delete a root-namespace link by name; False if there was none."""
        index = self.link_index(name)
        if index is None:
            return False
        try:
            self.root.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True

    def move_link_to_netns(self, name: str, netns: str) -> None:
        index = self.link_index(name)
        if index is None:
            raise LookupError(f"link {name} vanished before it could be moved to {netns}")
        self.root.link("set", index=index, net_ns_fd=netns)

    def configure_host_link(self, name: str, mac: str, address: IPv4Interface, mtu: int) -> None:
        """Address the host TAP and bring it up; the kernel then adds the connected route."""
        index = self.link_index(name)
        if index is None:
            raise LookupError(f"link {name} does not exist")
        self.root.link("set", index=index, address=mac, mtu=mtu)
        self.root.addr("add", index=index, address=str(address.ip),
                       prefixlen=address.network.prefixlen)
        self.root.link("set", index=index, state="up")

    def add_route(self, dst: IPv4Network, device: str, via: IPv4Address | None) -> None:
        index = self.link_index(device)
        if index is None:
            raise LookupError(f"link {device} does not exist")
        kwargs: dict[str, Any] = {"dst": str(dst), "oif": index}
        if via is not None:
            kwargs["gateway"] = str(via)
        self.root.route("add", **kwargs)

    def delete_route(self, dst: IPv4Network, device: str) -> bool:
        """Delete a route added by add_route; False when it (or its device) is already gone."""
        index = self.link_index(device)
        if index is None:
            return False
        try:
            self.root.route("del", dst=str(dst), oif=index)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    # Operations inside a pod's namespace.

    def configure_pod_link(self, netns: str, tap: str, mac: str, address: IPv4Interface,
                           mtu: int, gateway: IPv4Address) -> None:
        """Turn the TAP just moved into ``netns`` into the pod's eth0, with lo and a default route.

        The rename and the MAC change need the link down, which it still is at this point.
        """
        with self.in_netns(netns) as ns:
            found = ns.link_lookup(ifname=tap)
            if not found:
                raise LookupError(f"link {tap} is not in namespace {netns}")
            index = found[0]
            ns.link("set", index=index, ifname="eth0", address=mac, mtu=mtu)
            ns.addr("add", index=index, address=str(address.ip),
                    prefixlen=address.network.prefixlen)
            ns.link("set", index=index, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=index)

    def delete_link_in_netns(self, netns: str, name: str) -> bool:
        """Delete a link inside a namespace; False if the namespace or the link is gone."""
        try:
            with self.in_netns(netns) as ns:
                found = ns.link_lookup(ifname=name)
                if not found:
                    return False
                try:
                    ns.link("del", index=found[0])
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:
                        return False
                    raise
                return True
        except FileNotFoundError:
            return False


# Shared-underlay operations, on the IPRoute of whichever namespace holds the objects.


def find_link(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(ipr: IPRoute, name: str) -> tuple[int, bool]:
    """The bridge's index, and whether this call created it (False: it was there already).

    A new bridge starts without STP (ports forward at once) and down.
    """
    created = True
    try:
        ipr.link("add", ifname=name, kind="bridge")
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        created = False
    index = find_link(ipr, name)
    if index is None:
        raise LookupError(f"bridge {name} vanished right after it was created")
    return index, created


def link_kind(ipr: IPRoute, index: int) -> str | None:
    """The link's rtnetlink kind ("bridge", "tun", "veth"...); None for a plain device."""
    return ipr.get_links(index)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def tun_links(ipr: IPRoute) -> list[str]:
    """Names of the TUN/TAP devices in the namespace: the far sides of live nodes' uplinks."""
    return [link.get("IFLA_IFNAME") for link in ipr.get_links()
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"]


def has_address(ipr: IPRoute, index: int, address: IPv4Interface) -> bool:
    return any(msg.get("IFA_ADDRESS") == str(address.ip)
               and msg["prefixlen"] == address.network.prefixlen
               for msg in ipr.get_addr(family=2, index=index))


def add_address(ipr: IPRoute, index: int, address: IPv4Interface) -> bool:
    """Add ``address`` to the link; False when the link has it already."""
    try:
        ipr.addr("add", index=index, address=str(address.ip),
                 prefixlen=address.network.prefixlen)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def delete_address(ipr: IPRoute, index: int, address: IPv4Interface) -> bool:
    """Remove ``address`` from the link; False when it (or the link) is already gone."""
    try:
        ipr.addr("del", index=index, address=str(address.ip),
                 prefixlen=address.network.prefixlen)
    except NetlinkError as exc:
        if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
            return False
        raise
    return True


def bridge_ports(ipr: IPRoute, index: int) -> list[str]:
    """Names of the links enslaved to the bridge ``index``."""
    return [link.get("IFLA_IFNAME") for link in ipr.get_links()
            if link.get("IFLA_MASTER") == index]


def delete_link_named(ipr: IPRoute, name: str) -> bool:
    """Delete a link by name; False if there is none."""
    index = find_link(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise
    return True


class NetlinkWorker:
    """A dedicated thread that runs netlink jobs for trio tasks, one at a time.

    Start it with ``start()`` and stop it with ``await stop()``; ``Kernel.open`` does both.
    """

    def __init__(self, name: str = "vswitch-netlink") -> None:
        self._jobs: queue.SimpleQueue[Callable[[NetlinkSession], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        with NetlinkSession() as session:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                job(session)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in the worker thread and return (or raise) its outcome."""
        if self._stopped:
            raise RuntimeError("the netlink worker has stopped")
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def job(session: NetlinkSession) -> None:
            result = outcome.capture(fn, session, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                # The caller's run is over, so nobody is waiting for this result; the job's
                # effect stands and the next cleanup (journal) covers it.
                return

        self._jobs.put(job)
        # Abort.FAILED: a cancelled caller still waits for its job, per the module rules.
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    async def stop(self) -> None:
        """Let queued jobs finish, close the session in its thread, and join the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._jobs.put(None)
        if self._thread.is_alive():
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._thread.join)

"""Cluster DNS in the daemon: sockets on the host port address, the ``kube-system/kube-dns``
service in front of them, and forwarding to the upstream resolvers.

Theory of operation
-------------------
``ClusterDns.run`` binds a UDP and a TCP socket on the host port address (``IP_FREEBIND``: the
address may not be up yet, and binding must not wait for it), on one port number the kernel
picks for both, then hands the runtime the service ``kube-system/kube-dns`` (``cluster.dns_ip``
port 53, udp and tcp, one endpoint: that address and port; see ``vswitch.dns.service``) and
programs it. A pod's query to the DNS address is then DNATed by the switch like any service
traffic, reaches the host's kernel through the host port, and the kernel hands it to these
sockets; the kernel also does all of TCP. Without the host port, or with ``dns = false``, there
is nothing to bind: the reason is logged and shown by ``vswitchctl dns``.

Each query is decided by ``vswitch.dns.answers.decide`` against the zone of the current desired
state (``ViewCache``: rebuilt after a change of services, pods or the service table, when the
next query comes). Names outside the cluster go to the upstream resolvers (``cluster.
dns_upstreams``, or the nameservers of the host's /etc/resolv.conf read at start) over UDP, one
after the other, within ``FORWARD_TIMEOUT`` seconds in all; no answer in time is SERVFAIL. UDP
forwards run in tasks of their own, at most ``MAX_FORWARDS`` at once (more are answered
SERVFAIL at once and counted), so a slow upstream never stalls cluster names. TCP connections
carry any number of length-prefixed queries, answered in order, and close after
``TCP_IDLE_TIMEOUT`` seconds without one; at most ``MAX_TCP_CONNECTIONS`` are open.

Everything is counted (``statistics``). A malformed query costs a FORMERR or nothing, never the
server: ``decide`` never raises on input. Cancellation closes the sockets (their ``with``
blocks) and removes the service from what the runtime programs.
"""
from __future__ import annotations

import errno
import logging
import socket
from collections import Counter
from ipaddress import IPv4Address
from typing import Any, Sequence

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import trio

from vswitch.config import runtime_cluster
from vswitch.dns.answers import Drop, Forward, Reply, decide, decide_message, render, udp_limit
from vswitch.dns.service import DNS_PORT, dns_service
from vswitch.dns.zone import ViewCache, ZoneView
from vswitch.model import Topology
from vswitch.runtime.resolv_conf import (HOST_RESOLV_CONF, dns_off_reason, remove_resolv_confs,
                                         resolv_conf_path)

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
FORWARD_TIMEOUT = 2.0  # seconds for all upstreams together
MAX_FORWARDS = 256  # UDP queries being forwarded at once
MAX_TCP_CONNECTIONS = 64
TCP_IDLE_TIMEOUT = 10.0  # seconds a TCP connection may wait for its next query
TCP_BACKLOG = 64
ACCEPT_RETRY = 0.1  # seconds to wait after accept failed
BIND_ATTEMPTS = 20  # port numbers tried for a UDP port whose TCP twin is free too
MAX_MESSAGE = 65535

Address = tuple[str, int]


def host_nameservers(path: str = HOST_RESOLV_CONF) -> list[IPv4Address]:
    """The IPv4 ``nameserver`` lines of a resolv.conf, in order; none if it cannot be read."""
    found: list[IPv4Address] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        found.append(IPv4Address(words[1]))
                    except ValueError:
                        continue  # IPv6 or junk: the forwarder speaks IPv4
    except OSError:
        return []
    return found


class DnsCounters:
    def __init__(self) -> None:
        self.queries = Counter[str]()  # by transport
        self.answers = Counter[str]()  # by rcode
        self.forwarded = 0
        self.forward_failures = 0
        self.malformed = 0
        self.dropped = 0  # responses sent to us, and queries over the limits
        self.truncated = 0

    def as_dict(self) -> dict[str, Any]:
        return {"queries": sum(self.queries.values()), "udp_queries": self.queries["udp"],
                "tcp_queries": self.queries["tcp"], "answers": dict(sorted(self.answers.items())),
                "forwarded": self.forwarded, "forward_failures": self.forward_failures,
                "malformed": self.malformed, "dropped": self.dropped,
                "truncated": self.truncated}


class ClusterDns:
    """The node's cluster DNS server; ``node`` is the running node (``NodeRuntime``): its
    ``topology``, ``remote_pods``, ``switch`` and ``set_system_services``.

    ``listen`` overrides the address the sockets bind (tests: 127.0.0.1); ``upstreams``
    overrides where other names go, as (address, port) pairs.
    """

    def __init__(self, node: Any, log: logging.Logger, *, listen: IPv4Address | None = None,
                 upstreams: Sequence[Address] | None = None) -> None:
        self._node = node
        self._log = log
        topology: Topology = node.topology
        self.cluster = runtime_cluster(topology)
        self.off_reason = dns_off_reason(topology)
        self.listen = listen or topology.host_port.address.ip
        if upstreams is None:
            configured = self.cluster.dns_upstreams
            addresses = configured if configured is not None else host_nameservers()
            upstreams = [(str(a), DNS_PORT) for a in addresses if a != self.cluster.dns_ip]
        self.upstreams = list(upstreams)
        self.port: int | None = None
        self.counters = DnsCounters()
        self._forwards = 0
        self._tcp_connections = 0
        self._views = ViewCache(self._view_key, self._build_view)

    # -- the zone ------------------------------------------------------------------------------

    def _view_key(self) -> tuple[object, ...]:
        node = self._node
        return (node.topology.services, node.topology.pods, node.remote_pods,
                node.system_services, node.switch.services.generation)

    def _build_view(self) -> ZoneView:
        node = self._node
        cluster = self.cluster
        return ZoneView(cluster.domain, node.system_services + node.topology.services,
                        node.topology.pods + node.remote_pods,
                        (cluster.service_cidr, cluster.cidr))

    def view(self) -> ZoneView:
        return self._views.current()

    # -- running -------------------------------------------------------------------------------

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
        """A UDP and a TCP socket on one port of the listen address."""
        for _ in range(BIND_ATTEMPTS):
            udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                for sock in (udp, tcp):
                    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await udp.bind((str(self.listen), 0))
                port = udp.getsockname()[1]
                await tcp.bind((str(self.listen), port))
                tcp.listen(TCP_BACKLOG)
                return udp, tcp
            except OSError as exc:
                udp.close()
                tcp.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no port of {self.listen} was free for both UDP and TCP")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.off_reason is not None:
            self._log.warning("%s", self.off_reason)
            task_status.started()
            return
        try:
            udp, tcp = await self._bind()
        except OSError as exc:
            self.off_reason = f"cluster DNS is off: cannot bind on {self.listen}: {exc}"
            self._log.error("%s", self.off_reason)
            task_status.started()
            return
        with udp, tcp:
            self.port = udp.getsockname()[1]
            assert self.cluster.dns_ip is not None
            service = dns_service(self.cluster.dns_ip, self._node.topology.host_port.address.ip,
                                  self.port)
            self._node.set_system_services((service,))
            forwarding = (", ".join(f"{host}:{port}" for host, port in self.upstreams)
                          or "nowhere (names outside the cluster are refused)")
            self._log.info("cluster DNS: %s:53 (service %s) served on %s:%d; domain %s; "
                           "forwarding to %s", self.cluster.dns_ip, service.key, self.listen,
                           self.port, self.cluster.domain, forwarding)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_udp, udp, nursery)
                    nursery.start_soon(self._serve_tcp, tcp, nursery)
                    task_status.started()
            finally:
                self._node.set_system_services(())
                self.port = None

    def resolv_conf(self, namespace: str) -> str | None:
        """The path of the resolv.conf pods of ``namespace`` see; None with DNS off."""
        return resolv_conf_path(self._node.topology, namespace) if self.port is not None else None

    def remove_files(self) -> None:
        remove_resolv_confs(self._node.topology)

    def statistics(self) -> dict[str, Any]:
        return {"enabled": self.port is not None, "reason": self.off_reason,
                "dns_ip": str(self.cluster.dns_ip) if self.cluster.dns_ip else None,
                "domain": self.cluster.domain, "listen": f"{self.listen}:{self.port}"
                if self.port is not None else None,
                "upstreams": [f"{host}:{port}" for host, port in self.upstreams],
                "zone_builds": self._views.builds, **self.counters.as_dict()}

    # -- UDP -----------------------------------------------------------------------------------

    async def _serve_udp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            wire, peer = await sock.recvfrom(MAX_MESSAGE)
            self.counters.queries["udp"] += 1
            decision = decide(wire, self.view(), udp=True, forwarding=bool(self.upstreams))
            if isinstance(decision, Forward):
                if self._forwards >= MAX_FORWARDS:
                    self.counters.dropped += 1
                    await self._send(sock, peer, self._servfail(decision.query, True))
                    continue
                self._forwards += 1
                nursery.start_soon(self._forward_udp, sock, peer, decision, wire)
                continue
            reply = self._settle(decision)
            if reply is not None:
                await self._send(sock, peer, reply)

    async def _forward_udp(self, sock: trio.socket.SocketType, peer: Address,
                           decision: Forward, wire: bytes) -> None:
        try:
            answer = await self._forward(decision, wire)
            await self._send(sock, peer, answer if answer is not None
                             else self._servfail(decision.query, True))
        finally:
            self._forwards -= 1

    async def _send(self, sock: trio.socket.SocketType, peer: Address, reply: Reply | bytes
                    ) -> None:
        try:
            await sock.sendto(reply.wire if isinstance(reply, Reply) else reply, peer)
        except OSError as exc:
            # The client went away (or never was): its loss, not the server's.
            self._log.debug("cluster DNS: cannot answer %s: %s", peer, exc)

    # -- TCP -----------------------------------------------------------------------------------

    async def _serve_tcp(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as exc:
                # Out of file descriptors, say: a moment later there may be some again.
                self._log.warning("cluster DNS: accepting a TCP connection failed: %s", exc)
                await trio.sleep(ACCEPT_RETRY)
                continue
            if self._tcp_connections >= MAX_TCP_CONNECTIONS:
                self.counters.dropped += 1
                conn.close()
                continue
            self._tcp_connections += 1
            nursery.start_soon(self._serve_connection, trio.SocketStream(conn))

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while True:
                    wire = None
                    with trio.move_on_after(TCP_IDLE_TIMEOUT):
                        prefix = await _receive_exactly(stream, 2)
                        wire = await _receive_exactly(stream, int.from_bytes(prefix, "big"))
                    if wire is None:
                        return  # idle for too long
                    self.counters.queries["tcp"] += 1
                    decision = decide(wire, self.view(), udp=False,
                                      forwarding=bool(self.upstreams))
                    if isinstance(decision, Forward):
                        answer = await self._forward(decision, wire)
                        out = answer if answer is not None else self._servfail(
                            decision.query, False).wire
                    else:
                        reply = self._settle(decision)
                        if reply is None:
                            return  # nothing to answer: a client that sends junk is hung up on
                        out = reply.wire
                    await stream.send_all(len(out).to_bytes(2, "big") + out)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            return
        finally:
            self._tcp_connections -= 1

    # -- answers and forwarding ----------------------------------------------------------------

    def _settle(self, decision: Reply | Drop) -> Reply | None:
        """Count a local decision; the reply to send, if any."""
        if isinstance(decision, Drop):
            if decision.reason == "malformed":
                self.counters.malformed += 1
            else:
                self.counters.dropped += 1
            return None
        if decision.rcode == "FORMERR":
            self.counters.malformed += 1
        self.counters.answers[decision.rcode] += 1
        if decision.truncated:
            self.counters.truncated += 1
        return decision

    def _servfail(self, query: dns.message.Message, udp: bool) -> Reply:
        response = dns.message.make_response(query, recursion_available=True)
        response.set_rcode(dns.rcode.SERVFAIL)
        reply = render(response, udp_limit(query) if udp else MAX_MESSAGE)
        self.counters.answers["SERVFAIL"] += 1
        return reply

    async def _forward(self, decision: Forward, wire: bytes) -> bytes | None:
        """The first upstream answer to ``wire`` with its ID, within FORWARD_TIMEOUT; None when
        no upstream answered."""
        self.counters.forwarded += 1
        per_upstream = FORWARD_TIMEOUT / max(len(self.upstreams), 1)
        for upstream in self.upstreams:
            try:
                answer = await _ask_upstream(upstream, wire, per_upstream)
            except OSError as exc:
                self._log.debug("cluster DNS: upstream %s:%d failed: %s", *upstream, exc)
                continue
            if answer is not None:
                try:
                    rcode = dns.rcode.to_text(dns.message.from_wire(answer).rcode())
                except (dns.exception.DNSException, ValueError):
                    rcode = "UNREADABLE"  # still passed on: the client may read it
                self.counters.answers[rcode] += 1
                return answer
        self.counters.forward_failures += 1
        self._log.info("cluster DNS: no upstream answered for %s", decision.name)
        return None

    async def resolve(self, name: str, rdtype: str) -> dns.message.Message:
        """The answer a pod gets for one absolute name (``vswitchctl dns``), forwarded as a
        pod's query would be."""
        query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        decision = decide_message(query, self.view(), udp=False,
                                  forwarding=bool(self.upstreams))
        if isinstance(decision, Forward):
            wire = query.to_wire()
            answer = await self._forward(decision, wire)
            if answer is None:
                return dns.message.from_wire(self._servfail(query, False).wire)
            return dns.message.from_wire(answer)
        assert isinstance(decision, Reply)
        return dns.message.from_wire(decision.wire)


async def _receive_exactly(stream: trio.SocketStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


async def _ask_upstream(upstream: Address, wire: bytes, timeout: float) -> bytes | None:
    """One query to one upstream over UDP from a fresh socket (a random source port, so that an
    off-path forger must guess it); the answer whose ID matches, or None after ``timeout``."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.connect(upstream)
        await sock.send(wire)
        with trio.move_on_after(timeout):
            while True:
                answer = await sock.recv(MAX_MESSAGE)
                if len(answer) >= 2 and answer[:2] == wire[:2] and answer[2] & 0x80:
                    return answer
    return None

"""vswitchd: the trio shell that wires kernel objects, ports, the core and the control socket together.

Theory of operation
-------------------
The whole daemon lives in one nursery, and start-up is ordered with ``nursery.start()`` so that each
step is complete before the next one begins:

1. open the kernel side; of what an earlier run left behind, keep what the file still describes
   as it is and remove the rest (``Kernel.reclaim_leftovers``);
2. create (or re-attach) the host port (if enabled) and every pod (namespace + TAP), register
   each as a switch port: ids 1..N, host port first, so ids are stable for a given topology.
   Each port carries the index of its segment (the host port is on the default one, 0) and its
   MTU, which the router needs to pick the egress and to send "fragmentation needed";
3. with the host port up, route every other segment and every static route's prefix from the
   host into the host port via the default gateway, so the node reaches all of its pods through
   the router as it reaches the default segment through the switch;
4. put back the connections an earlier run saved (``vswitch.runtime.connection_state``), start
   one task per port, then the timer task and the periodic snapshot of the connections;
5. start cluster DNS (``vswitch.runtime.dns_server``: its sockets and the kube-dns service),
   then the containers of each pod (they find their network and their resolver in place), or
   re-adopt those an earlier run left running;
6. with a cluster store, join it: publish this node, route the other nodes it lists
   (``vswitch.runtime.cluster``);
7. start the control socket;
8. only then log "ready" and send ``READY=1`` to systemd, so that "ready" means every pod can
   already talk and vswitchctl already answers; with ``WatchdogSec=``, start pinging systemd's
   watchdog while the packet path makes progress (``vswitch.runtime.watchdog``);
9. start the hot standby, which takes over if this process dies (``vswitch.runtime.standby``).

It runs until SIGTERM or SIGINT. SIGHUP (systemd's ``ExecReload``) asks for a reload of the
configuration file, which a task started after step 8 carries out; see ``NodeRuntime.reload``.
Shutdown is cancellation: every task ends, the control server removes its socket, the standby's
task ends the standby (so it is gone before the kernel layer releases the node's lock, and never
takes over from a daemon that stops); then, shielded from cancellation, the daemon closes the TAP
fds. The two signals differ in what stays:

* SIGTERM (``systemctl stop`` and ``restart``) is a restart: the pods stay as they are, their
  namespaces, persistent TAPs, addresses, routes and running containers, and so do the host port
  and the uplink; the next start re-attaches them (``Kernel.keep``, ``ContainerSupervisor.keep``).
  A pod loses its link while no daemon runs, not its sockets. Before the ports close, the daemon
  saves the connections it tracks for the next start (``vswitch.runtime.connection_state``).
  ``vswitchctl clean`` removes what a stopped node kept.
* SIGINT (Ctrl-C of a foreground run) removes everything: the container supervisor stops its
  processes, the kernel objects are torn down, and the saved connections go with them.

The signal receiver is installed before anything is created, so either signal during start-up
also takes its path instead of the default of dying on the spot.

Reload
------
The file is the desired state. A reload reads and validates all of it first, and changes nothing
unless it is valid and differs from the running node only in what can change while the node runs,
its pods and services; everything else (node, segments, routes, host port, uplink, cluster,
dataplane, control) is built once at start-up, so a change there is refused and needs a restart.
The difference is then applied with the same building blocks as the control socket's runtime
changes, under the same lock: pods that disappeared are removed (also those added at runtime with
``vswitchctl``: they are not in the file), changed pods are created again, pods whose labels or
readiness alone changed are updated in place (those only steer service programming), services are
added, replaced and removed, and the core is programmed once at the end. SIGHUPs that arrive
during a reload are coalesced into one more reload afterwards, so the last version of the file
always wins and two reloads never interleave.

Every piece of I/O is injected (kernel, ports, container supervisor, switch), so a test can run this
very function with memory ports and no root; see ``vswitch.runtime.memory_port``.

Time
----
The shell reads time from trio's clock only (``trio.current_time()``): the ``now`` it hands the
core with packets, timers and programs, and the deadlines the timer sleeps until. A test can so run
the daemon under a mock clock, and the core's deadlines need no conversion. The system's clock is
used where an outside party compares with it: systemd's ``MONOTONIC_USEC`` here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import signal
import time
from ipaddress import IPv4Network
from typing import Any, AsyncContextManager, Awaitable, Callable, Iterator, Sequence

import trio

from vswitch import config
from vswitch.core.port_spec import VNET_HDR_LEN, PortKind, PortSpec
from vswitch.core.programming import policy_namespaces
from vswitch.model import (DEFAULT_SEGMENT, Namespace, NetworkPolicy, Pod, RemotePod, Service,
                           Topology)
from vswitch.runtime import sdnotify
from vswitch.control.node import node_statistics
from vswitch.runtime.cluster import ClusterRuntime
from vswitch.runtime.connection_state import ConnectionState
from vswitch.runtime.control import (ControlCommands, ControlContext, prepare_socket_path,
                                     serve_control)
from vswitch.runtime.metrics import SwitchCollector, serve_metrics
from vswitch.runtime.port_io import Port, PortFactory, RuntimeErrors, transmit
from vswitch.runtime.switch_core import SwitchCore
from vswitch.runtime.watchdog import run_watchdog

module_log = logging.getLogger("vswitchd")

# The timer wakes at least this often even when the core has nothing scheduled, so that a deadline
# the core computes from state changed by packets is never missed by more than this.
MAX_TIMER_SLEEP = 1.0
# The shortest sleep between two timer runs. Lookups treat anything past its deadline as gone at
# once, so the timer only reclaims memory and paces ARP retries; waking at most every 10 ms keeps
# its cost bounded when many entries expire at scattered times.
TIMER_GRANULARITY = 0.01

# Called with the topology, and after a takeover with ``lock=`` the node's lock already held.
KernelFactory = Callable[..., AsyncContextManager[Any]]

UPLINK_PORT = "uplink"  # the uplink's port name in the switch, counters and traces


def _system_kernel_factory() -> KernelFactory:
    from vswitch.runtime.kernel import Kernel

    return Kernel.open


def _system_switch(topology: Topology) -> SwitchCore:
    from vswitch import accel
    from vswitch.core.switch import Switch

    # The core takes its randomness as a seed (it never reads a random source itself); the
    # daemon gives it a fresh one, so endpoint choice differs between runs as kube-proxy's does.
    seed = int.from_bytes(os.urandom(8), "big")
    return Switch(topology, accel=accel.load(topology.dataplane.accel), rng_seed=seed)


def _system_supervisor(topology: Topology) -> Any:
    from vswitch.runtime.containers import ContainerSupervisor
    from vswitch.runtime.resolv_conf import resolv_conf_path

    return ContainerSupervisor(logging.getLogger("vswitchd.containers"),
                               resolv_conf=lambda namespace: resolv_conf_path(topology, namespace),
                               state_dir=topology.control.state_dir)


def _system_dns(node: NodeRuntime) -> Any:
    from vswitch.runtime.dns_server import ClusterDns

    return ClusterDns(node, logging.getLogger("vswitchd.dns"))


def _system_netns_path(name: str) -> str:
    from vswitch.runtime.netns import netns_path

    return netns_path(name)


def _system_port_factory() -> PortFactory:
    from vswitch.runtime.port_io import tap_port_factory

    return tap_port_factory


def _datapath_port_factory() -> PortFactory:
    from vswitch.runtime.datapath_io import datapath_port_factory

    return datapath_port_factory


def _run_upcalls() -> Callable[..., Awaitable[None]]:
    from vswitch.runtime.datapath_io import run_upcalls

    return run_upcalls


def port_specs(topology: Topology,
               vnet_hdr_len: int = VNET_HDR_LEN) -> Iterator[tuple[PortSpec, Any]]:
    """Each port's spec with the thing to create for it: None for the host port and the uplink
    (their kind tells them apart), else the Pod. Host port first, then the uplink, then pods.
    ``vnet_hdr_len`` is the kernel layer's choice of virtio-net header (``Kernel.vnet_hdr_len``)."""
    node, dataplane = topology.node, topology.dataplane
    next_id = 1
    host = topology.host_port
    if host.enabled:
        yield PortSpec(id=next_id, name="host", kind=PortKind.HOST, mac=host.mac, ip=host.address.ip,
                       vnet_hdr=dataplane.offloads, mtu=node.mtu, device=host.name,
                       segment=topology.segment_index(DEFAULT_SEGMENT),
                       vnet_hdr_len=vnet_hdr_len), None
        next_id += 1
    if topology.uplink is not None:
        yield uplink_spec(topology, next_id, vnet_hdr_len), None
        next_id += 1
    for pod in topology.pods:
        yield pod_spec(topology, pod, next_id, vnet_hdr_len), pod
        next_id += 1


def uplink_spec(topology: Topology, port_id: int, vnet_hdr_len: int = VNET_HDR_LEN) -> PortSpec:
    """The uplink's far side is the whole outside world: any source address may arrive on it, so
    port security is off, and its address is the gateway's, the router's next hop."""
    uplink = topology.uplink
    assert uplink is not None
    segment = topology.uplink_segment_index()
    assert segment is not None
    return PortSpec(id=port_id, name=UPLINK_PORT, kind=PortKind.UPLINK, mac=uplink.far_mac,
                    ip=uplink.gateway, vnet_hdr=topology.dataplane.offloads, mtu=uplink.mtu,
                    device=uplink.name, port_security=False, segment=segment,
                    vnet_hdr_len=vnet_hdr_len)


def pod_spec(topology: Topology, pod: Pod, port_id: int,
             vnet_hdr_len: int = VNET_HDR_LEN) -> PortSpec:
    return PortSpec(id=port_id, name=pod.key, kind=PortKind.POD, mac=pod.mac, ip=pod.ip,
                    vnet_hdr=topology.dataplane.offloads, mtu=topology.pod_mtu(pod),
                    device=pod.tap, segment=topology.segment_index(pod.segment),
                    vnet_hdr_len=vnet_hdr_len)


def host_route_destinations(topology: Topology) -> list[IPv4Network]:
    """Prefixes the node itself must send into the host port: other segments, static routes.

    The default segment needs no route: the host port's address gives the kernel a connected
    route to it. A static default route (0.0.0.0/0) is left out: the host's own default route is
    not the daemon's to replace, and the kernel would refuse a second one anyway.
    """
    if not topology.host_port.enabled:
        return []
    destinations = [segment.cidr for segment in topology.all_segments()
                    if segment.name != DEFAULT_SEGMENT]
    destinations += [route.dst for route in topology.routes if route.dst.prefixlen > 0]
    return destinations


async def run_timer(switch: SwitchCore, ports: dict[int, Port], errors: RuntimeErrors, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Drive the core's timers (FDB aging and the like) at the deadlines it asks for."""
    task_status.started()
    while True:
        now = trio.current_time()
        try:
            deadline = min(switch.next_deadline(), now + MAX_TIMER_SLEEP)
        except Exception:
            errors.core("core failed computing its next deadline", exc_info=True)
            deadline = now + MAX_TIMER_SLEEP
        # The core's deadlines are on trio's clock, the one the shell hands it as ``now``.
        await trio.sleep_until(max(now + TIMER_GRANULARITY, deadline) if math.isfinite(deadline)
                               else now + MAX_TIMER_SLEEP)
        try:
            txs = switch.handle_timer(trio.current_time())
        except Exception:
            errors.core("core failed handling its timers", exc_info=True)
            continue
        transmit(switch, ports, txs)


async def watch_signals(signals: Any, cancel_scope: trio.CancelScope, log: logging.Logger,
                        reloads: ReloadRequests, keep: Callable[[], None]) -> None:
    """SIGHUP: reload. SIGTERM: ``keep()`` the pods, then stop. SIGINT: stop, removing them."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            # Only noted here: a reload may take a while, and SIGTERM must not wait behind it.
            log.info("received SIGHUP: reloading the configuration")
            reloads.request()
            continue
        if signum == signal.SIGTERM:
            log.info("received SIGTERM: stopping; the pods and their containers stay for the "
                     "next start (SIGINT, or `vswitchctl clean` afterwards, removes them)")
            keep()
        else:
            log.info("received %s: shutting down and removing the node's pods",
                     signal.Signals(signum).name)
        cancel_scope.cancel()
        return


class ReloadRequests:
    """Reloads asked for (by SIGHUP) and not yet started, coalesced into at most one.

    A request that arrives while a reload runs sets a fresh event, so exactly one more reload
    follows, which reads the file as it is by then; any number of requests in between make no more
    than that one, and reloads never overlap.
    """

    def __init__(self) -> None:
        self._pending = trio.Event()

    def request(self) -> None:
        self._pending.set()

    async def serve(self, reload: Callable[[], Awaitable[Any]], *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            await reload()


# What must be equal between the running node and a reloaded file, section by section: these are
# built once at start-up (kernel objects, the core's tables, the control socket), so a change in
# any of them needs a restart. The cluster is compared with the loader's defaults filled in.
RESTART_SECTIONS: tuple[tuple[str, Callable[[Topology], Any]], ...] = (
    ("node", lambda t: t.node),
    ("segments", lambda t: t.all_segments()),
    ("routes", lambda t: t.routes),
    ("host_port", lambda t: t.host_port),
    ("uplink", lambda t: t.uplink),
    ("cluster", config.runtime_cluster),
    ("dataplane", lambda t: t.dataplane),
    ("control", lambda t: t.control),
)


def restart_differences(running: Topology, desired: Topology) -> list[str]:
    """What differs between ``running`` and ``desired`` outside pods and services, one entry per
    key (``node.mtu: 1500 -> 1400``) or per section when it is a list (``segments``)."""
    differences = []
    for section, part in RESTART_SECTIONS:
        old, new = part(running), part(desired)
        if old == new:
            continue
        if (dataclasses.is_dataclass(old) and type(old) is type(new)
                and not isinstance(old, type)):
            for field in dataclasses.fields(old):
                before, after = getattr(old, field.name), getattr(new, field.name)
                if before != after:
                    differences.append(f"{section}.{field.name}: {before} -> {after}")
        elif old is None or new is None:
            differences.append(f"{section}: {'added' if old is None else 'removed'}")
        else:
            differences.append(section)
    return differences


def _named_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """The keys added, removed, replaced and unchanged from ``old`` to ``new``."""
    return {"added": [k for k in new if k not in old],
            "removed": [k for k in old if k not in new],
            "replaced": [k for k in new if k in old and old[k] != new[k]],
            "unchanged": [k for k in new if k in old and old[k] == new[k]]}


def _counted(noun: str, counts: Sequence[tuple[int, str]], plural: str = "") -> list[str]:
    """``[(1, "added"), (0, "removed"), (2, "replaced")]`` as ``["1 pod added", "2 replaced"]``."""
    parts: list[str] = []
    for count, verb in counts:
        if count:
            parts.append(f"{count} {noun if count == 1 else plural or noun + 's'} {verb}"
                         if not parts
                         else f"{count} {verb}")
    return parts


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    """How a reload ended. ``ok`` false: nothing was changed, and ``message`` says why."""

    ok: bool
    message: str
    details: dict = dataclasses.field(default_factory=dict)


class _TaskHandle:
    """One cancellable task of a port (its reader, or its pod's containers), so that removing a
    pod at runtime stops exactly its tasks and waits until they are gone."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, fn: Callable[..., Any], *args: Any,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await fn(*args, task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


class NodeRuntime:
    """The running node: its current desired state and the ports, tasks and kernel objects that
    realise it.

    ``topology`` is replaced (never mutated) by every runtime change, so a reader always sees a
    consistent state. Changes run one at a time under ``lock``, and each ends by handing the
    desired pods and services to the core (``switch.program``), which re-programs its service
    table and flushes the connections of endpoints that went away. Validation happens before a
    change starts (``vswitch.config``), so a bad request changes nothing.
    """

    def __init__(self, topology: Topology, *, kernel: Any, switch: SwitchCore, supervisor: Any,
                 port_factory: PortFactory, errors: RuntimeErrors, log: logging.Logger,
                 config_path: str = "") -> None:
        self.topology = topology
        # What the configuration file said when it was last (re)loaded, to tell the pods and
        # services a reload removes because they were added at runtime from those it removes
        # because the file no longer has them.
        self.declared = topology
        self.config_path = config_path or topology.source
        self.kernel = kernel
        self.switch = switch
        self.supervisor = supervisor
        self.port_factory = port_factory
        self.errors = errors
        self.log = log
        self.ports: dict[int, Port] = {}
        self.port_ids: dict[str, int] = {}
        self.lock = trio.Lock()
        self._tasks: dict[str, list[_TaskHandle]] = {}
        self._next_id = 1
        self._nursery: trio.Nursery | None = None
        # Other nodes' ready pods (vswitch.runtime.cluster), programmed with the node's own.
        self.remote_pods: tuple[RemotePod, ...] = ()
        self._programmed = trio.Event()
        self._policies_programmed = bool(topology.network_policies)
        # The node's cluster membership (vswitch.runtime.cluster.ClusterRuntime), for
        # ``vswitchctl nodes`` and ``stats``; run_daemon sets it.
        self.cluster: Any = None
        # Services the runtime adds itself (kube-system/kube-dns), programmed before the
        # file's; and the cluster DNS server (vswitch.runtime.dns_server), when there is one.
        self.system_services: tuple[Service, ...] = ()
        self.dns: Any = None
        # The hot standby (vswitch.runtime.standby.StandbySupervisor), for ``vswitchctl status``;
        # run_daemon sets it.
        self.standby: Any = None

    # -- building blocks ------------------------------------------------------------------------

    def attach(self, spec: PortSpec, handle: Any) -> Port:
        """Wrap a kernel handle in a port and register it with the switch; the handle is closed
        if that fails."""
        try:
            port = self.port_factory(spec, handle, self.topology.dataplane)
        except BaseException:
            if isinstance(handle, int) and handle >= 0:
                os.close(handle)
            raise
        self.ports[spec.id] = port
        try:
            self.switch.add_port(spec)
        except BaseException:
            del self.ports[spec.id]
            port.close()
            raise
        self.port_ids[spec.name] = spec.id
        self._next_id = max(self._next_id, spec.id + 1)
        self.log.info("port %d: %s (%s, %s, %s)", spec.id, spec.name, spec.device, spec.ip,
                      spec.mac)
        return port

    async def _start(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None, "start_tasks has not run"
        handle = _TaskHandle()
        self._tasks.setdefault(name, []).append(handle)
        # Named after what it runs and for whom, which is what the watchdog's log line shows.
        await self._nursery.start(handle.run, fn, *args,
                                  name=f"{getattr(fn, '__qualname__', fn)} {name}")

    async def start_port(self, name: str) -> None:
        port = self.ports[self.port_ids[name]]
        await self._start(name, port.run, self.switch, self.ports, self.errors)

    async def start_containers(self, pod: Pod) -> None:
        if pod.containers:
            await self._start(pod.key, self.supervisor.run, pod)

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def program(self) -> dict:
        """Hand the desired pods (ours and other nodes') and services to the core; its JSON-able
        summary comes back. Wakes whoever waits in ``wait_programmed``."""
        pods = self.topology.pods + self.remote_pods
        now = trio.current_time()
        result = self.switch.programming.program(pods,
                                                 self.system_services + self.topology.services,
                                                 now)
        # Network policies follow the pods, their labels and namespaces; a node that never had
        # any compiles nothing.
        if self.topology.network_policies or self._policies_programmed:
            result["policies"] = self.switch.programming.program_policies(
                self.topology.network_policies, policy_namespaces(self.topology, pods), pods, now)
            self._policies_programmed = bool(self.topology.network_policies)
        remote = f" ({len(self.remote_pods)} on other nodes)" if self.remote_pods else ""
        self.log.info("programmed %d services for %d pods%s: %s", len(self.topology.services),
                      len(pods), remote, result)
        self._programmed.set()
        self._programmed = trio.Event()
        return result

    async def wait_programmed(self) -> None:
        """Until the next ``program``: the desired state may have changed."""
        await self._programmed.wait()

    def set_remote_pods(self, pods: tuple[RemotePod, ...]) -> dict | None:
        """Serve services with these pods of other nodes too; programs only if they changed."""
        if pods == self.remote_pods:
            return None
        self.remote_pods = pods
        return self.program()

    def set_system_services(self, services: tuple[Service, ...]) -> dict | None:
        """Program the services the runtime adds itself along with the file's."""
        if services == self.system_services:
            return None
        self.system_services = services
        return self.program()

    def close_ports(self) -> None:
        for port in self.ports.values():
            try:
                port.close()
            except OSError as exc:
                self.log.warning("closing port %s: %s", port.spec.name, exc)

    # -- runtime changes (callers hold ``lock``) --------------------------------------------

    async def add_pod(self, pod: Pod) -> None:
        """Create the pod's namespace and TAP, add its port, start its tasks. Not programmed."""
        spec = pod_spec(self.topology, pod, self._next_id,
                        self.kernel.vnet_hdr_len)
        handle = await self.kernel.create_pod(pod)
        try:
            self.attach(spec, handle)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.kernel.delete_pod(pod)
            raise
        self.topology = dataclasses.replace(self.topology, pods=self.topology.pods + (pod,))
        await self.start_port(pod.key)
        await self.start_containers(pod)
        self.log.info("pod %s added: %s on segment %s", pod.key, pod.ip, pod.segment)

    async def remove_pod(self, name: str) -> Pod:
        """Stop the pod's tasks, remove its port and kernel objects. Not programmed.

        ``name`` is the pod's key (``Pod.key``), as everywhere the node names a pod."""
        pod = self.topology.pod(name)
        self.topology = dataclasses.replace(
            self.topology, pods=tuple(p for p in self.topology.pods if p.key != name))
        with trio.CancelScope(shield=True):
            for handle in self._tasks.pop(name, []):
                await handle.stop()
            port_id = self.port_ids.pop(name, None)
            if port_id is not None:
                self.switch.remove_port(port_id)
                self.ports.pop(port_id).close()
            await self.kernel.delete_pod(pod)
            forget = getattr(self.supervisor, "forget", None)
            if forget is not None:
                forget(name)
        self.log.info("pod %s removed", name)
        return pod

    def set_ready(self, name: str, ready: bool) -> Pod:
        return self.update_pod(dataclasses.replace(self.topology.pod(name), ready=ready))

    def update_pod(self, pod: Pod) -> Pod:
        """Replace the running pod of the same name in the desired state only. Not programmed.

        For changes that leave the namespace, TAP and containers as they are (labels, readiness):
        those only decide which services the pod backs, which ``program`` applies.
        """
        self.topology = dataclasses.replace(
            self.topology, pods=tuple(pod if p.key == pod.key else p for p in self.topology.pods))
        return pod

    def put_services(self, services: tuple[Service, ...]) -> None:
        """Add ``services``, replacing those of the same key in place."""
        new = {service.key: service for service in services}
        kept = tuple(new.pop(s.key) if s.key in new else s for s in self.topology.services)
        self.topology = dataclasses.replace(self.topology,
                                            services=kept + tuple(new.values()))

    def put_namespaces(self, namespaces: tuple[Namespace, ...]) -> dict[str, list[str]]:
        """Add ``namespaces``, replacing the labels of those of the same name. Not programmed."""
        return self._put_named("namespaces", namespaces, lambda n: n.name)

    def put_policies(self, policies: tuple[NetworkPolicy, ...]) -> dict[str, list[str]]:
        """Add network ``policies``, replacing those of the same key. Not programmed."""
        return self._put_named("network_policies", policies, lambda p: p.key)

    def put_policy(self, policy: NetworkPolicy) -> None:
        """Add ``policy``, replacing the one of the same key in place. Not programmed."""
        self.put_policies((policy,))

    def remove_policy(self, key: str) -> NetworkPolicy:
        """Remove the network policy ``key`` (NAMESPACE/NAME). Not programmed."""
        policy = next(p for p in self.topology.network_policies if p.key == key)
        self.topology = dataclasses.replace(self.topology, network_policies=tuple(
            p for p in self.topology.network_policies if p.key != key))
        return policy

    def _put_named(self, field: str, values: tuple[Any, ...],
                   key: Callable[[Any], str]) -> dict[str, list[str]]:
        """Put ``values`` into the topology's tuple ``field``, in place of their namesakes."""
        running = getattr(self.topology, field)
        existing = {key(value): value for value in running}
        new = {key(value): value for value in values}
        merged = tuple(new.pop(key(v), v) for v in running) + tuple(new.values())
        self.topology = dataclasses.replace(self.topology, **{field: merged})
        names = [key(value) for value in values]
        return {"added": [n for n in names if n not in existing],
                "replaced": [n for n in names if n in existing and existing[n] not in values],
                "unchanged": [n for n in names if n in existing and existing[n] in values]}

    def remove_service(self, key: str) -> Service:
        service = next(s for s in self.topology.services if s.key == key)
        self.topology = dataclasses.replace(
            self.topology, services=tuple(s for s in self.topology.services if s.key != key))
        return service

    async def apply(self, pods: tuple[Pod, ...], services: tuple[Service, ...],
                    namespaces: tuple[Namespace, ...] = (),
                    policies: tuple[NetworkPolicy, ...] = ()) -> dict:
        """Add new pods, services, namespaces and network policies, replace changed ones, keep
        the rest; program once.

        A changed pod is removed and created again: its namespace, address or containers may
        differ, and a fresh pod is what Kubernetes makes of a changed pod spec too.
        """
        namespaces_result = self.put_namespaces(namespaces)
        policies_result = self.put_policies(policies)
        current = {pod.key: pod for pod in self.topology.pods}
        added, replaced, unchanged = [], [], []
        for pod in pods:
            old = current.get(pod.key)
            if old == pod:
                unchanged.append(pod.key)
                continue
            if old is not None:
                await self.remove_pod(pod.key)
                replaced.append(pod.key)
            else:
                added.append(pod.key)
            await self.add_pod(pod)
        existing = {service.key: service for service in self.topology.services}
        changed = tuple(s for s in services if existing.get(s.key) != s)
        self.put_services(changed)
        return {
            "pods": {"added": added, "replaced": replaced, "unchanged": unchanged},
            "services": {
                "added": [s.key for s in changed if s.key not in existing],
                "replaced": [s.key for s in changed if s.key in existing],
                "unchanged": [s.key for s in services if existing.get(s.key) == s],
            },
            "namespaces": namespaces_result,
            "network_policies": policies_result,
            "program": self.program(),
        }

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Make the node what its configuration file says, or change nothing and say why.

        Takes ``lock`` itself, and reads the file only once it holds it, so that of two reloads
        the later one always sees the later file. A file that does not validate, or that changes
        anything besides pods and services, is refused as a whole; the reason is logged and
        returned. Failures of the kernel part-way through are raised, as for ``apply``.
        """
        path = self.config_path
        async with self.lock:
            try:
                # Parsing a large file takes a while; the ports keep forwarding meanwhile. The
                # running topology goes along so that pods and services that stay keep their
                # addresses and node ports instead of being renumbered in file order.
                desired = await trio.to_thread.run_sync(config.load_topology, path,
                                                        self.topology)
            except config.ConfigError as exc:
                message = f"reload failed: {exc}"
                self.log.error("%s; nothing was changed", message)
                return ReloadResult(False, message)
            differences = restart_differences(self.topology, desired)
            if differences:
                message = (f"reload refused: {path} changes {', '.join(differences)}, which "
                           "cannot change while the node runs and need a restart "
                           "(systemctl restart vswitchd); nothing was changed")
                self.log.error("%s", message)
                return ReloadResult(False, message)
            details = await self._reconcile(desired)
        self.log.info("%s", details["summary"])
        return ReloadResult(True, details["summary"], details)

    async def _reconcile(self, desired: Topology) -> dict:
        """Turn the running pods and services into ``desired``'s; the caller holds ``lock``.

        Removals come first, so that a pod may take the address or name another one gave up in
        the same file; a changed pod is removed with them and created again afterwards. The core
        is programmed once at the end, also when a kernel failure stops the reload part-way, so
        that it always serves what the node really has.
        """
        running_policies = self.topology.network_policies
        running_namespaces = self.topology.namespaces
        current = {pod.key: pod for pod in self.topology.pods}
        wanted = {pod.key: pod for pod in desired.pods}
        declared_pods = {pod.key for pod in self.declared.pods}
        declared_services = {service.key for service in self.declared.services}
        removed = [name for name in current if name not in wanted]
        added = [name for name in wanted if name not in current]
        updated, replaced, unchanged = [], [], []
        for name, pod in wanted.items():
            old = current.get(name)
            if old is None:
                continue
            if old == pod:
                unchanged.append(name)
            elif dataclasses.replace(old, labels=pod.labels, ready=pod.ready) == pod:
                updated.append(name)
            else:
                replaced.append(name)
        existing = {service.key: service for service in self.topology.services}
        services = {service.key: service for service in desired.services}
        services_removed = [key for key in existing if key not in services]
        services_changed = tuple(s for key, s in services.items() if existing.get(key) != s)
        runtime_pods = [name for name in removed if name not in declared_pods]
        runtime_services = [key for key in services_removed if key not in declared_services]
        for name in runtime_pods:
            self.log.warning("reload: removing pod %s, which was added at runtime and is not in "
                             "%s (the file is the desired state)", name, self.config_path)
        for key in runtime_services:
            self.log.warning("reload: removing service %s, which was added at runtime and is not "
                             "in %s (the file is the desired state)", key, self.config_path)
        try:
            for name in removed + replaced:
                await self.remove_pod(name)
            for name in updated:
                self.update_pod(wanted[name])
            create = set(added) | set(replaced)
            for name in wanted:
                if name in create:
                    await self.add_pod(wanted[name])
            for key in services_removed:
                self.remove_service(key)
            self.put_services(services_changed)
            # Listed in the file's order, as a restart would list them.
            order = {name: index for index, name in enumerate(wanted)}
            keys = {key: index for index, key in enumerate(services)}
            self.topology = dataclasses.replace(
                self.topology,
                pods=tuple(sorted(self.topology.pods, key=lambda p: order[p.key])),
                namespaces=desired.namespaces,
                network_policies=desired.network_policies,
                services=tuple(sorted(self.topology.services, key=lambda s: keys[s.key])))
            self.declared = desired
        finally:
            program = self.program()
        services_added = [s.key for s in services_changed if s.key not in existing]
        services_replaced = [s.key for s in services_changed if s.key in existing]
        policies = _named_changes({p.key: p for p in running_policies},
                                  {p.key: p for p in desired.network_policies})
        namespaces = _named_changes({n.name: n for n in running_namespaces},
                                    {n.name: n for n in desired.namespaces})
        parts = (_counted("pod", [(len(added), "added"), (len(removed), "removed"),
                                  (len(replaced), "replaced"), (len(updated), "updated in place")])
                 + _counted("service", [(len(services_added), "added"),
                                        (len(services_removed), "removed"),
                                        (len(services_replaced), "changed")])
                 + _counted("network policy", [(len(policies["added"]), "added"),
                                               (len(policies["removed"]), "removed"),
                                               (len(policies["replaced"]), "changed")],
                            "network policies")
                 + _counted("namespace", [(len(namespaces["added"]), "added"),
                                          (len(namespaces["removed"]), "removed"),
                                          (len(namespaces["replaced"]), "changed")]))
        summary = "reload: " + (", ".join(parts) if parts else "no changes")
        if runtime_pods or runtime_services:
            summary += (f" (removed as added at runtime, not in the file: "
                        f"{', '.join(runtime_pods + runtime_services)})")
        return {
            "summary": summary,
            "config": self.config_path,
            "pods": {"added": added, "removed": removed, "replaced": replaced,
                     "updated": updated, "unchanged": unchanged},
            "services": {"added": services_added, "removed": services_removed,
                         "replaced": services_replaced,
                         "unchanged": [key for key, service in services.items()
                                       if existing.get(key) == service]},
            "network_policies": policies,
            "namespaces": namespaces,
            "removed_runtime_additions": {"pods": runtime_pods, "services": runtime_services},
            "program": program,
        }

    async def reload_logged(self) -> None:
        """``reload`` for a signal, which has nobody to answer: every outcome goes to the log, and
        a failure part-way costs this reload, not the daemon."""
        # systemd compares this with its own CLOCK_MONOTONIC, so it is the system's clock, not
        # trio's.
        system_monotonic_usec = time.monotonic_ns() // 1000
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={system_monotonic_usec}")
        try:
            await self.reload()
        except Exception:
            self.log.error("reload failed part-way; the node runs what was applied until then",
                           exc_info=True)
        finally:
            sdnotify.notify(f"READY=1\nSTATUS=node {self.topology.node.name}, "
                            f"{len(self.topology.pods)} pods")


async def run_daemon(topology: Topology, *,
                     kernel_factory: KernelFactory | None = None,
                     port_factory: PortFactory | None = None,
                     switch_factory: Callable[[Topology], SwitchCore] | None = None,
                     supervisor_factory: Callable[[Topology], Any] | None = None,
                     netns_path: Callable[[str], str] | None = None,
                     dns_factory: Callable[[NodeRuntime], Any] | None = None,
                     config_path: str = "",
                     handle_signals: bool = True,
                     startup_lease: int = 0,
                     save_connections: bool | None = None,
                     standby: Any = None,
                     takeover_lock: Any = None,
                     log: logging.Logger = module_log,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run vswitchd for ``topology`` until a signal or cancellation; always clean up.

    Defaults are the real system (TAPs, namespaces, containers); tests pass the memory runtime.
    Cluster DNS (``dns_factory``) defaults to the real server only with the real kernel: its
    sockets listen behind the host port, which only the kernel's TAP delivers to.
    ``startup_lease`` is the lease ``pod_cidr = "auto"``'s subnet was taken under
    (``vswitch.runtime.cluster.lease_pod_cidr``). ``task_status.started()`` receives the
    ControlContext once the daemon is ready. ``save_connections`` (default: with the real
    kernel only) keeps the connection state in the state directory across restarts
    (``vswitch.runtime.connection_state``). ``standby``
    (``vswitch.runtime.standby.StandbySupervisor``) keeps a hot standby of this daemon once it is
    ready. ``takeover_lock`` is the node's lock a standby took from a daemon that died: it is
    passed on to the kernel layer's own, and the ready message tells systemd the new main pid.
    """
    if save_connections is None:
        save_connections = kernel_factory is None
    if dns_factory is None and kernel_factory is None:
        dns_factory = _system_dns
    kernel_factory = kernel_factory or _system_kernel_factory()
    switch = (switch_factory or _system_switch)(topology)
    # With the native accel, the C datapath's poll thread reads the TAPs (``datapath_io``).
    datapath = getattr(switch, "datapath", None) if port_factory is None else None
    if port_factory is None:
        port_factory = (_datapath_port_factory() if datapath is not None
                        else _system_port_factory())
    supervisor = (supervisor_factory or _system_supervisor)(topology)
    connections = ConnectionState.of(topology, switch, log) if save_connections else None
    errors = RuntimeErrors()
    socket_path = topology.control.socket

    # Fail before creating anything if another daemon already serves this socket; serve_control
    # checks again when it binds, for a daemon that appeared in between.
    prepare_socket_path(socket_path)

    signal_receiver = (trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                       if handle_signals else contextlib.nullcontext(None))
    with signal_receiver as signals:
        # After a takeover the kernel layer is handed the node's lock this process already holds,
        # so no competing start can slip in between.
        opened = (kernel_factory(topology) if takeover_lock is None
                  else kernel_factory(topology, lock=takeover_lock))
        async with opened as kernel:
            node = NodeRuntime(topology, kernel=kernel, switch=switch, supervisor=supervisor,
                               port_factory=port_factory, errors=errors, log=log,
                               config_path=config_path)
            node.cluster = ClusterRuntime(node, switch, log, startup_lease=startup_lease)
            node.dns = dns_factory(node) if dns_factory is not None else None
            node.standby = standby
            reloads = ReloadRequests()
            kept = False

            def keep() -> None:
                # Test doubles of the kernel and the supervisor may not know how to keep.
                nonlocal kept
                kept = True
                for part in (kernel, supervisor):
                    keep_part = getattr(part, "keep", None)
                    if keep_part is not None:
                        keep_part()

            try:
                async with trio.open_nursery() as nursery:
                    node.bind(nursery)
                    if signals is not None:
                        nursery.start_soon(watch_signals, signals, nursery.cancel_scope, log,
                                           reloads, keep)

                    # The kernel logs each object it removes or re-attaches; this line makes the
                    # count easy to find after a crash.
                    reclaim = getattr(kernel, "reclaim_leftovers", kernel.remove_leftovers)
                    leftovers = await reclaim()
                    if leftovers:
                        log.warning("removed %d leftover objects of an earlier run",
                                    len(leftovers))

                    for spec, pod in port_specs(topology,
                                                kernel.vnet_hdr_len):
                        if spec.kind is PortKind.HOST:
                            handle = await kernel.create_host_port()
                        elif spec.kind is PortKind.UPLINK:
                            handle = await kernel.create_uplink()
                        else:
                            handle = await kernel.create_pod(pod)
                        node.attach(spec, handle)

                    for destination in host_route_destinations(topology):
                        await kernel.add_host_route(destination, topology.node.gateway)

                    # The tables are programmed and no port is read yet: the connections an
                    # earlier run saved go back in before their next packet.
                    if connections is not None:
                        await connections.restore()
                    if datapath is not None:
                        await nursery.start(_run_upcalls(), switch, node.ports, errors,
                                            topology.dataplane.burst)
                    for name in list(node.port_ids):
                        await node.start_port(name)
                    await nursery.start(run_timer, switch, node.ports, errors)
                    if connections is not None:
                        await nursery.start(connections.run)

                    if node.dns is not None:
                        await nursery.start(node.dns.run)
                    for pod in topology.pods:
                        await node.start_containers(pod)
                    # With a cluster store: the other nodes are routed before "ready", as far as
                    # the store can be reached (a node also starts without it).
                    await nursery.start(node.cluster.run)

                    context = ControlContext(
                        topology=topology, switch=switch, supervisor=supervisor,
                        netns_path=netns_path or _system_netns_path, port_ids=node.port_ids,
                        config_path=config_path, errors=errors, node=node)
                    await nursery.start(serve_control, socket_path, ControlCommands(context))
                    if topology.control.metrics:
                        await nursery.start(serve_metrics, topology.control.metrics,
                                            SwitchCollector(
                                                lambda: node_statistics(
                                                    switch, node, context.control_counters),
                                                topology.node.name))

                    log.info("vswitchd ready: node %s, %d pods, control socket %s (accel %s)",
                             topology.node.name, len(topology.pods), socket_path,
                             switch.accel_name)
                    main_pid = f"MAINPID={os.getpid()}\n" if takeover_lock is not None else ""
                    sdnotify.notify(f"{main_pid}READY=1\nSTATUS=node {topology.node.name}, "
                                    f"{len(topology.pods)} pods")
                    task_status.started(context)
                    # With WatchdogSec=, pings systemd while the packet path makes progress.
                    await nursery.start(run_watchdog, log)
                    # Everything made during start-up (modules, header declarations, tables) lives
                    # as long as the daemon: moving it out of the collector's generations keeps
                    # the occasional full collection from scanning it between packets.
                    gc.freeze()
                    if standby is not None:
                        # Inside the kernel layer's lock: the standby is ended before it is
                        # released, whatever ends the daemon.
                        await nursery.start(standby.run)
                    # Started last, so that a SIGHUP during start-up waits for a complete node
                    # that systemd knows is ready, and is then carried out.
                    await nursery.start(reloads.serve, node.reload_logged)
                    await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    sdnotify.notify("STOPPING=1")
                    if connections is not None and kept:
                        await connections.save_final()
                    node.close_ports()
                    if not kept:
                        await kernel.teardown()
                        # The connections live as long as the pods.
                        if connections is not None:
                            connections.discard()
                    if node.dns is not None:
                        node.dns.remove_files()
                    log.info("vswitchd stopped: node %s", topology.node.name)

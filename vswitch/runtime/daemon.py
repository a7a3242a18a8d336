"""vswitchd: the trio shell that wires kernel objects, ports, the core and the control socket together.

Theory of operation
-------------------
The whole daemon lives in one nursery, and start-up is ordered with ``nursery.start()`` so that each
step is complete before the next one begins:

1. open the kernel side and remove what a crashed earlier run left behind;
2. create the host port (if enabled) and every pod (namespace + TAP), register each as a switch
   port: ids 1..N, host port first, so ids are stable for a given topology. Each port carries
   the index of its segment (the host port is on the default one, 0) and its MTU, which the
   router needs to pick the egress and to send "fragmentation needed";
3. with the host port up, route every other segment and every static route's prefix from the
   host into the host port via the default gateway, so the node reaches all of its pods through
   the router as it reaches the default segment through the switch;
4. start one task per port, then the timer task;
5. start the containers of each pod (they find their network already in place);
6. start the control socket;
7. only then log "ready" and send ``READY=1`` to systemd, so that "ready" means every pod can
   already talk and vswitchctl already answers.

It runs until SIGTERM or SIGINT (SIGHUP is acknowledged but reload does not exist yet). Shutdown is
cancellation: every task ends, the container supervisor stops its processes, the control server
removes its socket; then, shielded from cancellation, the daemon closes the TAP fds and tears the
kernel objects down. The signal receiver is installed before anything is created, so a SIGTERM
during start-up also takes the clean path instead of the default of dying on the spot.

Every piece of I/O is injected (kernel, ports, container supervisor, switch), so a test can run this
very function with memory ports and no root; see ``vswitch.runtime.memory_port``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from ipaddress import IPv4Network
from typing import Any, AsyncContextManager, Callable, Iterator

import trio

from vswitch.core.ports import PortKind, PortSpec
from vswitch.model import DEFAULT_SEGMENT, Topology
from vswitch.runtime import sdnotify
from vswitch.runtime.control import (ControlCommands, ControlContext, prepare_socket_path,
                                     serve_control)
from vswitch.runtime.ports import Port, PortFactory, RuntimeErrors, transmit

module_log = logging.getLogger("vswitchd")

# The timer wakes at least this often even when the core has nothing scheduled, so that a deadline
# the core computes from state changed by packets is never missed by more than this.
MAX_TIMER_SLEEP = 1.0

KernelFactory = Callable[[Topology], AsyncContextManager[Any]]


def _system_kernel_factory() -> KernelFactory:
    from vswitch.runtime.kernel import Kernel

    return Kernel.open


def _system_switch(topology: Topology) -> Any:
    from vswitch import accel
    from vswitch.core.switch import Switch

    return Switch(topology, accel=accel.load(topology.dataplane.accel))


def _system_supervisor(topology: Topology) -> Any:
    from vswitch.runtime.containers import ContainerSupervisor

    return ContainerSupervisor(logging.getLogger("vswitchd.containers"))


def _system_netns_path(name: str) -> str:
    from vswitch.runtime.netns import netns_path

    return netns_path(name)


def _system_port_factory() -> PortFactory:
    from vswitch.runtime.ports import tap_port_factory

    return tap_port_factory


def port_specs(topology: Topology) -> Iterator[tuple[PortSpec, Any]]:
    """Each port's spec with the thing to create for it: None for the host port, else the Pod."""
    node, dataplane = topology.node, topology.dataplane
    next_id = 1
    host = topology.host_port
    if host.enabled:
        yield PortSpec(id=next_id, name="host", kind=PortKind.HOST, mac=host.mac, ip=host.address.ip,
                       vnet_hdr=dataplane.offloads, mtu=node.mtu, device=host.name,
                       segment=topology.segment_index(DEFAULT_SEGMENT)), None
        next_id += 1
    for pod in topology.pods:
        yield PortSpec(id=next_id, name=pod.name, kind=PortKind.POD, mac=pod.mac, ip=pod.ip,
                       vnet_hdr=dataplane.offloads, mtu=topology.pod_mtu(pod), device=pod.tap,
                       segment=topology.segment_index(pod.segment)), pod
        next_id += 1


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


async def run_timer(switch: Any, ports: dict[int, Port], errors: RuntimeErrors, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Drive the core's timers (FDB aging and the like) at the deadlines it asks for."""
    task_status.started()
    while True:
        now = time.monotonic()
        try:
            deadline = min(switch.next_deadline(), now + MAX_TIMER_SLEEP)
        except Exception:
            errors.core("core failed computing its next deadline", exc_info=True)
            deadline = now + MAX_TIMER_SLEEP
        # The core's clock is time.monotonic(); trio's clock has its own offset, so the deadline is
        # converted into a relative sleep rather than passed to trio.sleep_until.
        await trio.sleep(max(0.0, deadline - now) if math.isfinite(deadline) else MAX_TIMER_SLEEP)
        try:
            txs = switch.handle_timer(time.monotonic())
        except Exception:
            errors.core("core failed handling its timers", exc_info=True)
            continue
        transmit(switch, ports, txs)


async def watch_signals(signals: Any, cancel_scope: trio.CancelScope, log: logging.Logger) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            log.warning("received SIGHUP: reload is not supported yet; restart vswitchd to apply a "
                        "changed configuration")
            continue
        log.info("received %s, shutting down", signal.Signals(signum).name)
        cancel_scope.cancel()
        return


async def run_daemon(topology: Topology, *,
                     kernel_factory: KernelFactory | None = None,
                     port_factory: PortFactory | None = None,
                     switch_factory: Callable[[Topology], Any] | None = None,
                     supervisor_factory: Callable[[Topology], Any] | None = None,
                     netns_path: Callable[[str], str] | None = None,
                     config_path: str = "",
                     handle_signals: bool = True,
                     log: logging.Logger = module_log,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run vswitchd for ``topology`` until a signal or cancellation; always clean up.

    Defaults are the real system (TAPs, namespaces, containers); tests pass the memory runtime.
    ``task_status.started()`` receives the ControlContext once the daemon is ready.
    """
    kernel_factory = kernel_factory or _system_kernel_factory()
    port_factory = port_factory or _system_port_factory()
    switch = (switch_factory or _system_switch)(topology)
    supervisor = (supervisor_factory or _system_supervisor)(topology)
    errors = RuntimeErrors()
    ports: dict[int, Port] = {}
    port_ids: dict[str, int] = {}
    socket_path = topology.control.socket

    # Fail before creating anything if another daemon already serves this socket; serve_control
    # checks again when it binds, for a daemon that appeared in between.
    prepare_socket_path(socket_path)

    signal_receiver = (trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                       if handle_signals else contextlib.nullcontext(None))
    with signal_receiver as signals:
        async with kernel_factory(topology) as kernel:
            try:
                async with trio.open_nursery() as nursery:
                    if signals is not None:
                        nursery.start_soon(watch_signals, signals, nursery.cancel_scope, log)

                    # The kernel logs each object it removes; this line makes the count easy to
                    # find after a crash.
                    leftovers = await kernel.remove_leftovers()
                    if leftovers:
                        log.warning("removed %d leftover objects of an earlier run",
                                    len(leftovers))

                    for spec, pod in port_specs(topology):
                        handle = await (kernel.create_host_port() if pod is None
                                        else kernel.create_pod(pod))
                        try:
                            port = port_factory(spec, handle, topology.dataplane)
                        except BaseException:
                            if isinstance(handle, int) and handle >= 0:
                                os.close(handle)
                            raise
                        ports[spec.id] = port
                        switch.add_port(spec)
                        port_ids[spec.name] = spec.id
                        log.info("port %d: %s (%s, %s, %s)", spec.id, spec.name, spec.device,
                                 spec.ip, spec.mac)

                    for destination in host_route_destinations(topology):
                        await kernel.add_host_route(destination, topology.node.gateway)

                    for port in ports.values():
                        await nursery.start(port.run, switch, ports, errors)
                    await nursery.start(run_timer, switch, ports, errors)

                    for pod in topology.pods:
                        if pod.containers:
                            await nursery.start(supervisor.run, pod)

                    context = ControlContext(
                        topology=topology, switch=switch, supervisor=supervisor,
                        netns_path=netns_path or _system_netns_path, port_ids=port_ids,
                        config_path=config_path, errors=errors)
                    await nursery.start(serve_control, socket_path, ControlCommands(context))

                    log.info("vswitchd ready: node %s, %d pods, control socket %s (accel %s)",
                             topology.node.name, len(topology.pods), socket_path,
                             switch.accel_name)
                    sdnotify.notify(f"READY=1\nSTATUS=node {topology.node.name}, "
                                    f"{len(topology.pods)} pods")
                    task_status.started(context)
                    await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    sdnotify.notify("STOPPING=1")
                    for port in ports.values():
                        try:
                            port.close()
                        except OSError as exc:
                            log.warning("closing port %s: %s", port.spec.name, exc)
                    await kernel.teardown()
                    log.info("vswitchd stopped: node %s", topology.node.name)

"""An in-process runtime: memory ports, and a kernel and container supervisor that create nothing.

With these the whole daemon (start-up order, port tasks, timer, control socket, shutdown) runs inside
pytest-trio without root: a test injects frames into a pod's port and receives what the switch sent
to another. They are test doubles at the port boundary, the place the daemon already abstracts, not
mocks of pyroute2 or the TUN driver.

A memory port mirrors a TAP's contract: frames come in as whole buffers, writes never block, and a
full buffer drops the frame (counted here for injected frames; the core counts transmit drops).
"""
from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import trio

from vswitch.core.port_spec import VNET_HDR_LEN, PortSpec
from vswitch.model import Dataplane, Pod, Topology
from vswitch.runtime.port_io import Port, RuntimeErrors, process
from vswitch.runtime.switch_core import SwitchCore

DEFAULT_CAPACITY = 256


class MemoryPort:
    """Two bounded trio memory channels: frames into the switch, and frames the switch sent out."""

    def __init__(self, spec: PortSpec, burst: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self.spec = spec
        self.burst = burst
        self._in_send, self._in_receive = trio.open_memory_channel[bytes](capacity)
        self._out_send, self._out_receive = trio.open_memory_channel[bytes](capacity)
        self.injected_dropped = 0  # frames a test offered while the inbound buffer was full

    # The test's side of the port.

    def inject(self, frame: bytes) -> bool:
        """Offer a frame as if the pod had sent it; False (and counted) if the buffer is full."""
        try:
            self._in_send.send_nowait(frame)
        except (trio.WouldBlock, trio.BrokenResourceError):
            # Full, or the daemon has stopped and closed its side: the frame is lost either way.
            self.injected_dropped += 1
            return False
        return True

    async def receive(self) -> bytes:
        """The next frame the switch transmitted to this port."""
        return await self._out_receive.receive()

    def received_nowait(self) -> list[bytes]:
        """Everything transmitted to this port so far and not yet received."""
        frames = []
        while True:
            try:
                frames.append(self._out_receive.receive_nowait())
            except trio.WouldBlock:
                return frames

    # The daemon's side of the port.

    def write(self, data: bytes) -> bool:
        try:
            self._out_send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def run(self, switch: SwitchCore, ports: Mapping[int, Port], errors: RuntimeErrors, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            frames = [await self._in_receive.receive()]
            while len(frames) < self.burst:
                try:
                    frames.append(self._in_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            process(switch, ports, self.spec.id, frames, errors)

    def close(self) -> None:
        self._out_send.close()
        self._in_receive.close()


class MemoryPortFactory:
    """Makes a MemoryPort per port and remembers them by port name, for the test to use."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.ports: dict[str, MemoryPort] = {}

    def __call__(self, spec: PortSpec, handle: int, dataplane: Dataplane) -> MemoryPort:
        port = MemoryPort(spec, dataplane.burst, self.capacity)
        self.ports[spec.name] = port
        return port


class NullKernel:
    """A kernel that creates nothing; it records what it was asked to do, in order."""

    vnet_hdr_len = VNET_HDR_LEN  # memory ports frame like TAPs without UDP-tunnel GSO

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock: Any = None  # the node's lock it was handed (after a takeover), kept as is

    @asynccontextmanager
    async def open(self, topology: Topology, lock: Any = None) -> AsyncIterator["NullKernel"]:
        self.calls.append("open")
        self.lock = lock
        try:
            yield self
        finally:
            self.calls.append("close")

    async def remove_leftovers(self) -> list[str]:
        self.calls.append("remove_leftovers")
        return []

    async def create_pod(self, pod: Pod) -> int:
        self.calls.append(f"create_pod {pod.key}")
        return -1

    async def delete_pod(self, pod: Pod) -> None:
        self.calls.append(f"delete_pod {pod.key}")

    async def create_host_port(self) -> int:
        self.calls.append("create_host_port")
        return -1

    async def create_uplink(self) -> int:
        self.calls.append("create_uplink")
        return -1

    async def delete_host_port(self) -> None:
        self.calls.append("delete_host_port")

    async def teardown(self) -> None:
        self.calls.append("teardown")


class NullSupervisor:
    """Pretends to run each pod's containers until cancelled."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.forgotten: list[str] = []

    async def run(self, pod: Pod, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.running.add(pod.key)
        task_status.started()
        try:
            await trio.sleep(math.inf)
        finally:
            self.running.discard(pod.key)

    def forget(self, pod_name: str) -> None:
        self.forgotten.append(pod_name)

    def info(self, pod_name: str) -> list[dict]:
        if pod_name not in self.running:
            return []
        return [{"name": "null", "state": "running", "pid": None}]

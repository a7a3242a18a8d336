"""Port tasks: frames between memory and TAP ports, core failures, drops, end of file, answers."""
from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

from vswitch.core.transmit import Transmit
from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.runtime.port_io import RuntimeErrors, TapPort

from .support import POISON, Harness, RecordingSwitch, ask, mac_bytes, make_topology, udp_frame


async def test_frame_crosses_from_one_pod_to_the_other(tmp_path):
    harness = Harness(make_topology(tmp_path), switch_factory=RecordingSwitch)
    async with trio.open_nursery() as nursery:
        context = await harness.start(nursery)
        assert context.port_ids == {"host": 1, "a": 2, "b": 3}
        a, b = harness.topology.pods
        frame = udp_frame(a, b)
        assert harness.ports.ports["a"].inject(frame)
        with trio.fail_after(5):
            assert await harness.ports.ports["b"].receive() == frame
        await trio.testing.wait_all_tasks_blocked()
        assert harness.ports.ports["a"].received_nowait() == []
        assert harness.ports.ports["host"].received_nowait() == []
        nursery.cancel_scope.cancel()


async def test_real_core_forwards_between_pods(tmp_path):
    harness = Harness(make_topology(tmp_path))
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        frame = udp_frame(a, b)
        harness.ports.ports["a"].inject(frame)
        with trio.fail_after(5):
            received = await harness.ports.ports["b"].receive()
        assert received[:6] == mac_bytes(b.mac)
        assert received[30:34] == b.ip.packed
        status = await ask(harness.topology.control.socket, "stats")
        assert status["ok"], status
        nursery.cancel_scope.cancel()


async def test_core_exception_costs_one_batch_not_the_daemon(tmp_path, caplog):
    harness = Harness(make_topology(tmp_path), switch_factory=RecordingSwitch)
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        port_a = harness.ports.ports["a"]
        port_a.inject(POISON + b"x" * 20)
        await trio.testing.wait_all_tasks_blocked()
        port_a.inject(udp_frame(a, b))
        with trio.fail_after(5):
            await harness.ports.ports["b"].receive()
        status = await ask(harness.topology.control.socket, "status")
        assert status["result"]["runtime_errors"]["core"] == 1
        nursery.cancel_scope.cancel()
    assert "poisoned frame" in caplog.text


async def test_full_destination_and_unknown_port_are_counted_drops(tmp_path):
    harness = Harness(make_topology(tmp_path), switch_factory=RecordingSwitch, capacity=2)
    a, b = harness.topology.pods
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        for _ in range(3):
            harness.ports.ports["a"].inject(udp_frame(a, b))
            await trio.testing.wait_all_tasks_blocked()
        to_nowhere = b"\x00\x00\x00\x00\x00\x63" + udp_frame(a, b)[6:]
        harness.ports.ports["a"].inject(to_nowhere)
        await trio.testing.wait_all_tasks_blocked()
        assert harness.switch.tx_drops == [(3, "tx-busy"), (99, "port-gone")]
        assert len(harness.ports.ports["b"].received_nowait()) == 2
        nursery.cancel_scope.cancel()


class SocketPairPorts:
    """Runs the production TapPort on one end of a SOCK_SEQPACKET pair, which keeps frame
    boundaries and reports a full buffer with EAGAIN, as a TAP does; the test holds the other
    end."""

    def __init__(self) -> None:
        self.peers: dict[str, socket.socket] = {}
        self.fds: list[int] = []

    def __call__(self, spec, handle, dataplane):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setblocking(False)
        self.peers[spec.name] = theirs
        fd = ours.detach()
        self.fds.append(fd)
        return TapPort(spec, fd, dataplane.burst)

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()


async def test_tap_ports_forward_count_busy_writes_and_close_their_fds(tmp_path):
    harness = Harness(make_topology(tmp_path, host_port=False), switch_factory=RecordingSwitch)
    harness.ports = SocketPairPorts()
    a, b = harness.topology.pods
    frame = udp_frame(a, b, b"x" * 200)
    try:
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            pod_a, pod_b = harness.ports.peers["a"], harness.ports.peers["b"]
            pod_a.send(frame)
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(pod_b)
            assert pod_b.recv(65536) == frame
            # Pod b stops reading: once its buffer is full, writes to it are counted drops and
            # the daemon keeps going.
            for _ in range(200):
                pod_a.send(frame)
                await trio.testing.wait_all_tasks_blocked()
                if harness.switch.tx_drops:
                    break
            assert harness.switch.tx_drops and set(harness.switch.tx_drops) == {(2, "tx-busy")}
            nursery.cancel_scope.cancel()
        for fd in harness.ports.fds:
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        harness.ports.close()


async def test_tap_port_at_end_of_file_backs_off_instead_of_spinning(tmp_path, caplog,
                                                                     autojump_clock):
    harness = Harness(make_topology(tmp_path, host_port=False))
    harness.ports = SocketPairPorts()
    try:
        async with trio.open_nursery() as nursery:
            await harness.start(nursery)
            harness.ports.peers["a"].close()  # pod a's end is gone: its fd reads EOF forever
            await trio.sleep(0.3)  # on the mock clock: the backoffs pass without waiting
            status = await ask(harness.topology.control.socket, "status")
            # One report per backoff interval, not one per wake-up.
            assert 1 <= status["result"]["runtime_errors"]["read"] <= 3
            nursery.cancel_scope.cancel()
    finally:
        harness.ports.close()
    assert "yields no frames" in caplog.text


async def test_a_tap_port_takes_the_answer_of_the_port_it_just_wrote_to(tmp_path):
    """The kernel behind a TAP often answers inside our write; the writer reads that answer at
    once instead of waiting for the event loop to wake the other port's task."""
    topology = make_topology(tmp_path, host_port=False)
    a, b = topology.pods
    switch = RecordingSwitch(topology)
    ports, peers = {}, {}
    for port_id, pod in ((1, a), (2, b)):
        spec = PortSpec(port_id, pod.name, PortKind.POD, pod.mac, pod.ip, False)
        switch.add_port(spec)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.setblocking(False)
        ports[port_id] = TapPort(spec, ours.detach(), 64)
        peers[pod.name] = theirs
    try:
        answer = udp_frame(b, a, b"pong")
        peers["b"].send(answer)  # queued on b's "TAP" as the write to b returns
        ports[1]._drain_answers(switch, ports, [Transmit(2, b"ping")], RuntimeErrors())
        assert peers["a"].recv(65536) == answer  # forwarded without b's task ever running
        ports[1]._drain_answers(switch, ports, [Transmit(1, b"to itself")], RuntimeErrors())
        assert switch.rx == {1: 0, 2: 1}  # a port never drains itself
    finally:
        for port in ports.values():
            port.close()
        for peer in peers.values():
            peer.close()

"""The trio shell of the C datapath, without root: ports are socket pairs instead of TAPs.

The poll thread reads the switch's side of each pair as it reads a TAP (one frame per read); the
test plays the pods on the other sides. A flow's first frame must come back up to the pipeline
(an upcall) and out; later frames of it must be replayed by the thread alone.
"""
from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import trio

from vswitch.core.port_spec import PortKind, PortSpec
from vswitch.runtime.datapath_io import DatapathTapPort, run_upcalls
from vswitch.runtime.port_io import RuntimeErrors
from vswitch.wire import headers as h
from vswitch.wire.addresses import mac_bytes
from vswitch.wire.text import build_frame, parse_packet

from ..conftest import make_switch

A, B, TRUNK = 2, 3, 9
A_MAC, B_MAC = mac_bytes("0a:58:0a:f4:01:0a"), mac_bytes("0a:58:0a:f4:01:0b")


def _udp(src: str, dst: str, src_mac: bytes, dst_mac: bytes, sport: int) -> bytes:
    return h.ZERO_VNET_HDR + build_frame(parse_packet(f"udp {src}:{sport} > {dst}:9 len 4"),
                                         src_mac, dst_mac)


async def _receive(sock: socket.socket) -> bytes:
    with trio.fail_after(5):
        while True:
            try:
                return sock.recv(70000)
            except BlockingIOError:
                await trio.sleep(0.001)


@asynccontextmanager
async def running(switch):
    """Ports a and b as socket pairs for the poll thread: yields the pods' ends, the ports and
    the shell's error counts; removes the ports and closes every socket afterwards."""
    pairs = {port: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for port in (A, B)}
    pods = {}
    ports = {}
    for port, (ours, theirs) in pairs.items():
        theirs.setblocking(False)
        pods[port] = theirs
        ports[port] = DatapathTapPort(switch.ports[port], ours.detach(), 64)
    try:
        yield pods, ports, RuntimeErrors()
    finally:
        for port in ports.values():
            switch.remove_port(port.spec.id)
            port.close()
        for sock in pods.values():
            sock.close()


async def start(nursery, switch, ports, errors):
    """The upcall task, then each port's task (which hands its fd to the poll thread)."""
    await nursery.start(run_upcalls, switch, ports, errors, 64)
    for port in ports.values():
        await nursery.start(port.run, switch, ports, errors)


async def test_a_flows_first_frame_goes_up_and_the_rest_stay_in_c(topology):
    switch = make_switch(topology, "native")
    async with running(switch) as (pods, ports, errors):
        async with trio.open_nursery() as nursery:
            await start(nursery, switch, ports, errors)
            # b speaks first, so that a's frames to b are switched, not flooded.
            pods[B].send(_udp("10.244.1.11", "10.244.1.10", B_MAC, A_MAC, 7))
            assert (await _receive(pods[A]))[10:] == _udp("10.244.1.11", "10.244.1.10",
                                                          B_MAC, A_MAC, 7)[10:]
            first = _udp("10.244.1.10", "10.244.1.11", A_MAC, B_MAC, 5)
            pods[A].send(first)
            assert await _receive(pods[B]) == first
            upcalls = switch.statistics()["datapath"]["upcalls"]
            for _ in range(3):
                pods[A].send(first)
                assert await _receive(pods[B]) == first
            stats = switch.statistics()
            assert stats["flow_cache"]["hits"] == 3
            assert stats["datapath"]["upcalls"] == upcalls
            assert stats["ports"]["b"]["tx_packets"] == 4
            assert sum(stats["dispositions"].values()) == sum(
                p["rx_packets"] for p in stats["ports"].values())
            nursery.cancel_scope.cancel()
    assert errors.snapshot() == {"core": 0, "read": 0}


async def test_a_table_change_stops_the_thread_replaying_at_once(topology):
    """The generation reaches C after the task step that changed a table outside any batch (a
    control command, a timer): the next frame of a cached flow must go to the pipeline."""
    switch = make_switch(topology, "native")
    switch.add_port(PortSpec(TRUNK, "trunk", PortKind.MEMORY, "0a:58:00:00:00:09",
                             "10.244.1.99", True, port_security=False))
    async with running(switch) as (pods, ports, errors):
        async with trio.open_nursery() as nursery:
            await start(nursery, switch, ports, errors)
            pods[B].send(_udp("10.244.1.11", "10.244.1.10", B_MAC, A_MAC, 7))
            await _receive(pods[A])
            to_b = _udp("10.244.1.10", "10.244.1.11", A_MAC, B_MAC, 5)
            for _ in range(2):
                pods[A].send(to_b)
                await _receive(pods[B])
            assert switch.statistics()["flow_cache"]["hits"] == 1
            upcalls = switch.statistics()["datapath"]["upcalls"]
            # B's MAC moves to the trunk, learned outside any batch: the FDB entry (and its
            # slot) stays, only the tables' generation says the cached decision is wrong.
            switch.fdb.learn(0, B_MAC, TRUNK, trio.current_time())
            await trio.sleep(0)  # the step ends: the instrument tells C
            pods[A].send(to_b)
            await trio.sleep(0.2)
            try:
                stray = pods[B].recv(70000)
            except BlockingIOError:
                stray = None
            assert stray is None, "the thread replayed a decision the tables no longer hold"
            stats = switch.statistics()
            assert stats["flow_cache"]["hits"] == 1
            assert stats["datapath"]["upcalls"] == upcalls + 1
            assert stats["ports"]["trunk"]["tx_drops"] == {"port-gone": 2}  # flood, then this
            nursery.cancel_scope.cancel()

"""The whole daemon in-process: memory ports, a kernel and supervisor that create nothing, and a
way to talk to its control socket.

Most tests drive the real core (``vswitch.core.switch.Switch``). ``RecordingSwitch`` is the one
stand-in, for tests about the shell itself: it records what the shell asked of it (ports, programs,
transmit drops), raises on a poisoned frame, and lets a test schedule timer frames, none of which
the real core can be made to do on cue. It is typed against the ``SwitchCore`` protocol, the
runtime's declared needs from a core.
"""
from __future__ import annotations

import json
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Callable, Sequence

import trio

from vswitch import accel
from vswitch.core.transmit import Transmit
from vswitch.core.port_spec import PortSpec
from vswitch.core.switch import Switch
from vswitch.model import (Container, Control, Dataplane, HostPort, Node, Pod, Service, Topology,
                           mac_for_ip)
from vswitch.runtime.daemon import run_daemon
from vswitch.runtime.memory_port import MemoryPortFactory, NullKernel, NullSupervisor
from vswitch.runtime.switch_core import SwitchCore

POISON = b"\xde\xad"  # a frame the recording switch raises on


def make_topology(run_dir: Path, *, host_port: bool = True, offloads: bool = False,
                  containers: bool = False) -> Topology:
    def pod(name: str, last: int) -> Pod:
        ip = IPv4Address(f"10.244.1.{last}")
        return Pod(name=name, ip=ip, mac=mac_for_ip(ip), netns=f"vsw-t1-{name}", tap=f"vt-{name}",
                   containers=(Container(name="main", command=("sleep", "inf")),) if containers
                   else ())

    return Topology(
        source=str(run_dir / "t1.toml"),
        node=Node(name="t1", pod_cidr=IPv4Network("10.244.1.0/24"),
                  gateway=IPv4Address("10.244.1.1"), gateway_mac="0a:58:0a:f4:01:01"),
        pods=(pod("a", 10), pod("b", 11)),
        host_port=HostPort(enabled=host_port, name="vsw-host", mac="0a:58:0a:f4:01:fe",
                           address=IPv4Interface("10.244.1.254/24")),
        dataplane=Dataplane(offloads=offloads, burst=8, accel="pure"),
        control=Control(socket=str(run_dir / "ctl" / "t1.sock"), state_dir=str(run_dir)),
    )


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def udp_frame(src: Pod, dst: Pod, payload: bytes = b"hello") -> bytes:
    """Ethernet + IPv4 + UDP, by hand, checksums left zero (allowed for UDP over IPv4)."""
    udp = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     src.ip.packed, dst.ip.packed)
    return mac_bytes(dst.mac) + mac_bytes(src.mac) + b"\x08\x00" + ip + udp


def real_switch(topology: Topology) -> Switch:
    return Switch(topology, accel=accel.load("pure"))


class RecordingSwitch(SwitchCore):
    """Forwards each frame to the port that owns its destination MAC; floods broadcast; records
    what the shell asks of it. Answers the control socket's table questions with fixed rows."""

    accel_name = "pure"

    def __init__(self, topology: Topology) -> None:
        self.ports: dict[int, PortSpec] = {}  # named like Switch.ports
        self.programming = self  # it records programming itself
        self.rx: dict[int, int] = {}
        self.tx_drops: list[tuple[int, str]] = []
        self.timer_frames: list[Transmit] = []
        self.timer_calls = 0
        self.deadline = float("inf")
        self.programmed: list[tuple[tuple[Pod, ...], tuple[Service, ...]]] = []
        self.policies_programmed: list[tuple[Any, ...]] = []

    def add_port(self, spec: PortSpec) -> None:
        self.ports[spec.id] = spec
        self.rx[spec.id] = 0

    def remove_port(self, port_id: int) -> None:
        del self.ports[port_id]

    def process_batch(self, port_id: int, frames: Sequence[bytes], now: float) -> list[Transmit]:
        out = []
        for frame in frames:
            self.rx[port_id] += 1
            if frame.startswith(POISON):
                raise RuntimeError("poisoned frame")
            if frame.startswith(b"\xff" * 6):
                out += [Transmit(p, frame) for p in self.ports if p != port_id]
            elif frame.startswith(b"\x00\x00\x00\x00\x00\x63"):
                out.append(Transmit(99, frame))  # a port that does not exist
            else:
                out += [Transmit(p, frame) for p, s in self.ports.items()
                        if mac_bytes(s.mac) == frame[:6]]
        return out

    def handle_timer(self, now: float) -> list[Transmit]:
        self.timer_calls += 1
        frames, self.timer_frames = self.timer_frames, []
        self.deadline = float("inf")
        return frames

    def next_deadline(self) -> float:
        return self.deadline

    def note_tx_drop(self, port_id: int, reason: str) -> None:
        self.tx_drops.append((port_id, reason))

    def program(self, pods: Sequence[Pod], services: Sequence[Service], now: float) -> dict:
        self.programmed.append((tuple(pods), tuple(services)))
        return {"generation": len(self.programmed), "changed": True}

    def program_policies(self, policies: Sequence[Any], namespaces: Any, pods: Sequence[Any],
                         now: float) -> dict:
        self.policies_programmed.append(tuple(policies))
        return {"policies": len(policies)}

    def cut_denied(self, now: float) -> int:
        return 0  # it tracks no connections

    def statistics(self) -> dict:
        return {"ports": {s.name: {"rx_packets": self.rx[i]} for i, s in self.ports.items()},
                "stages": {}, "dispositions": {}}

    # What the control socket's read-only commands ask; fixed rows.

    def port_rows(self) -> list[dict]:
        return [{"id": i, "name": s.name, "kind": s.kind.value} for i, s in self.ports.items()]

    def fdb_rows(self, now: float) -> list[dict]:
        return []

    def route_rows(self) -> list[dict]:
        return [{"prefix": "10.244.1.0/24", "kind": "connected", "segment": "default",
                 "via": None, "origin": "node.pod_cidr"}]

    def neighbor_rows(self, now: float) -> list[dict]:
        return [{"segment": "default", "ip": "10.244.1.10", "mac": "0a:58:0a:f4:01:0a",
                 "state": "reachable", "age_s": 0.0, "queued": 0}]

    def service_rows(self) -> list[dict]:
        return [{"name": "web", "namespace": "default"}]


class Harness:
    """One daemon's injected parts: the test reaches its ports, kernel, supervisor and switch."""

    def __init__(self, topology: Topology, *,
                 switch_factory: Callable[[Topology], SwitchCore] = real_switch,
                 capacity: int = 64) -> None:
        self.topology = topology
        self.kernel = NullKernel()
        self.supervisor = NullSupervisor()
        self.ports = MemoryPortFactory(capacity)
        # Any: the tests read what the real core or the RecordingSwitch exposes beyond SwitchCore.
        self.switch: Any = None
        self._switch_factory = switch_factory

    def make_switch(self, topology: Topology) -> SwitchCore:
        self.switch = self._switch_factory(topology)
        return self.switch

    def kwargs(self, **extra) -> dict:
        return dict(kernel_factory=self.kernel.open, port_factory=self.ports,
                    switch_factory=self.make_switch, supervisor_factory=lambda t: self.supervisor,
                    netns_path=lambda name: f"/run/netns/{name}", **extra)

    async def start(self, nursery: trio.Nursery, **extra):
        return await nursery.start(lambda task_status: run_daemon(
            self.topology, task_status=task_status, **self.kwargs(**extra)))


def programmed(harness: Harness) -> list:
    """The pods and services the shell handed a RecordingSwitch, one entry per program."""
    return harness.switch.programmed


async def ask(path: str, cmd: str, args: dict | None = None) -> dict:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, "daemon closed the connection"
            data += chunk
    return json.loads(data)

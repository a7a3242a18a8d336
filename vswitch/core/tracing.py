"""Tracing: what an operator asks to see of the packet path, traces and captures.

Theory of operation
-------------------
* A dry run (``dry_run``) builds a packet from its text form (``vswitch.wire.text``) as the named
  port would send it, and runs the stage graph on a copy of the environment that commits nothing
  and counts into counters of its own: tables and counters stay as they were. Without a
  ``dst-mac`` the frame goes to the MAC a real sender would have resolved: the gateway's for an
  address off the segment, broadcast for the segment's broadcast address, the pod MAC derived
  from the address otherwise (a note in the trace says so).
* A live trace (``arm``) attaches a trace to the next N packets a port receives. They skip the
  flow cache, so the trace shows the stages deciding; the switch hands each finished trace to
  ``keep``, and up to ``PENDING_TRACE_LIMIT`` per port wait for ``take``.
* A capture (``vswitch.core.capture``) records frames a port receives (the switch records them)
  and sends (the egress records them).
* While nothing is armed, the packet path pays one dict lookup per batch (``armed``) and one
  truthiness test of ``captures.active`` per frame.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from vswitch.core.capture import Captures
from vswitch.core.counters import StageCounters
from vswitch.core.port_spec import PortSpec
from vswitch.core.trace import Trace
from vswitch.core.actions import Action, Drop, Forward, Hold, Reply
from vswitch.model import mac_for_ip
from vswitch.pipeline import graph
from vswitch.pipeline.context import Env, Packet
from vswitch.wire.addresses import BROADCAST_MAC, mac_bytes, mac_text
from vswitch.wire.text import build_frame, parse_packet

PENDING_TRACE_LIMIT = 1000


class Tracer:
    def __init__(self, env: Env, port_by_name: Callable[[str], PortSpec]):
        self._env = env
        self._port_by_name = port_by_name  # raises ValueError naming the known ports
        self.armed: dict[int, int] = {}  # port id -> live packets still to trace
        self._pending: dict[int, list[dict]] = {}  # port id -> finished live traces
        self.captures = Captures()

    # -- dry runs ---------------------------------------------------------------------------

    def dry_run(self, port_name: str, packet: str, now: float) -> dict:
        """A dry run of the pipeline on a packet described in text, as if ``port_name`` sent it."""
        port = self._port_by_name(port_name)
        spec = parse_packet(packet)
        frame = build_frame(spec, port.mac_bytes, self._guess_dst_mac(port, spec.dst),
                            self._env.accel)
        data = bytes(port.l2_offset) + frame
        trace = Trace(port=port.name, summary=packet, dry_run=True)
        env = self._env.dry_run_copy(StageCounters(graph.STAGE_COUNTERS))
        env.now = now
        pkt = Packet(port, data, port.l2_offset, trace)
        if spec.dst_mac is None and spec.kind != "arp":
            trace.note("trace", f"destination MAC {mac_text(frame[:6])} chosen for "
                                f"{spec.dst} (set it with dst-mac)")
        actions = graph.run(pkt, env)
        trace.actions.extend(self.describe_actions(actions))
        return trace.as_dict()

    def _guess_dst_mac(self, port: PortSpec, addr: IPv4Address) -> bytes:
        """The MAC a real sender on the port's segment would have resolved for ``addr``."""
        segment = self._env.segments[port.segment]
        if addr not in segment.cidr or addr.packed == segment.gateway_ip:
            return segment.gateway_mac
        if addr == segment.cidr.broadcast_address:
            return BROADCAST_MAC
        return mac_bytes(mac_for_ip(addr))

    def describe_actions(self, actions: Sequence[Action]) -> list[str]:
        """The final actions of a trace, in words."""
        words = []
        port_name = self._env.port_name
        for action in actions:
            if isinstance(action, Forward):
                words.append("output " + ", ".join(port_name(p) for p in action.ports))
            elif isinstance(action, Reply):
                words.append(f"reply out of {port_name(action.port)}")
            elif isinstance(action, Drop):
                words.append(f"drop ({action.stage}: {action.reason})")
            elif isinstance(action, Hold):
                words.append("hold until the next hop answers ARP")
        if not actions:
            words.append("consumed by the switch")
        return words

    # -- live traces ------------------------------------------------------------------------

    def arm(self, port_name: str, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        port = self._port_by_name(port_name)
        self.armed[port.id] = count
        self._pending[port.id] = []

    def take(self, port_name: str) -> list[dict]:
        port = self._port_by_name(port_name)
        taken = self._pending.get(port.id, [])
        self._pending[port.id] = []
        return taken

    def disarm(self, port_name: str) -> None:
        port = self._port_by_name(port_name)
        self.armed.pop(port.id, None)
        self._pending.pop(port.id, None)

    def start(self, port: PortSpec, size: int) -> Trace:
        """The trace of the next packet ``port`` received (an armed port's), one fewer to go."""
        remaining = self.armed[port.id] - 1
        if remaining:
            self.armed[port.id] = remaining
        else:
            del self.armed[port.id]
        return Trace(port=port.name, summary=f"live packet, {size} bytes")

    def keep(self, port_id: int, trace: Trace) -> None:
        kept = self._pending.setdefault(port_id, [])
        if len(kept) < PENDING_TRACE_LIMIT:
            kept.append(trace.as_dict())

    # -- captures ---------------------------------------------------------------------------

    def arm_capture(self, port_name: str, count: int, direction: str = "both",
                    snaplen: int = 65535) -> None:
        self.captures.arm(self._port_by_name(port_name).id, count, direction, snaplen)

    def take_capture(self, port_name: str) -> list[dict]:
        return self.captures.take(self._port_by_name(port_name).id)

    def disarm_capture(self, port_name: str) -> None:
        self.captures.disarm(self._port_by_name(port_name).id)

    def forget_port(self, port_id: int) -> None:
        """A removed port's live trace and capture end (taken traces are kept until taken)."""
        self.armed.pop(port_id, None)
        self.captures.disarm(port_id)

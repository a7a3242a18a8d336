"""Egress: the frames a batch or a timer emits, as ``Transmit`` values, counted and captured.

Theory of operation
-------------------
* A forwarded frame leaves as it was read, virtio-net header included, when the target port has
  the same framing as the port whose framing the frame follows (the ingress port, or the one a
  stage names in ``Forward.framing``). Between ports that differ, the header is added (all zero),
  removed, or resized (10 and 24 bytes share their first 10); a frame whose header asks for
  segmentation or checksum completion cannot be given to a port without offloads, and is counted
  as the target's ``offload-unsupported`` tx drop, as is a VXLAN super-frame to a port whose
  header cannot describe it.
* A frame the switch made itself (ARP, ICMP) gets an all-zero virtio-net header on a port that
  has one.
* Every frame is counted as sent on its port when it is emitted (bytes without the virtio-net
  header); the runtime takes the count back with ``Switch.note_tx_drop`` if it cannot write it.
* A capture armed on the target port records the frame at the time of the batch or timer being
  handled, which the switch keeps in the environment (``env.now``).
* A target port that is gone (removed while a packet waited for ARP) gets nothing.
"""
from __future__ import annotations

from vswitch.core.transmit import Transmit
from vswitch.core.capture import Captures
from vswitch.core.counters import PortCounters
from vswitch.core.port_spec import PortSpec
from vswitch.core.actions import Forward
from vswitch.pipeline.context import Env
from vswitch.wire import headers as h, views
from vswitch.wire.tunnel_offload import VNET_GSO_UDP_TUNNEL


class Egress:
    def __init__(self, env: Env, port_counters: dict[int, PortCounters], captures: Captures):
        self._env = env
        self._ports = env.ports
        self._port_counters = port_counters
        self._captures = captures

    def forward(self, out: list[Transmit], in_port: PortSpec, action: Forward,
                received: bytes) -> None:
        """Carry out a ``Forward`` of a frame received on ``in_port``."""
        data = received if action.data is None else action.data
        framing = in_port if action.framing is None else action.framing
        for target in action.ports:
            self.send(out, framing, target, data)

    def send(self, out: list[Transmit], in_port: PortSpec, target: int, data: bytes) -> None:
        """Send a buffer framed like ``in_port``'s, converting the framing only if it differs."""
        spec = self._ports.get(target)
        if spec is None:
            return
        if spec.l2_offset != in_port.l2_offset:
            converted = convert_framing(data, in_port, spec)
            if converted is None:
                self._port_counters[target].tx_drops["offload-unsupported"] += 1
                return
            data = converted
        counters = self._port_counters[target]
        counters.tx_packets += 1
        counters.tx_bytes += len(data) - spec.l2_offset
        if self._captures.active:
            self._captures.record(target, self._env.now, data, spec.l2_offset, "tx")
        out.append(Transmit(target, data))

    def send_generated(self, out: list[Transmit], target: int, frame: bytes) -> None:
        """Send an Ethernet frame the switch made (no virtio-net header of its own)."""
        spec = self._ports.get(target)
        if spec is None:
            return
        data = bytes(spec.l2_offset) + frame
        counters = self._port_counters[target]
        counters.tx_packets += 1
        counters.tx_bytes += len(frame)
        if self._captures.active:
            self._captures.record(target, self._env.now, data, spec.l2_offset, "tx")
        out.append(Transmit(target, data))


def convert_framing(data: bytes, src: PortSpec, dst: PortSpec) -> bytes | None:
    """``data``, framed like ``src``, in ``dst``'s framing; None when ``dst`` cannot take it."""
    if not src.vnet_hdr:
        return bytes(dst.l2_offset) + data
    vnet = views.VirtioNetHeader(data)
    if dst.vnet_hdr:
        # Headers of different sizes: the first 10 bytes are the same legacy header in both. A
        # frame whose GSO type needs the tunnel fields only crosses decapsulated.
        if vnet.gso_type & VNET_GSO_UDP_TUNNEL:
            return None
        return b"".join((data[: h.VNET_HDR_LEN], bytes(dst.l2_offset - h.VNET_HDR_LEN),
                         data[src.l2_offset:]))
    if vnet.gso_type != h.VNET_GSO_NONE or vnet.flags & h.VNET_F_NEEDS_CSUM:
        # Segmenting or completing checksums in software is not implemented: a port without
        # offloads cannot take this frame.
        return None
    return data[src.l2_offset:]

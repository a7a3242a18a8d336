"""What the trio shell needs from the switch core, declared where the shell uses it.

The daemon and the port tasks call the core through these methods only, so the production
``vswitch.core.switch.Switch`` and a test's stand-in are interchangeable at this boundary, and a
type checker tells when either drifts from it. The control socket asks the core more questions
(tables, traces, captures); those are the control commands' own business.

Time: every ``now`` is read from trio's clock (``trio.current_time()``) by the shell, so the
core's deadlines are on that clock too and tests can run the daemon under a mock clock.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Protocol, Sequence

from vswitch.core.transmit import Transmit
from vswitch.core.port_spec import PortSpec
from vswitch.model import NetworkPolicy, Pod, RemotePod, Service
from vswitch.tables.overlay import NodeChange, RemoteNode


class TableProgrammer(Protocol):
    """The part of the core that programs its tables from the desired state."""

    def program(self, pods: Sequence[Pod | RemotePod], services: Sequence[Service],
                now: float) -> dict:
        """Make the service table serve ``services`` backed by ``pods`` (the node's own and
        other nodes' ready pods); a JSON-able summary."""

    def program_policies(self, policies: Sequence[NetworkPolicy],
                         namespaces: Mapping[str, Mapping[str, str]],
                         pods: Sequence[Pod | RemotePod], now: float) -> dict:
        """Compile ``policies`` for ``pods`` and put them in force: new connections are judged
        by them, tracked ones they no longer allow are cut; a JSON-able summary."""

    def cut_denied(self, now: float) -> int:
        """Cut the tracked connections the policies in force deny; how many."""


class OverlayNodes(Protocol):
    """The other nodes the overlay routes to, as the cluster membership sets them."""

    refused: Mapping[str, str]  # node name -> why it is not routed

    def set_nodes(self, nodes: Iterable[RemoteNode]) -> NodeChange:
        """Make the remote nodes exactly ``nodes``; what was added, changed, removed, refused."""

    def nodes(self) -> list[RemoteNode]:
        """The nodes routed now, by name."""


class SwitchCore(Protocol):
    """The core as the runtime drives it: ports, batches, timers, programming, counters."""

    accel_name: str
    programming: TableProgrammer
    overlay: OverlayNodes  # read only when the topology has an overlay

    def add_port(self, spec: PortSpec) -> None:
        """Register a port; raises (and changes nothing) if its id, name or segment is bad."""

    def remove_port(self, port_id: int) -> None:
        """Forget a port and everything learned on it."""

    def process_batch(self, port_id: int, frames: Sequence[bytes], now: float, *,
                      upcalled: bool = False) -> list[Transmit]:
        """Run frames received on ``port_id`` through the pipeline; what to send where.
        ``upcalled``: the C datapath's cache has declined them already."""

    def handle_timer(self, now: float) -> list[Transmit]:
        """Expire what is due at ``now``; frames the timers generate (ARP retries and the like)."""

    def next_deadline(self) -> float:
        """When ``handle_timer`` next has work, on the clock the shell hands in as ``now``."""

    def note_tx_drop(self, port_id: int, reason: str) -> None:
        """Count a frame the shell could not write to ``port_id``."""

    def statistics(self) -> dict:
        """Counters per port and stage, for ``vswitchctl stats`` and the metrics endpoint."""

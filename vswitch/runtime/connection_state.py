"""The node's connection state on disk: written while the daemon runs and at shutdown, read back
at start, so that a restart does not break the connections it translates.

Theory of operation
-------------------
* One file per node in the state directory (``[control] state_dir``, a tmpfs under ``/run``):
  ``<node>.connections``, in the format of ``vswitch.tables.conntrack_snapshot``.
* Writing costs the packet path a copy: ``capture`` runs in the trio thread (a memcpy of the
  conntrack arrays up to their high-water slot, the label sets, the affinity entries); encoding
  and writing run in a worker thread. The file is written under a temporary name and renamed
  into place, so a reader (the next start) sees a whole old file or a whole new one, never half.
* ``run`` writes every ``interval`` seconds (2 by default); ``save_final`` writes once more at a
  shutdown that keeps the pods (SIGTERM), after the port tasks have stopped and before the ports
  close, marked *final*: it holds every connection. A shutdown that removes the pods (SIGINT)
  ``discard``s the file: their connections are gone with them. A SIGKILL leaves the last
  periodic file, which may miss the connections of its last seconds; those are picked up
  mid-stream (see ``ConntrackTable.pick_up``).
* ``restore`` runs at start, once the tables are programmed with the desired state and before
  any port is read. A file that cannot be used (damaged, truncated, another version) is logged
  and set aside as ``<node>.connections.bad`` for a look; the node starts without it. A final
  snapshot is the whole truth; after anything else (a periodic one, or a damaged file) the table
  is marked incomplete for ``pickup_window`` seconds (``ConntrackTable.incomplete_until``).
  The restored connections are then judged by the network policies in force, which a changed
  file may have changed, and those they deny are cut (``TableProgramming.cut_denied``).
* Only a node that restored (or found nothing to restore) saves at shutdown: a start that failed
  before then must not replace the previous run's file with an empty table.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Callable

import trio

from vswitch.tables import conntrack_snapshot as snapshots
from vswitch.tables.conntrack_snapshot import RestoreResult, SnapshotError

DEFAULT_INTERVAL = 2.0
DEFAULT_PICKUP_WINDOW = 5.0


def connections_path(state_dir: str, node: str) -> str:
    return os.path.join(state_dir, f"{node}.connections")


def remove_saved_connections(state_dir: str, node: str) -> None:
    """Remove the node's saved connections, if any: its pods are gone, and their connections
    with them (a shutdown that removes the pods, ``vswitchctl clean``)."""
    path = connections_path(state_dir, node)
    for name in (path, path + ".bad"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class ConnectionState:
    """The snapshots of one node's switch (which has ``conntrack``, ``services`` and ``nat``)."""

    def __init__(self, state_dir: str, node: str, switch: Any, log: logging.Logger, *,
                 interval: float = DEFAULT_INTERVAL,
                 pickup_window: float = DEFAULT_PICKUP_WINDOW,
                 wall_clock: Callable[[], float] = time.time):
        self.path = connections_path(state_dir, node)
        self.node = node
        self.interval = interval
        self.pickup_window = pickup_window
        self._switch = switch
        self._log = log
        self._wall_clock = wall_clock
        self._ready_to_save = False
        self.written = 0  # snapshots written by this run

    @classmethod
    def of(cls, topology: Any, switch: Any, log: logging.Logger) -> ConnectionState | None:
        """The state of ``switch`` in the topology's state directory; None for a core without
        connection tables (a test's stand-in)."""
        if not all(hasattr(switch, name) for name in ("conntrack", "services", "nat")):
            return None
        return cls(topology.control.state_dir, topology.node.name, switch, log)

    # -- start -------------------------------------------------------------------------------

    async def restore(self) -> RestoreResult | None:
        """Restore the saved connections into the switch's tables; None when there was nothing
        usable (no file, or a damaged one, which is logged and set aside)."""
        self._ready_to_save = True
        switch = self._switch
        try:
            data = await trio.to_thread.run_sync(_read, self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._log.warning("%s: cannot read the saved connections: %s", self.path, exc)
            self._mark_incomplete()
            return None
        try:
            snapshot = snapshots.decode(data, self.node)
        except SnapshotError as exc:
            self._log.warning("%s: saved connections not used: %s; starting without them",
                              self.path, exc)
            self._set_aside()
            self._mark_incomplete()
            return None
        nat = switch.nat
        addresses = [a for a in (nat.node_address, nat.hairpin_address,
                                 nat.overlay_snat_address) if a is not None]
        result = snapshots.restore(snapshot, switch.conntrack, switch.services, addresses,
                                   trio.current_time(), self._wall_clock())
        # The previous run judged these connections by its own policies; this one may have others.
        cut = switch.programming.cut_denied(trio.current_time())
        if not snapshot.final:
            self._mark_incomplete()
        self._log.info(
            "restored %d connections and %d affinity entries saved %.1f s ago (%s snapshot); "
            "%d had expired, %d dropped, %d affinity entries dropped",
            result.restored, result.affinity_restored,
            max(0.0, self._wall_clock() - snapshot.time),
            "final" if snapshot.final else "periodic", result.expired, result.dropped,
            result.affinity_dropped)
        for why, count in sorted(result.reasons.items()):
            self._log.info("not restored: %d connections: %s", count, why)
        if cut:
            self._log.info("cut: %d restored connections the network policies in force deny", cut)
        return result

    def _mark_incomplete(self) -> None:
        self._switch.conntrack.incomplete_until = trio.current_time() + self.pickup_window

    def _set_aside(self) -> None:
        try:
            os.replace(self.path, self.path + ".bad")
        except OSError as exc:
            self._log.warning("%s: cannot set the damaged file aside: %s", self.path, exc)

    # -- while running and at shutdown -----------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write a snapshot every ``interval`` seconds until cancelled. A failed write is logged
        and tried again at the next interval; forwarding never waits for it."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self._save(final=False)

    async def save_final(self) -> None:
        """The shutdown snapshot: call with the port tasks stopped, before the ports close."""
        if self._ready_to_save:
            await self._save(final=True)

    def discard(self) -> None:
        """Remove the file (and a damaged one set aside): the node's pods are gone, and their
        connections with them."""
        remove_saved_connections(os.path.dirname(self.path), self.node)

    async def _save(self, *, final: bool) -> None:
        switch = self._switch
        captured = snapshots.capture(switch.conntrack, switch.services, trio.current_time())
        try:
            await trio.to_thread.run_sync(_write, self.path, captured, self.node,
                                          self._wall_clock(), final)
        except OSError as exc:
            self._log.warning("%s: cannot save the connections: %s", self.path, exc)
            return
        self.written += 1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, captured: snapshots.Capture, node: str, wall_time: float,
           final: bool) -> None:
    """Encode and write atomically: a temporary file in the same directory, then a rename."""
    data = snapshots.encode(captured, node, wall_time, final)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise

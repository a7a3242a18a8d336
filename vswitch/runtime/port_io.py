"""The I/O side of a port: a task that drains frames into the core and writes what the core returns.

Theory of operation
-------------------
Every port (a pod's TAP, the host TAP, or an in-memory test port) runs one task. It waits until its
source has frames, drains up to ``burst`` of them without blocking, hands the batch to
``Switch.process_batch`` and writes each resulting ``Transmit`` straight to the target port with a
non-blocking write. There are no queues between ports: a write that would block is a drop, counted
by the core through ``Switch.note_tx_drop``. That keeps memory bounded under overload and keeps all
packet state in the one trio thread, so the core needs no locks.

Rules:

* A port's ``write`` never blocks and never raises for a full or vanished destination; it returns
  False and the caller counts the drop.
* An exception from the core for one batch is logged (rate-limited, with its traceback) and counted,
  and the port keeps running: one bad frame must not take every pod's network down.
* A port task ends only by cancellation. File descriptors are closed by the daemon after every task
  has ended, so no task ever waits on a closed fd.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol

import trio

from vswitch.core.transmit import Transmit
from vswitch.core.port_spec import PortSpec
from vswitch.model import Dataplane
from vswitch.runtime.switch_core import SwitchCore

log = logging.getLogger(__name__)

# After a read error the port waits this long before trying again, so that a persistent error (the
# device vanished under us) costs a log line per interval instead of a busy loop.
READ_ERROR_BACKOFF = 0.2
# Consecutive wake-ups without a frame after which a port backs off as it does after an error.
MAX_EMPTY_WAKEUPS = 100


class Port(Protocol):
    """What the daemon needs from a port, whatever carries its frames."""

    spec: PortSpec

    def write(self, data: bytes) -> bool:
        """Queue or write one frame without blocking; False if it had to be dropped."""

    async def run(self, switch: SwitchCore, ports: Mapping[int, "Port"], errors: "RuntimeErrors", *,
                  task_status: Any) -> None:
        """Feed frames from this port into ``switch`` until cancelled."""

    def close(self) -> None:
        """Release the port's resources; called once, after its task has ended."""


class PortFactory(Protocol):
    def __call__(self, spec: PortSpec, handle: int, dataplane: Dataplane) -> Port:
        """Wrap the kernel's handle for a port (a TAP fd) in a Port."""


class RateLimitedLog:
    """Counts an event and logs it at most once per ``interval`` seconds, with what was suppressed.

    A pod that sends a frame which trips a bug can do so thousands of times a second; the log must
    show the first traceback and the rate, not fill the journal.
    """

    def __init__(self, logger: logging.Logger, what: str, interval: float = 10.0) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._last = -float("inf")
        self._suppressed = 0
        self.count = 0

    def __call__(self, message: str, *args: object, exc_info: bool = False) -> None:
        self.count += 1
        # The system's clock, not trio's: this paces what reaches the journal in real time, and
        # may run outside a trio run.
        now = time.monotonic()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} similar {self._what} suppressed)" if self._suppressed else ""
        self._logger.error(message + suffix, *args, exc_info=exc_info)
        self._last = now
        self._suppressed = 0


@dataclass
class RuntimeErrors:
    """Failures of the shell itself (not packet drops, which the core counts), for ``status``."""

    core: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, "core errors"))
    read: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, "read errors"))

    def snapshot(self) -> dict[str, int]:
        return {"core": self.core.count, "read": self.read.count}


def transmit(switch: SwitchCore, ports: Mapping[int, Port], txs: Iterable[Transmit]) -> None:
    """Write every Transmit to its port; a frame that cannot be written is a counted drop."""
    for tx in txs:
        port = ports.get(tx.port)
        if port is None:
            switch.note_tx_drop(tx.port, "port-gone")
        elif not port.write(tx.data):
            switch.note_tx_drop(tx.port, "tx-busy")


def process(switch: SwitchCore, ports: Mapping[int, Port], port_id: int, frames: list[bytes],
            errors: RuntimeErrors, upcalled: bool = False) -> list[Transmit]:
    """One batch through the core and out to the ports, guarded so that a core bug costs a batch.
    ``upcalled``: the frames come from the C datapath, which has tried its cache on them.
    Returns what was transmitted."""
    try:
        txs = (switch.process_batch(port_id, frames, trio.current_time(), upcalled=True)
               if upcalled else switch.process_batch(port_id, frames, trio.current_time()))
    except Exception:
        errors.core("core failed on a batch of %d frames from port %d; batch dropped",
                    len(frames), port_id, exc_info=True)
        return []
    transmit(switch, ports, txs)
    return txs


class TapPort:
    """A TAP device's file descriptor, non-blocking, one frame per read and per write."""

    def __init__(self, spec: PortSpec, fd: int, burst: int) -> None:
        # Imported here, not at module level, so that memory-only runs (tests without root) never
        # load the TAP code; bound once so the per-frame calls skip the module lookups.
        from vswitch.runtime.tap import read_burst, write_frame

        self._read_burst = read_burst
        self._write_frame = write_frame
        self.spec = spec
        self.fd = fd
        self.burst = burst
        self._write_errors = RateLimitedLog(log, "write errors")
        self._closed = False

    def write(self, data: bytes) -> bool:
        try:
            return self._write_frame(self.fd, data)
        except OSError as exc:
            # EIO when the device is down, EINVAL for a frame the kernel rejects: the frame is lost
            # either way, and the core counts it like any other transmit drop.
            self._write_errors("write to %s failed: %s", self.spec.name, exc)
            return False

    async def run(self, switch: SwitchCore, ports: Mapping[int, Port], errors: RuntimeErrors, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        empty_wakeups = 0
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            try:
                frames = self._read_burst(self.fd, self.burst)
            except OSError as exc:
                errors.read("read from %s failed: %s", self.spec.name, exc)
                await trio.sleep(READ_ERROR_BACKOFF)
                continue
            if frames:
                empty_wakeups = 0
                sent = process(switch, ports, self.spec.id, frames, errors)
                self._drain_answers(switch, ports, sent, errors)
                continue
            # A readable fd that yields nothing is a spurious wake-up once in a while, but an fd
            # at end-of-file stays readable forever and would spin this loop at full CPU.
            empty_wakeups += 1
            if empty_wakeups >= MAX_EMPTY_WAKEUPS:
                errors.read("%s is readable but yields no frames (device gone?)", self.spec.name)
                await trio.sleep(READ_ERROR_BACKOFF)

    def _drain_answers(self, switch: SwitchCore, ports: Mapping[int, Port], sent: list[Transmit],
                       errors: RuntimeErrors) -> None:
        """Read, right away, the ports this batch was written to.

        Writing to a TAP runs the receiving pod's stack inside the write: a ping's reply or a
        TCP ACK is often queued on that TAP before ``write`` returns. Taking it now saves a trip
        through the event loop (epoll, a task switch) per hop, which is most of a userspace hop's
        latency. One round only, and only ports other than this one, so no port is starved.
        """
        done = {self.spec.id}
        for tx in sent:
            if tx.port in done:
                continue
            done.add(tx.port)
            port = ports.get(tx.port)
            if not isinstance(port, TapPort) or port._closed:
                continue
            try:
                frames = port._read_burst(port.fd, port.burst)
            except OSError:
                continue  # that port's own task meets the error and reports it
            if frames:
                process(switch, ports, port.spec.id, frames, errors)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Wake (with ClosedResourceError) anything still parked on the fd before it is reused.
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)


def tap_port_factory(spec: PortSpec, handle: int, dataplane: Dataplane) -> Port:
    """The production factory: every kernel handle is a TAP fd."""
    return TapPort(spec, handle, dataplane.burst)

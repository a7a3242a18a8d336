"""The shell around the C datapath: TAP ports its poll thread reads, and the task that takes upcalls.

Theory of operation
-------------------
With the native accel, the switch's C datapath (``vswitch.accel.datapath``) owns the reading of
every TAP: its poll thread reads bursts, replays cached decisions and writes them out without the
GIL. What it cannot replay (a flow's first packets, ARP, SYN/FIN/RST, anything traced or captured)
it queues as an *upcall* and makes an eventfd readable. This module is the Python side of that:

* ``DatapathTapPort`` is a TAP port whose ``run`` hands the fd to the poll thread instead of
  reading it; Python still writes to it what the pipeline emits (a TAP takes concurrent writes
  frame by frame). ``Switch.remove_port`` takes the fd back from the thread before the daemon
  closes it.
* ``run_upcalls`` starts the poll thread, waits on the eventfd, and runs each waiting frame through
  ``Switch.process_batch(..., upcalled=True)``, which installs what the pipeline decided into C;
  then writes the batch's output. Cancelling it stops the thread before any fd is closed.
* The thread replays decisions against the tables' generation, which only Python changes. A trio
  instrument pushes it to C after every task step (a timer, a control command, a membership
  change, an upcall batch), so that a cached decision the tables no longer support is not
  replayed beyond the step that changed them.
* Time: C reads CLOCK_MONOTONIC; trio's clock is the same clock plus an offset, which is handed to
  C once, so both sides compare deadlines on one clock.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import trio

from vswitch.core.port_spec import PortSpec
from vswitch.model import Dataplane
from vswitch.runtime.port_io import Port, RuntimeErrors, TapPort, process

log = logging.getLogger(__name__)

# How long the upcall task looks for the answer to what it just wrote before it sleeps.
ANSWER_WAIT = 100e-6


class DatapathTapPort(TapPort):
    """A TAP whose frames the C datapath's poll thread reads."""

    async def run(self, switch: Any, ports: Mapping[int, Port], errors: RuntimeErrors, *,
                  task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        switch.attach_port_fd(self.spec.id, self.fd)
        task_status.started()
        await trio.sleep_forever()


def datapath_port_factory(spec: PortSpec, handle: int, dataplane: Dataplane) -> Port:
    return DatapathTapPort(spec, handle, dataplane.burst)


class _GenerationSync(trio.abc.Instrument):
    """After every trio task step, the C datapath learns what the step changed."""

    def __init__(self, switch: Any, errors: RuntimeErrors):
        self._sync = switch.sync_datapath
        self._errors = errors

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        # trio drops an instrument that raises, which would leave C replaying decisions the
        # tables no longer support: a failure is logged and counted, and the next step retries.
        try:
            self._sync()
        except Exception:
            self._errors.core("telling the C datapath about a table change failed",
                              exc_info=True)


def _answers(datapath: Any, burst: int) -> list[tuple[int, bytes]]:
    """Upcalls that arrive within ``ANSWER_WAIT`` seconds of a batch, taken without sleeping.

    Python writes what the pipeline decided straight into the target pod's TAP, and the pod's
    kernel answers inside that write: a SYN-ACK, an ACK, a FIN is queued on the pod's TAP before
    the write returns, and the poll thread (on another core) reads it and upcalls it a few
    microseconds later. Waiting for it through the event loop costs a wake-up (epoll, the run
    loop, the task switch: ~150 µs on a small VM) per packet of a connection's handshake and
    teardown; looking for it for a short while costs at most ``ANSWER_WAIT`` of CPU per batch."""
    deadline = time.perf_counter() + ANSWER_WAIT
    while True:
        upcalls = datapath.take_upcalls(burst)
        if upcalls or time.perf_counter() >= deadline:
            return upcalls


async def run_upcalls(switch: Any, ports: Mapping[int, Port], errors: RuntimeErrors,
                      burst: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    datapath = switch.datapath
    datapath.set_params(clock_offset=trio.current_time() - time.perf_counter())
    instrument = _GenerationSync(switch, errors)
    switch.sync_datapath()
    datapath.start()
    trio.lowlevel.add_instrument(instrument)
    try:
        task_status.started()
        fd = datapath.upcall_fd
        upcalls: list[tuple[int, bytes]] = []
        while True:
            if not upcalls:
                await trio.lowlevel.wait_readable(fd)
                upcalls = datapath.take_upcalls(burst)
            start = 0
            # Consecutive frames of one port form one batch, in arrival order.
            for i in range(1, len(upcalls) + 1):
                if i == len(upcalls) or upcalls[i][0] != upcalls[start][0]:
                    port_id = upcalls[start][0]
                    process(switch, ports, port_id, [frame for _, frame in upcalls[start:i]],
                            errors, upcalled=True)
                    start = i
            upcalls = _answers(datapath, burst)
            if upcalls:
                # Another frame's turn before more of these: the answers go through the run loop
                # like any other wake-up would, only without waiting for it.
                await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(instrument)
        datapath.stop()

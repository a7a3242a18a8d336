"""systemd's watchdog: ping ``WATCHDOG=1`` only while the packet path makes progress.

Theory of operation
-------------------
With ``WatchdogSec=`` in the unit, systemd restarts the daemon when no ``WATCHDOG=1`` has arrived
for that long (``vswitch.runtime.sdnotify.watchdog_timeout``). The pings are sent by a task on
the daemon's trio event loop, the loop that runs the packet path: a task per port (a burst of
frames read, run through the core, written out), the C datapath's upcall task and the timer task,
beside the control socket's and the cluster's tasks. Trio runs them cooperatively. A *step* of a
task lasts from the moment the loop resumes it until it awaits again, and while a step runs,
nothing else on the loop does: a port's step is one iteration of its loop, the timer's one run of
the core's timers. A task that waits (for frames, for its eventfd, for its next deadline) is
parked and holds nothing.

Progress, precisely: the packet path has made progress since the previous ping when

1. the loop got to this ping at all, that is, the watchdog task was resumed when its sleep ended;
   and
2. no step since the previous ping held the loop for longer than ``max_step`` (the ping interval,
   half the watchdog timeout): every task, so every packet task, got its turn within that time.

An idle node keeps pinging (parked tasks hold nothing, the steps are short), and so does a busy
one (its steps are bursts of at most ``burst`` frames). A loop wedged in a step that does not end
(a packet task in a busy loop, a C call or system call that hangs, a deadlock on a lock or on the
GIL; the C datapath's poll thread shares a mutex with every Python call into it) never reaches
rule 1, so the pings stop and systemd restarts the daemon once the timeout has passed. Rule 2
makes a stall that has ended count as well: after a step longer than half the timeout, one ping
is skipped, so that the next one comes after the timeout and systemd restarts the daemon. Without
it, whether a loop that stalled for between half and all of the timeout is restarted would depend
on where in the ping cycle the stall fell. Start-up is not watched (systemd arms the watchdog at
``READY=1``, and the pinger starts then).

Out of sight: a packet task parked forever on something that never comes (none does today: each
waits on its own fd, eventfd or clock), and the C datapath's poll thread while it holds nothing
Python needs.

The decision is ``ProgressJudge``, pure and fed with times, so that it is tested with a fake
clock. ``StepTimer``, a trio instrument, times every step on the system's monotonic clock (trio's
may be a test's mock clock, and a stall is real time). It costs two calls and two clock reads per
step (a few microseconds on a small VM, against the hundreds a batch of frames takes), and is
installed only when systemd asked for a watchdog. ``run_watchdog`` is the task that pings.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import trio

from vswitch.runtime import sdnotify


@dataclass(frozen=True)
class Verdict:
    """Whether to ping now, and if not, why not."""

    ping: bool
    reason: str = ""


class ProgressJudge:
    """Rule 2 of the module's docstring: the longest step since the last verdict, against
    ``max_step``. Rule 1 needs no code: a verdict that is never asked for is no ping."""

    def __init__(self, max_step: float) -> None:
        self.max_step = max_step
        self._step_started: float | None = None
        self._longest = 0.0
        self._longest_task = ""

    def step_started(self, now: float) -> None:
        self._step_started = now

    def step_finished(self, task: str, now: float) -> None:
        if self._step_started is None:
            return  # a step that began before the watch did
        duration = now - self._step_started
        self._step_started = None
        if duration > self._longest:
            self._longest = duration
            self._longest_task = task

    def verdict(self, now: float) -> Verdict:
        """The decision for the period since the previous verdict, which starts the next one.

        A step still running counts with its duration so far; asked from the pinger's own step,
        that is its own, which has only just begun.
        """
        longest, task = self._longest, self._longest_task
        if self._step_started is not None and now - self._step_started > longest:
            longest, task = now - self._step_started, "a step still running"
        self._longest, self._longest_task = 0.0, ""
        if longest > self.max_step:
            return Verdict(False, f"task {task} held the event loop for {longest:.1f} s (more "
                                  f"than {self.max_step:g} s): the packet path stalled")
        return Verdict(True)


class StepTimer(trio.abc.Instrument):
    """Tells a ``ProgressJudge`` when each task step begins and ends."""

    def __init__(self, judge: ProgressJudge, clock: Callable[[], float] = time.monotonic) -> None:
        self._judge = judge
        self._clock = clock

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._judge.step_started(self._clock())

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self._judge.step_finished(task.name, self._clock())


async def ping_while_progressing(timeout: float, log: logging.Logger, *,
                                 notify: Callable[[str], Any] = sdnotify.notify,
                                 clock: Callable[[], float] = time.monotonic,
                                 task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Ping at once, then every ``timeout / 2`` seconds while the judge allows, until cancelled."""
    interval = timeout / 2
    judge = ProgressJudge(max_step=interval)
    instrument = StepTimer(judge, clock)
    trio.lowlevel.add_instrument(instrument)
    try:
        log.info("pinging systemd's watchdog every %g s while the packet path makes progress",
                 interval)
        task_status.started()
        skipped = False
        while True:
            verdict = judge.verdict(clock())
            if verdict.ping:
                notify("WATCHDOG=1")
                if skipped:
                    log.warning("the packet path makes progress again; pinging the watchdog")
            else:
                log.error("not pinging systemd's watchdog: %s; systemd restarts the daemon",
                          verdict.reason)
            skipped = not verdict.ping
            await trio.sleep(interval)
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def run_watchdog(log: logging.Logger, environ: Mapping[str, str] | None = None, *,
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Ping systemd's watchdog if it asked for pings (``WatchdogSec=``); else return at once."""
    timeout = sdnotify.watchdog_timeout(os.environ if environ is None else environ, os.getpid())
    if timeout is None:
        task_status.started()
        return
    await ping_while_progressing(timeout, log, task_status=task_status)

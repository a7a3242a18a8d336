"""The timer task: it wakes at the deadline the core asks for, on trio's clock (mocked here, so
no test waits in real time), and delivers what the core's timers send."""
from __future__ import annotations

import trio

from vswitch.core.transmit import Transmit

from .support import Harness, RecordingSwitch, make_topology


async def test_timer_delivers_what_the_core_schedules(tmp_path, autojump_clock):
    harness = Harness(make_topology(tmp_path), switch_factory=RecordingSwitch)
    async with trio.open_nursery() as nursery:
        await harness.start(nursery)
        switch = harness.switch
        switch.timer_frames = [Transmit(2, b"from-timer")]
        switch.deadline = 0.0  # due now; the timer picks it up within its maximum sleep
        with trio.fail_after(5):
            assert await harness.ports.ports["a"].receive() == b"from-timer"
        nursery.cancel_scope.cancel()


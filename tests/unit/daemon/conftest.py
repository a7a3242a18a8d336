"""Fixtures for the daemon tests: a log a test can wait on instead of polling or sleeping."""
from __future__ import annotations

import logging

import pytest
import trio

from vswitch.core import presentation

from .support import RecordingSwitch


class LogWatch(logging.Handler):
    """Collects the daemon's log messages and wakes the test when one arrives.

    Lines may be logged from worker threads (a reload parses its file in one), so the wake-up is
    handed to the trio thread through its token instead of setting the event directly.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._token = token
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)

    async def wait_for(self, text: str, times: int = 1, timeout: float = 5.0) -> None:
        """Until ``text`` has been logged ``times`` times in all."""
        with trio.fail_after(timeout):
            while self.count(text) < times:
                await self._changed.wait()


@pytest.fixture
async def log_watch():
    logger = logging.getLogger("vswitchd")
    watch = LogWatch(trio.lowlevel.current_trio_token())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def rows_from_the_recording_switch(monkeypatch):
    """The control commands read the switch's tables through vswitch.core.presentation; a
    RecordingSwitch answers those reads itself, a real Switch goes through presentation."""
    def answered_by_the_fake(name: str):
        real = getattr(presentation, name)

        def rows(switch, *args):
            if isinstance(switch, RecordingSwitch):
                return getattr(switch, name)(*args)
            return real(switch, *args)

        return rows

    for name in ("port_rows", "fdb_rows", "route_rows", "neighbor_rows", "service_rows"):
        monkeypatch.setattr(presentation, name, answered_by_the_fake(name))

"""Fragmented datagrams of translated connections: how each first fragment went, and the later
fragments that came before it.

Theory of operation
-------------------
* Only the first fragment of a datagram carries the ports, so only it can find (or open) the
  translated connection. Later fragments (same protocol, addresses and IP id, the ``FragmentKey``)
  follow its *outcome*, recorded here: translated by a connection in a direction, passed
  untranslated, or dropped (then its later fragments are dropped too: an untranslated later
  fragment must never leave). An outcome lasts ``outcome_timeout`` seconds (Linux's ipfrag_time);
  at most ``max_datagrams`` are remembered, and a table that is still full after removing the
  expired ones starts over, which costs later fragments a wait or a drop, never a wrong
  translation.
* When the network reorders a datagram and a later fragment of a connection that needs
  translation arrives first, forwarding it untranslated would leak the wrong addresses and
  dropping it would lose the datagram; the kernel's conntrack reassembles before it looks.
  vswitch does not reassemble: it *holds* such fragments here until their first fragment's
  outcome is recorded. Held frames are bounded in number per datagram and in total, and are
  dropped (counted) when their first fragment does not come within ``hold_timeout`` seconds.
* Recording an outcome releases the frames held for its datagram. They are the table's output:
  ``take_released`` hands them over, in arrival order, to be run through the pipeline again as if
  just received. The switch asks after every packet it runs, so nothing is released behind its
  back and nothing waits longer than the packet that released it.
* Time is passed in; ``expire`` reclaims what is due, through a ``DeadlineHeap`` each for
  outcomes and held datagrams, and ``next_deadline`` is the earliest held datagram's deadline (an
  expired outcome is already ignored by ``outcome``, so reclaiming it can wait for the next
  timer).
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from vswitch.tables.conntrack import Direction, Entry
from vswitch.tables.deadlines import DeadlineHeap

FragmentKey = tuple[int, bytes, bytes, int]  # protocol, source, destination, IP id as received

OUTCOME_TIMEOUT = 30.0    # seconds a datagram's later fragments may follow its first (ipfrag_time)
MAX_DATAGRAMS = 4096      # first-fragment outcomes remembered at once
HOLD_TIMEOUT = 5.0        # seconds a later fragment waits for its first (Linux waits up to 30 s)
MAX_HELD_FRAMES = 256     # in all datagrams together
MAX_FRAMES_PER_DATAGRAM = 64  # a 64 KB datagram in 1 KB fragments


class FirstFragment(enum.Enum):
    """How a datagram's first fragment went, which its later fragments follow."""

    TRANSLATED = "translated by its connection"
    UNTRANSLATED = "passed untranslated"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: FirstFragment
    expires: float
    entry: Entry | None = None  # the connection of a TRANSLATED first fragment
    direction: Direction | None = None  # and the direction it travelled in


@dataclass
class _Waiting:
    expires: float
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (ingress port id, frame)


class FragmentTable:
    def __init__(self, outcome_timeout: float = OUTCOME_TIMEOUT,
                 max_datagrams: int = MAX_DATAGRAMS, hold_timeout: float = HOLD_TIMEOUT,
                 max_frames: int = MAX_HELD_FRAMES,
                 max_per_datagram: int = MAX_FRAMES_PER_DATAGRAM):
        self.outcome_timeout = outcome_timeout
        self.max_datagrams = max_datagrams
        self.hold_timeout = hold_timeout
        self.max_frames = max_frames
        self.max_per_datagram = max_per_datagram
        self._outcomes: dict[FragmentKey, Outcome] = {}
        self._outcome_deadlines = self._outcome_heap()
        self._waiting: dict[FragmentKey, _Waiting] = {}
        self._hold_deadlines: DeadlineHeap[FragmentKey] = DeadlineHeap(
            lambda key: self._waiting[key].expires)
        self._released: list[tuple[int, bytes]] = []
        self._frames = 0
        self.held = 0       # frames ever held
        self.released = 0   # frames handed back after their first fragment came
        self.expired = 0    # frames dropped because their first fragment never came
        self.refused = 0    # frames not held: the per-datagram or total bound was reached

    def __len__(self) -> int:
        """Frames held now."""
        return self._frames

    def __contains__(self, key: FragmentKey) -> bool:
        """Whether frames of this datagram are held."""
        return key in self._waiting

    # -- first fragments -------------------------------------------------------------------------

    def outcome(self, key: FragmentKey, now: float) -> Outcome | None:
        """How the datagram's first fragment went, if it came less than ``outcome_timeout`` ago."""
        known = self._outcomes.get(key)
        return known if known is not None and now < known.expires else None

    def record(self, key: FragmentKey, kind: FirstFragment, now: float,
               entry: Entry | None = None, direction: Direction | None = None) -> None:
        """Remember how a first fragment went, and release the later fragments held for it."""
        outcomes = self._outcomes
        if len(outcomes) >= self.max_datagrams:
            self._expire_outcomes(now)
            if len(outcomes) >= self.max_datagrams:
                outcomes.clear()
                self._outcome_deadlines = self._outcome_heap()
        expires = now + self.outcome_timeout
        outcomes[key] = Outcome(kind, expires, entry, direction)
        self._outcome_deadlines.schedule(key, expires)
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            self._hold_deadlines.discard(key)
            self._frames -= len(waiting.frames)
            self.released += len(waiting.frames)
            self._released.extend(waiting.frames)

    # -- later fragments -------------------------------------------------------------------------

    def hold(self, key: FragmentKey, port_id: int, frame: bytes, now: float) -> bool:
        """Keep ``frame`` until its first fragment's outcome is recorded; False (nothing kept)
        when a bound is reached. The deadline is set by the datagram's first held fragment and
        never extended."""
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = _Waiting(now + self.hold_timeout)
        if self._frames >= self.max_frames or len(waiting.frames) >= self.max_per_datagram:
            self.refused += 1
            return False
        waiting.frames.append((port_id, bytes(frame)))
        if key not in self._waiting:
            self._waiting[key] = waiting
            self._hold_deadlines.schedule(key, waiting.expires)
        self._frames += 1
        self.held += 1
        return True

    def take_released(self) -> Sequence[tuple[int, bytes]]:
        """The frames released since the last call, (ingress port id, frame) in arrival order,
        forgotten here: the caller runs them through the pipeline again."""
        if not self._released:
            return ()  # the common case, asked after every packet: allocate nothing
        released, self._released = self._released, []
        return released

    # -- time ------------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget expired outcomes and drop the frames of datagrams whose first fragment did not
        come in time; returns how many frames were dropped."""
        self._expire_outcomes(now)
        dropped = 0
        for key in self._hold_deadlines.pop_due(now):
            dropped += len(self._waiting.pop(key).frames)
        self._frames -= dropped
        self.expired += dropped
        return dropped

    def _expire_outcomes(self, now: float) -> None:
        for key in self._outcome_deadlines.pop_due(now):
            del self._outcomes[key]

    def _outcome_heap(self) -> DeadlineHeap[FragmentKey]:
        return DeadlineHeap(lambda key: self._outcomes[key].expires)

    def next_deadline(self) -> float | None:
        return self._hold_deadlines.next_deadline()

    def statistics(self) -> dict[str, int]:
        return {"waiting_datagrams": len(self._waiting), "waiting_frames": self._frames,
                "held": self.held, "released": self.released, "expired": self.expired,
                "refused": self.refused}

"""Deadlines of a table's entries, earliest first: a heap with lazy deletion.

Theory of operation
-------------------
* The owning table keeps each entry's true deadline itself (an entry's ``expires``, a MAC's
  ``last_seen + aging``); ``deadline_of(key)`` reads it. The heap holds at most one *current*
  item per key, at or before that deadline, and any number of stale ones.
* A deadline that moves *later* needs no call: it is the common case (every packet of a
  connection, every frame of a MAC pushes its deadline on) and costs nothing here. When the
  key's item reaches the top early, it is moved to the key's true deadline then.
* A deadline that moves *earlier* (a RST, a shorter timeout) needs ``schedule``: a new item is
  pushed and becomes the current one; the old item goes stale. ``discard`` makes the current item
  stale when its key goes away. Stale items are skipped when they reach the top, and the heap is
  rebuilt from the live keys when they outnumber them, so it stays within twice the live keys.
* Items are ordered by (deadline, sequence number): keys due at the same time come out in the
  order they were scheduled, whatever their hash or address, so expiry is reproducible.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineHeap(Generic[K]):
    def __init__(self, deadline_of: Callable[[K], float]):
        self._deadline_of = deadline_of
        self._heap: list[tuple[float, int, K]] = []
        self._current: dict[K, tuple[float, int]] = {}  # key -> (at, sequence) of its live item
        self._sequence = 0

    def __len__(self) -> int:
        """Keys scheduled now."""
        return len(self._current)

    def __contains__(self, key: K) -> bool:
        return key in self._current

    def schedule(self, key: K, deadline: float) -> None:
        """Start tracking ``key``, due at ``deadline``, or move its deadline earlier. Moving it
        later needs no call (a call that does is harmless and cheap)."""
        current = self._current.get(key)
        if current is not None and current[0] <= deadline:
            return
        self._sequence += 1
        self._current[key] = (deadline, self._sequence)
        heapq.heappush(self._heap, (deadline, self._sequence, key))
        self._bound()

    def discard(self, key: K) -> None:
        """Stop tracking ``key`` (it left its table); unknown keys are ignored."""
        if self._current.pop(key, None) is not None:
            self._bound()

    def next_deadline(self) -> float | None:
        """The earliest true deadline of any key, or None when none is scheduled."""
        heap = self._heap
        current = self._current
        while heap:
            at, sequence, key = heap[0]
            if current.get(key) != (at, sequence):
                heapq.heappop(heap)  # stale: discarded, or superseded by an earlier deadline
                continue
            actual = self._deadline_of(key)
            if actual > at:  # postponed since it was pushed: move it now
                self._sequence += 1
                current[key] = (actual, self._sequence)
                heapq.heapreplace(heap, (actual, self._sequence, key))
                continue
            return at
        return None

    def pop_due(self, now: float) -> list[K]:
        """The keys whose deadline has come (``deadline <= now``), earliest first, no longer
        tracked here: the caller removes them from its table."""
        due: list[K] = []
        while True:
            at = self.next_deadline()
            if at is None or at > now:
                self._bound()
                return due
            _, _, key = heapq.heappop(self._heap)
            del self._current[key]
            due.append(key)

    def _bound(self) -> None:
        """Rebuild from the live keys when stale items outnumber them."""
        if len(self._heap) > 2 * len(self._current) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        heap = []
        for key in self._current:
            self._sequence += 1
            at = self._deadline_of(key)
            self._current[key] = (at, self._sequence)
            heap.append((at, self._sequence, key))
        heapq.heapify(heap)
        self._heap = heap

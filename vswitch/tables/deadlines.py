"""Deadlines of a table's entries, earliest first: a heap with lazy deletion (``DeadlineHeap``),
and its flat twin for entries named by slot numbers (``SlotDeadlines``).

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
* ``SlotDeadlines`` keeps the same promise (moving a deadline later costs nothing, moving it
  earlier is a call) for keys that are slot numbers, with no Python object per key: an indexed
  binary heap in three flat arrays (the heap of slots, each slot's position in it, the deadline
  each slot is filed under), 16 bytes per slot, paged in only as slots are used. The filed
  deadline is at or before the true one (read from the owner's array); when a slot reaches the
  top filed too early, it is filed again at its true deadline and sifted down. Each slot is in the
  heap at most once, so there is nothing stale to bound; keys due at the same time come out in
  heap order, which depends only on the sequence of calls.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from vswitch.tables.shared_slots import shared_array

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


class SlotDeadlines:
    """Deadlines of slots ``0..capacity-1``; ``deadline_of[slot]`` is a slot's true deadline."""

    def __init__(self, capacity: int, deadline_of: memoryview):
        self._true = deadline_of
        self._heap = shared_array("I", capacity)  # slots, heap-ordered by their filed deadline
        self._position = shared_array("I", capacity)  # slot -> its index in _heap
        self._filed = shared_array("d", capacity)  # slot -> the deadline it is filed under
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, slot: int) -> bool:
        at = self._position[slot]
        return at < self._size and self._heap[at] == slot

    def schedule(self, slot: int, deadline: float) -> None:
        """Start tracking ``slot``, due at ``deadline``, or move its deadline earlier. Moving it
        later needs no call (a call that does is harmless and cheap)."""
        if slot in self:
            if deadline >= self._filed[slot]:
                return
            self._filed[slot] = deadline
            self._sift_up(self._position[slot])
            return
        self._filed[slot] = deadline
        at = self._size
        self._heap[at] = slot
        self._position[slot] = at
        self._size = at + 1
        self._sift_up(at)

    def discard(self, slot: int) -> None:
        """Stop tracking ``slot``; a slot not tracked is ignored."""
        if slot not in self:
            return
        at = self._position[slot]
        last = self._size - 1
        self._size = last
        if at == last:
            return
        heap = self._heap
        moved = heap[last]
        heap[at] = moved
        self._position[moved] = at
        if self._filed[moved] < self._filed[slot]:
            self._sift_up(at)
        else:
            self._sift_down(at)

    def next_deadline(self) -> float | None:
        """The earliest true deadline of any slot, or None when none is tracked."""
        heap, filed, true = self._heap, self._filed, self._true
        while self._size:
            top = heap[0]
            actual = true[top]
            if actual > filed[top]:  # postponed since it was filed: file it again now
                filed[top] = actual
                self._sift_down(0)
                continue
            return filed[top]
        return None

    def pop_due(self, now: float) -> list[int]:
        """The slots whose deadline has come (``deadline <= now``), earliest first, no longer
        tracked here: the caller removes them from its table."""
        due: list[int] = []
        while True:
            at = self.next_deadline()
            if at is None or at > now:
                return due
            top = self._heap[0]
            self.discard(top)
            due.append(top)

    def _sift_up(self, at: int) -> None:
        heap, position, filed = self._heap, self._position, self._filed
        slot = heap[at]
        key = filed[slot]
        while at:
            parent_at = (at - 1) >> 1
            parent = heap[parent_at]
            if filed[parent] <= key:
                break
            heap[at] = parent
            position[parent] = at
            at = parent_at
        heap[at] = slot
        position[slot] = at

    def _sift_down(self, at: int) -> None:
        heap, position, filed = self._heap, self._position, self._filed
        size = self._size
        slot = heap[at]
        key = filed[slot]
        while True:
            child_at = 2 * at + 1
            if child_at >= size:
                break
            child = heap[child_at]
            child_key = filed[child]
            if child_at + 1 < size:
                right = heap[child_at + 1]
                right_key = filed[right]
                if right_key < child_key:
                    child_at, child, child_key = child_at + 1, right, right_key
            if child_key >= key:
                break
            heap[at] = child
            position[child] = at
            at = child_at
        heap[at] = slot
        position[slot] = at

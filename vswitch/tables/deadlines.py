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
  binary heap in four flat arrays (the heap of slots, each slot's position in it, the deadline
  each slot is filed under, whether it is tracked), 17 bytes per slot, paged in only as slots are
  used. The filed deadline is at or before the true one (read from the owner's array); when a
  slot reaches the top filed too early, it is filed again at its true deadline and sifted down.
  ``discard`` only clears the tracked flag (the slot leaves the heap when it reaches the top), so
  removing an entry costs O(1); a slot scheduled again meanwhile keeps its place, with the
  earlier of the two deadlines filed. Each slot is in the heap at most once, so the heap never
  holds more than the capacity; slots due at the same time come out in heap order, which depends
  only on the sequence of calls.
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
        self._tracked = shared_array("B", capacity)  # 1 while the owner has the slot scheduled
        self._size = 0  # slots in the heap, tracked or left behind by discard
        self._count = 0  # tracked slots

    def __len__(self) -> int:
        """Slots scheduled now."""
        return self._count

    def __contains__(self, slot: int) -> bool:
        return bool(self._tracked[slot])

    def heap_size(self) -> int:
        """Slots in the heap, including those discarded but not yet surfaced (<= capacity)."""
        return self._size

    def schedule(self, slot: int, deadline: float) -> None:
        """Start tracking ``slot``, due at ``deadline``, or move its deadline earlier. Moving it
        later needs no call (a call that does is harmless and cheap)."""
        if not self._tracked[slot]:
            self._tracked[slot] = 1
            self._count += 1
        at = self._position[slot]
        if at < self._size and self._heap[at] == slot:
            # In the heap already (tracked, or discarded and not yet surfaced): a filed deadline
            # at or before the new one is a valid lower bound and stays.
            if deadline < self._filed[slot]:
                self._filed[slot] = deadline
                self._sift_up(at)
            return
        self._filed[slot] = deadline
        at = self._size
        self._heap[at] = slot
        self._position[slot] = at
        self._size = at + 1
        self._sift_up(at)

    def discard(self, slot: int) -> None:
        """Stop tracking ``slot``; a slot not tracked is ignored. O(1): the slot leaves the heap
        when it reaches the top, unless it is scheduled again before."""
        if self._tracked[slot]:
            self._tracked[slot] = 0
            self._count -= 1

    def next_deadline(self) -> float | None:
        """The earliest true deadline of any tracked slot, or None when none is tracked."""
        heap, filed, true, tracked = self._heap, self._filed, self._true, self._tracked
        while self._size:
            top = heap[0]
            if not tracked[top]:
                self._remove_top()
                continue
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
            self._tracked[top] = 0
            self._count -= 1
            self._remove_top()
            due.append(top)

    def _remove_top(self) -> None:
        last = self._size - 1
        self._size = last
        if last:
            moved = self._heap[last]
            self._heap[0] = moved
            self._position[moved] = 0
            self._sift_down(0)

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

"""Fixed-size byte keys to Python objects, through the native exact-match hash table.

``accel.ExactTable`` (C, or its pure twin) maps a key to an integer; here that integer is a slot in a
list of objects, so tables keep rich entries (an FDB entry, a neighbour with its queue) while the
hashing and probing run in C. Capacity is fixed at creation, as the C table's is: ``put`` reports a
full table instead of growing without bound.
"""
from __future__ import annotations

from types import ModuleType
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class ObjectTable(Generic[T]):
    def __init__(self, accel: ModuleType, key_size: int, capacity: int):
        self.key_size = key_size
        self.capacity = capacity
        self._index = accel.ExactTable(key_size, capacity)
        self._slots: list[T | None] = []
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: bytes) -> T | None:
        slot = self._index.lookup(key)
        return None if slot is None else self._slots[slot]

    def put(self, key: bytes, value: T) -> bool:
        """Insert or replace; False when the key is new and the table is full."""
        slot = self._index.lookup(key)
        if slot is not None:
            self._slots[slot] = value
            return True
        slot = self._free.pop() if self._free else len(self._slots)
        if not self._index.insert(key, slot):
            if slot < len(self._slots):
                self._free.append(slot)
            return False
        if slot == len(self._slots):
            self._slots.append(value)
        else:
            self._slots[slot] = value
        return True

    def pop(self, key: bytes) -> T | None:
        slot = self._index.lookup(key)
        if slot is None:
            return None
        self._index.delete(key)
        value = self._slots[slot]
        self._slots[slot] = None
        self._free.append(slot)
        return value

    def values(self) -> Iterator[T]:
        return (v for v in self._slots if v is not None)

    def clear(self) -> None:
        self._index.clear()
        self._slots.clear()
        self._free.clear()

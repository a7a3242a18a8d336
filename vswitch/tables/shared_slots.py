"""Fields that the C datapath reads and writes in place: one copy, shared by Python and C.

Theory of operation
-------------------
* A cached decision executed in C must refresh what the pipeline would: the sender's FDB entry,
  the connection's clock and counters. If C kept copies, Python would see stale ages and
  counters (and expire a MAC whose traffic flows), so these fields live in flat arrays that both
  sides index by *slot*: Python through ``memoryview`` casts, C through pointers handed over once
  (``vs_dp_set_shared``). The table that owns an entry (FDB, neighbours, conntrack) takes a slot
  when the entry is made and gives it back when the entry goes.
* Arrays are anonymous ``mmap`` regions of fixed size: the pages a table never uses cost no
  memory, and the memory never moves, so C's pointers stay valid as long as the owner lives.
* A slot is named by (slot, incarnation): releasing a slot bumps its incarnation, so a cached
  action that names the previous holder is declined instead of touching the new one.
* An entry object that leaves its table keeps its last values in Python (FDB and neighbour
  entries detach themselves; a conntrack view is snapshotted by its table), so that a reference
  held past removal (a trace, a packet in flight) never reads its successor's fields.
* The conntrack table keeps *every* field of a connection here (``ConnectionSlots``), not only
  the ones C shares, so that a tracked connection costs no Python object at all.
* Writes from the two sides race only on fields both write with the same meaning (a
  timestamp set to "now", a counter); aligned 8-byte stores are atomic on the machines we run on.
"""
from __future__ import annotations

import mmap
from typing import Any, Iterable

_FORMATS = {"d": 8, "Q": 8, "I": 4, "B": 1}


def shared_array(fmt: str, length: int) -> Any:
    """A zero-filled array of ``length`` items of struct format ``fmt`` ('d', 'Q', 'I', 'B'),
    backed by memory that never moves. Typed Any: a cast memoryview holds floats or ints as its
    format says, which the type stubs cannot express."""
    size = _FORMATS[fmt] * max(length, 1)
    view: Any = memoryview(mmap.mmap(-1, size))
    return view.cast(fmt)


class SlotAllocator:
    """Slot numbers 0..capacity-1 with an incarnation each: ``take`` one, ``release`` it."""

    def __init__(self, capacity: int, arrays: Iterable[tuple[str, str, int]] = ()):
        self.capacity = capacity
        self.incarnation = shared_array("I", capacity)
        self._next = 0  # slots below have been handed out at least once
        self._free: list[int] = []
        for name, fmt, per_slot in arrays:
            setattr(self, name, shared_array(fmt, capacity * per_slot))

    def take(self) -> int:
        """A free slot, or -1 when every slot is in use."""
        if self._free:
            return self._free.pop()
        if self._next < self.capacity:
            self._next += 1
            return self._next - 1
        return -1

    def release(self, slot: int) -> None:
        self.incarnation[slot] = (self.incarnation[slot] + 1) & 0xFFFFFFFF
        self._free.append(slot)

    def in_use(self) -> int:
        return self._next - len(self._free)


class StampSlots(SlotAllocator):
    """One timestamp per slot (``stamps``): an FDB entry's last sighting, a neighbour's
    confirmation while it is reachable."""

    stamps: Any

    def __init__(self, capacity: int):
        super().__init__(capacity, [("stamps", "d", 1)])


class ConnectionSlots(SlotAllocator):
    """Every field of a tracked connection, one array each, indexed by its slot.

    The first six arrays are what a cache hit changes or checks; the C datapath reads and writes
    them in place (native/vswitch_native.h, "The datapath"). The others are read by Python only:

    ``tuples``
        ``TUPLE_SIZE`` bytes per slot: the original tuple's key (``KEY_SIZE`` bytes: protocol,
        source address, source port, destination address, destination port, in network order;
        the same bytes index the connection in the table's exact-match hash), then the DNAT and
        the SNAT address and port (4 + 2 bytes each, zero when absent; ``nat`` says which are
        present). The reply tuple follows from these three and is not stored.
    ``nat``
        DNAT | DNAT_PORT | SNAT | SNAT_PORT presence bits, and SIMULTANEOUS_OPEN.
    ``created``
        when the connection was created.
    ``label``
        the id of its interned label set (``conntrack_labels``).
    """

    expires: Any
    seen: Any
    packets: Any  # two per slot: [2 * slot + direction]
    bytes: Any
    state: Any  # TcpState value
    flags: Any  # IN_TABLE | REPLIED | ASSURED
    tuples: Any  # TUPLE_SIZE bytes per slot
    nat: Any
    created: Any
    label: Any

    IN_TABLE = 1
    REPLIED = 2
    ASSURED = 4

    KEY_SIZE = 13
    TUPLE_SIZE = KEY_SIZE + 12

    DNAT = 1
    DNAT_PORT = 2
    SNAT = 4
    SNAT_PORT = 8
    SIMULTANEOUS_OPEN = 16

    def __init__(self, capacity: int):
        super().__init__(capacity, [("expires", "d", 1), ("seen", "d", 1), ("packets", "Q", 2),
                                    ("bytes", "Q", 2), ("state", "B", 1), ("flags", "B", 1),
                                    ("tuples", "B", self.TUPLE_SIZE), ("nat", "B", 1),
                                    ("created", "d", 1), ("label", "I", 1)])

    def high_water(self) -> int:
        """Slots below this number have been handed out at least once; the rest never were."""
        return self._next

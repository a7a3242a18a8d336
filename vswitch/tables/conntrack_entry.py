"""A tracked connection as seen from Python: a light view of one slot of the conntrack table.

Why a module of its own: while the table holds a connection, every field of it lives in the
table's ``ConnectionSlots`` arrays (see ``shared_slots``), where the C datapath updates
established connections without waking Python, and there is no Python object for it. An
``Entry`` is made on demand (``lookup``, ``create``, ``entries``, ``expire``...) and names the
connection by (table, slot, incarnation); properties make that invisible to the table's logic and
to every reader: ``entry.expires``, ``entry.packets[d] += 1`` and ``entry.tcp_state`` read and
write the one shared copy, ``entry.original`` is unpacked from the slot's tuple bytes on first
access.

Theory of operation
-------------------
* The table keeps at most one live view per slot (slot -> weak reference), so views made twice
  for the same connection are one object as long as either is held; two views of one connection
  compare and hash equal in any case, by (table, slot, incarnation).
* When a connection leaves its table, the table *snapshots* the slot's live view, if one is
  still held (a packet in flight, a trace, the pure fast path's cache): the view copies its
  fields into Python and stops reading the slot, so it keeps its own last values and never its
  slot's next holder; ``alive()`` is then False and ``slot`` is -1 (nothing may be compiled
  against it).
* Labels: many connections carry equal label dicts (the service, its port, the backend), so the
  table interns them (``conntrack_labels``): a slot holds an id, the set is stored once with a
  reference count. ``labels`` makes a new dict from it at each access (changing it changes
  nothing).
* The table keeps at most one live view per slot in a dict of weak references, not a
  ``WeakValueDictionary``: its set-item is three times the cost on the first packet's path.

The module is longer than the core's usual 400 lines: ``FlowTuple``, the codec of a slot's tuple
record and the view that reads it are one format, read together when it changes.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from vswitch.tables.shared_slots import ConnectionSlots
from vswitch.tables.tcp_states import TcpState
from vswitch.wire.addresses import ip_text
from vswitch.wire.headers import IpProto

if TYPE_CHECKING:
    from vswitch.tables.conntrack import ConntrackTable

_TCP = int(IpProto.TCP)
_ICMP = int(IpProto.ICMP)
PROTO_NAMES = {_TCP: "tcp", int(IpProto.UDP): "udp", int(IpProto.ICMP): "icmp"}

_STATES = tuple(TcpState)
_IN_TABLE = ConnectionSlots.IN_TABLE
_REPLIED = ConnectionSlots.REPLIED
_ASSURED = ConnectionSlots.ASSURED
_DNAT, _DNAT_PORT = ConnectionSlots.DNAT, ConnectionSlots.DNAT_PORT
_SNAT, _SNAT_PORT = ConnectionSlots.SNAT, ConnectionSlots.SNAT_PORT
_SIMULTANEOUS_OPEN = ConnectionSlots.SIMULTANEOUS_OPEN
_TUPLE_SIZE = ConnectionSlots.TUPLE_SIZE

#: One direction's tuple as its key: protocol, source, source port, destination, its port.
TUPLE_KEY = struct.Struct("!B4sH4sH")
#: A slot's ``tuples`` record: the original tuple's key, then DNAT and SNAT address and port.
TUPLE_RECORD = struct.Struct("!B4sH4sH4sH4sH")


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """A flow as one direction's packets carry it. For ICMP echo both ports hold the identifier,
    so that reversing the tuple gives the tuple of the echo reply."""

    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def reversed(self) -> FlowTuple:
        return FlowTuple(self.proto, self.dst, self.dport, self.src, self.sport)

    def describe(self) -> str:
        name = PROTO_NAMES.get(self.proto)
        if self.proto == _ICMP:
            return f"icmp {ip_text(self.src)} > {ip_text(self.dst)} id {self.sport}"
        if name is None:
            return f"proto {self.proto} {ip_text(self.src)} > {ip_text(self.dst)}"
        return f"{name} {ip_text(self.src)}:{self.sport} > {ip_text(self.dst)}:{self.dport}"

    def as_dict(self) -> dict[str, Any]:
        return {"src": ip_text(self.src), "sport": self.sport,
                "dst": ip_text(self.dst), "dport": self.dport}

    def key(self) -> bytes:
        """The tuple's ``TUPLE_KEY`` bytes, under which the table indexes it."""
        return TUPLE_KEY.pack(self.proto, self.src, self.sport, self.dst, self.dport)


_SET_PROTO, _SET_SRC, _SET_SPORT, _SET_DST, _SET_DPORT = (
    FlowTuple.__dict__[name].__set__ for name in ("proto", "src", "sport", "dst", "dport"))
_new_object = object.__new__


def make_tuple(proto: int, src: bytes, sport: int, dst: bytes, dport: int) -> FlowTuple:
    """``FlowTuple(...)`` at half the cost: the slots are set through their descriptors instead
    of the frozen dataclass's checked ``__init__``. For tuples unpacked from a slot on every
    slow-path packet."""
    flow = _new_object(FlowTuple)
    _SET_PROTO(flow, proto)
    _SET_SRC(flow, src)
    _SET_SPORT(flow, sport)
    _SET_DST(flow, dst)
    _SET_DPORT(flow, dport)
    return flow


def _reply_fields(proto: int, src: bytes, sport: int, dst: bytes, dport: int,
                  dnat: tuple[bytes, int | None] | None,
                  snat: tuple[bytes, int | None] | None) -> tuple[int, bytes, int, bytes, int]:
    dst_, dport_ = (dnat[0], dnat[1] if dnat[1] is not None and proto != _ICMP else dport) \
        if dnat is not None else (dst, dport)
    src_, sport_ = (snat[0], snat[1] if snat[1] is not None else sport) \
        if snat is not None else (src, sport)
    if proto == _ICMP:
        dport_ = sport_
    return proto, dst_, dport_, src_, sport_


def reply_of(original: FlowTuple, dnat: tuple[bytes, int] | None,
             snat: tuple[bytes, int] | None) -> FlowTuple:
    """The tuple a reply arrives with: the original after translation, reversed. For ICMP
    echo the identifier is one field in both directions, so only ``snat`` may change it."""
    return make_tuple(*_reply_fields(original.proto, original.src, original.sport, original.dst,
                                     original.dport, dnat, snat))


def _record(slots: ConnectionSlots, slot: int
            ) -> tuple[tuple[int, bytes, int, bytes, int], Any, Any, int]:
    proto, src, sport, dst, dport, dnat_ip, dnat_port, snat_ip, snat_port = \
        TUPLE_RECORD.unpack_from(slots.tuples, slot * _TUPLE_SIZE)
    bits = slots.nat[slot]
    dnat = (dnat_ip, dnat_port if bits & _DNAT_PORT else None) if bits & _DNAT else None
    snat = (snat_ip, snat_port if bits & _SNAT_PORT else None) if bits & _SNAT else None
    return (proto, src, sport, dst, dport), dnat, snat, bits


def record_of(slots: ConnectionSlots, slot: int) -> tuple[FlowTuple, Any, Any]:
    """The original tuple, DNAT and SNAT that ``slot``'s tuple record holds."""
    original, dnat, snat, _ = _record(slots, slot)
    return make_tuple(*original), dnat, snat


def reply_key_of(slots: ConnectionSlots, slot: int) -> tuple[bytes, int]:
    """The reply tuple's key for ``slot`` (``reply_of`` on the record, without making tuples),
    and the slot's ``nat`` bits."""
    original, dnat, snat, bits = _record(slots, slot)
    return TUPLE_KEY.pack(*_reply_fields(*original, dnat, snat)), bits


class Pair:
    """Two counters, one per direction, wherever they are kept (a shared array or a list)."""

    __slots__ = ("_array", "_base")

    def __init__(self, array: Any, base: int):
        self._array = array
        self._base = base

    def __getitem__(self, direction: int) -> int:
        if not 0 <= direction <= 1:
            raise IndexError(direction)
        return self._array[self._base + direction]

    def __setitem__(self, direction: int, value: int) -> None:
        if not 0 <= direction <= 1:
            raise IndexError(direction)
        self._array[self._base + direction] = value

    def __iter__(self) -> Iterator[int]:
        return iter((self[0], self[1]))

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        try:
            return list(self) == list(other)  # type: ignore[call-overload]
        except TypeError:
            return NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class Entry:
    """One tracked connection. Mutable; the table owns its bookkeeping (underscored names).

    Made by the table as a view of a slot (``Entry.view``); constructed directly, it is a
    standalone entry that belongs to no table (it keeps its values in Python)."""

    __slots__ = ("_table", "_slot", "_incarnation", "_local", "_original", "_reply", "_nat",
                 "_created", "_labels", "__weakref__")

    def __init__(self, original: Any, reply: Any, dnat: tuple[bytes, int] | None,
                 snat: tuple[bytes, int] | None, now: float, expires: float,
                 tcp_state: TcpState, labels: dict[str, Any]):
        # The owning table, typed loosely: a standalone entry has none and never reads it.
        self._table: Any = None
        self._slot = -1
        self._incarnation = 0
        self._original = original
        self._reply = reply
        self._nat = (dnat, snat)
        self._created = now
        self._labels = labels
        # expires, last seen, packets, bytes, TcpState value, flags, nat bits
        self._local: list[Any] | None = [expires, now, [0, 0], [0, 0], tcp_state.value, 0, 0]

    @classmethod
    def view(cls, table: ConntrackTable, slot: int, incarnation: int,
             original: FlowTuple | None = None, reply: FlowTuple | None = None,
             nat: tuple[Any, Any] | None = None) -> Entry:
        """A view of the connection ``table`` holds in ``slot`` (the table makes sure there is
        only one). The tuples and translations are unpacked from the slot on first access,
        unless the caller, who just wrote them, passes them."""
        entry = cls.__new__(cls)
        entry._table = table
        entry._slot = slot
        entry._incarnation = incarnation
        entry._local = None
        entry._original = original
        entry._reply = reply
        entry._nat = nat
        entry._created = entry._labels = None
        return entry

    def _snapshot(self) -> None:
        """Copy the slot's fields into Python and stop reading the slot (it is being released)."""
        shared, slot = self._table.slots, self._slot
        if self._original is None or self._nat is None:
            self._load()
        self._created = shared.created[slot]
        self._labels = self._table.labels_of(slot)
        self._local = [shared.expires[slot], shared.seen[slot],
                       [shared.packets[2 * slot], shared.packets[2 * slot + 1]],
                       [shared.bytes[2 * slot], shared.bytes[2 * slot + 1]],
                       shared.state[slot], shared.flags[slot], shared.nat[slot]]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        if self._table is None:
            return self is other
        return (self._table is other._table and self._slot == other._slot
                and self._incarnation == other._incarnation)

    def __hash__(self) -> int:
        if self._table is None:
            return object.__hash__(self)
        return self._slot << 32 | self._incarnation

    # -- what never changes while the connection lives ---------------------------------------

    def _load(self) -> None:
        self._original, dnat, snat = record_of(self._table.slots, self._slot)
        self._nat = (dnat, snat)
        self._reply = reply_of(self._original, dnat, snat)

    @property
    def original(self) -> FlowTuple:
        if self._original is None:
            self._load()
        return self._original

    @property
    def reply(self) -> FlowTuple:
        if self._reply is None:
            self._load()
        return self._reply

    @property
    def dnat(self) -> tuple[bytes, int] | None:
        if self._nat is None:
            self._load()
        return self._nat[0]

    @property
    def snat(self) -> tuple[bytes, int] | None:
        if self._nat is None:
            self._load()
        return self._nat[1]

    @property
    def created(self) -> float:
        if self._local is None:
            return self._table.slots.created[self._slot]
        return self._created

    @property
    def labels(self) -> dict[str, Any]:
        if self._local is None:
            return self._table.labels_of(self._slot)
        return self._labels

    @property
    def slot(self) -> int:
        """The slot the C datapath knows this connection by, or -1 once it has left its table."""
        return self._slot if self._local is None else -1

    # -- the fields that change --------------------------------------------------------------

    @property
    def expires(self) -> float:
        if self._local is None:
            return self._table.slots.expires[self._slot]
        return self._local[0]

    @expires.setter
    def expires(self, value: float) -> None:
        if self._local is None:
            self._table.slots.expires[self._slot] = value
        else:
            self._local[0] = value

    @property
    def last_seen(self) -> float:
        if self._local is None:
            return self._table.slots.seen[self._slot]
        return self._local[1]

    @last_seen.setter
    def last_seen(self, value: float) -> None:
        if self._local is None:
            self._table.slots.seen[self._slot] = value
        else:
            self._local[1] = value

    @property
    def packets(self) -> Pair:
        if self._local is None:
            return Pair(self._table.slots.packets, 2 * self._slot)
        return Pair(self._local[2], 0)

    @property
    def bytes(self) -> Pair:
        if self._local is None:
            return Pair(self._table.slots.bytes, 2 * self._slot)
        return Pair(self._local[3], 0)

    @property
    def tcp_state(self) -> TcpState:
        if self._local is None:
            return _STATES[self._table.slots.state[self._slot]]
        return _STATES[self._local[4]]

    @tcp_state.setter
    def tcp_state(self, value: TcpState) -> None:
        if self._local is None:
            self._table.slots.state[self._slot] = value.value
        else:
            self._local[4] = value.value

    def _flag(self, bit: int) -> bool:
        if self._local is None:
            return bool(self._table.slots.flags[self._slot] & bit)
        return bool(self._local[5] & bit)

    def _set_flag(self, bit: int, on: bool) -> None:
        if self._local is None:
            flags, slot = self._table.slots.flags, self._slot
            flags[slot] = flags[slot] | bit if on else flags[slot] & ~bit
        else:
            self._local[5] = self._local[5] | bit if on else self._local[5] & ~bit

    @property
    def replied(self) -> bool:
        return self._flag(_REPLIED)

    @replied.setter
    def replied(self, value: bool) -> None:
        self._set_flag(_REPLIED, value)

    @property
    def assured(self) -> bool:
        return self._flag(_ASSURED)

    @assured.setter
    def assured(self, value: bool) -> None:
        self._set_flag(_ASSURED, value)

    @property
    def _in_table(self) -> bool:
        return self._flag(_IN_TABLE)

    @property
    def _simultaneous_open(self) -> bool:
        if self._local is None:
            return bool(self._table.slots.nat[self._slot] & _SIMULTANEOUS_OPEN)
        return bool(self._local[6] & _SIMULTANEOUS_OPEN)

    @_simultaneous_open.setter
    def _simultaneous_open(self, value: bool) -> None:
        if self._local is None:
            nat, slot = self._table.slots.nat, self._slot
        else:
            nat, slot = self._local, 6
        nat[slot] = nat[slot] | _SIMULTANEOUS_OPEN if value else nat[slot] & ~_SIMULTANEOUS_OPEN

    # -- reading -----------------------------------------------------------------------------

    def alive(self, now: float) -> bool:
        """Still in its table and not expired: what ``lookup`` would find."""
        return self._in_table and now < self.expires

    def __repr__(self) -> str:
        state = f" {self.tcp_state.name}" if self.original.proto == _TCP else ""
        return f"<Entry {self.original.describe()}{state} expires={self.expires}>"

    def as_dict(self, now: float) -> dict[str, Any]:
        """A JSON-able row for ``vswitchctl conntrack``."""
        return {
            "proto": PROTO_NAMES.get(self.original.proto, str(self.original.proto)),
            "description": self.original.describe(),
            "original": self.original.as_dict(),
            "reply": self.reply.as_dict(),
            "dnat": _endpoint_dict(self.dnat),
            "snat": _endpoint_dict(self.snat),
            "state": self.tcp_state.name if self.original.proto == _TCP else None,
            "replied": self.replied,
            "assured": self.assured,
            "age": now - self.created,
            "idle": now - self.last_seen,
            "expires_in": max(0.0, self.expires - now),
            "packets": {"original": self.packets[0], "reply": self.packets[1]},
            "bytes": {"original": self.bytes[0], "reply": self.bytes[1]},
            "labels": _jsonable(self.labels),
        }


def _endpoint_dict(endpoint: tuple[bytes, int] | None) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {"ip": ip_text(endpoint[0]), "port": endpoint[1]}


def _jsonable(value: Any) -> Any:
    """Labels are free-form; addresses in them are shown as text, anything unknown as its str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return ip_text(bytes(value)) if len(value) == 4 else bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)

"""A tracked connection, with the fields a cache hit touches kept in shared slots.

Why a module of its own: the entry's clock, counters, TCP state and flags live in the conntrack
table's ``ConnectionSlots`` (see ``shared_slots``), where the C datapath updates established
connections without waking Python. Properties make that invisible to the table's logic and to
every reader: ``entry.expires``, ``entry.packets[d] += 1`` and ``entry.tcp_state`` read and write
the one shared copy. An entry out of its table (``_in_table`` set False) takes its values back into
Python and gives the slot up, so references held past removal keep reading their own values.
"""
from __future__ import annotations

import enum
from typing import Any, Iterator

from vswitch.tables.shared_slots import ConnectionSlots
from vswitch.tables.tcp_states import TcpState
from vswitch.wire.addresses import ip_text
from vswitch.wire.headers import IpProto

_TCP = int(IpProto.TCP)
PROTO_NAMES = {_TCP: "tcp", int(IpProto.UDP): "udp", int(IpProto.ICMP): "icmp"}

_STATES = tuple(TcpState)
_IN_TABLE = ConnectionSlots.IN_TABLE
_REPLIED = ConnectionSlots.REPLIED
_ASSURED = ConnectionSlots.ASSURED


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
    """One tracked connection. Mutable; the table owns its bookkeeping fields (underscored)."""

    __slots__ = ("original", "reply", "dnat", "snat", "created", "labels", "_simultaneous_open",
                 "slot", "_shared", "_local")

    def __init__(self, original: Any, reply: Any, dnat: tuple[bytes, int] | None,
                 snat: tuple[bytes, int] | None, now: float, expires: float,
                 tcp_state: TcpState, labels: dict[str, Any],
                 shared: ConnectionSlots | None = None):
        self.original = original
        self.reply = reply
        self.dnat = dnat
        self.snat = snat
        self.created = now
        self.labels = labels
        self._simultaneous_open = False
        self.slot = shared.take() if shared is not None else -1
        if self.slot < 0:
            self._shared = None
            # expires, last seen, packets, bytes, TcpState value, flags
            self._local: list[Any] | None = [expires, now, [0, 0], [0, 0], tcp_state.value, 0]
            return
        self._shared = shared
        self._local = None
        slot = self.slot
        shared.expires[slot] = expires
        shared.seen[slot] = now
        shared.packets[2 * slot] = shared.packets[2 * slot + 1] = 0
        shared.bytes[2 * slot] = shared.bytes[2 * slot + 1] = 0
        shared.state[slot] = tcp_state.value
        shared.flags[slot] = 0

    # -- the shared fields -------------------------------------------------------------------

    @property
    def expires(self) -> float:
        if self.slot >= 0:
            return self._shared.expires[self.slot]
        return self._local[0]

    @expires.setter
    def expires(self, value: float) -> None:
        if self.slot >= 0:
            self._shared.expires[self.slot] = value
        else:
            self._local[0] = value

    @property
    def last_seen(self) -> float:
        if self.slot >= 0:
            return self._shared.seen[self.slot]
        return self._local[1]

    @last_seen.setter
    def last_seen(self, value: float) -> None:
        if self.slot >= 0:
            self._shared.seen[self.slot] = value
        else:
            self._local[1] = value

    @property
    def packets(self) -> Pair:
        if self.slot >= 0:
            return Pair(self._shared.packets, 2 * self.slot)
        return Pair(self._local[2], 0)

    @property
    def bytes(self) -> Pair:
        if self.slot >= 0:
            return Pair(self._shared.bytes, 2 * self.slot)
        return Pair(self._local[3], 0)

    @property
    def tcp_state(self) -> TcpState:
        if self.slot >= 0:
            return _STATES[self._shared.state[self.slot]]
        return _STATES[self._local[4]]

    @tcp_state.setter
    def tcp_state(self, value: TcpState) -> None:
        if self.slot >= 0:
            self._shared.state[self.slot] = value.value
        else:
            self._local[4] = value.value

    def _flag(self, bit: int) -> bool:
        flags = self._shared.flags[self.slot] if self.slot >= 0 else self._local[5]
        return bool(flags & bit)

    def _set_flag(self, bit: int, on: bool) -> None:
        if self.slot >= 0:
            flags = self._shared.flags
            flags[self.slot] = flags[self.slot] | bit if on else flags[self.slot] & ~bit
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

    @_in_table.setter
    def _in_table(self, value: bool) -> None:
        self._set_flag(_IN_TABLE, value)
        if not value and self.slot >= 0:
            self._detach()

    def _detach(self) -> None:
        shared, slot = self._shared, self.slot
        self._local = [shared.expires[slot], shared.seen[slot],
                       [shared.packets[2 * slot], shared.packets[2 * slot + 1]],
                       [shared.bytes[2 * slot], shared.bytes[2 * slot + 1]],
                       shared.state[slot], shared.flags[slot]]
        self.slot = -1
        self._shared = None
        shared.release(slot)

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

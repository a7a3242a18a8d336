"""Connection state across a restart: the conntrack table, its NAT bindings and ClientIP affinity,
as bytes, and back.

Why: a node agent is restarted far more often than it crashes. With its tracked connections
forgotten, every translated connection breaks at the restart: the client's next segment to a
cluster IP has no entry, and a backend's next reply would leave untranslated. The runtime
(``vswitch.runtime.connection_state``) writes what this module encodes to the state directory at
shutdown and every few seconds, and hands it back here at start. This module does no I/O.

Theory of operation
-------------------
* Three steps, so that the packet path pays for a copy only. ``capture`` runs in the thread that
  owns the tables: it copies each field array of the conntrack table up to its high-water slot
  (``bytes`` of a memoryview slice, a memcpy), the label sets and the affinity entries (O(sets),
  O(clients)), and the clock. ``encode`` runs anywhere (the runtime uses a worker thread): it turns
  the clock-relative times into seconds (left, since last seen, since created) and lays the file
  out. ``decode`` + ``restore`` run at start, before any port reads a frame.
* NAT port allocations need no section of their own: a SNAT port is reserved by the entry whose
  reply tuple holds it, so restoring the entry reserves the port. The secret key of the port scan
  (``nat_ports``) is saved too, so that a connection picked up after a crash is SNATed to the port
  the scan gave it before, when the client's own port was taken.
* Times. The table's clock is the daemon's monotonic clock, which starts again with each boot,
  and which a new process cannot relate to the old one's. So the file holds *remaining* seconds and
  the wall-clock time it was written; ``restore`` subtracts the wall-clock time that passed since
  (never less than zero: a clock that stepped back does not add life), and leaves out the entries
  whose time ran out (``restore_expired``).
* What no longer exists is not restored (``restore_dropped``, and logged by the caller): an entry
  DNATed to a backend that is no longer a ready backend of the frontend it was made through (the
  service, its port or the backend went away while the daemon was down), an entry SNATed to an
  address that is no longer the node's, an entry whose tuples clash with one restored before, an
  affinity entry whose service port or backend is gone. The table's generation grows, so that no
  cached decision outlives the restart.
* A snapshot taken periodically may miss the connections of its last seconds (a SIGKILL between
  two). The header says whether the snapshot is *final* (written at shutdown, after the last
  packet); when it is not, the caller marks the table incomplete for a while
  (``ConntrackTable.incomplete_until``), during which the pipeline picks up connections it does
  not know (see ip4-service and ip4-conntrack).

File format, version 1 (all integers big-endian in the framing; the columns are the machine's
own layout, which the header names and ``decode`` checks)::

    MAGIC                       b"VSWITCH-CONNECTIONS\\n"
    !HI                         version, length of the header
    header                      JSON: node, time (wall clock), final, slots, byteorder,
                                port_key (hex), labels [[id, {...}], ...],
                                affinity [[service, protocol, port, client, backend ip,
                                           backend port, seconds left, seconds since used], ...]
    columns                     for ``slots`` slots, each column whole, in ``COLUMNS`` order
    digest                      blake2b (16 bytes) of everything before it

A file that is truncated, altered, of another version or of another node is refused as a whole with
``SnapshotError``: the daemon then starts without it, never with half of it.
"""
from __future__ import annotations

import hashlib
import json
import struct
from array import array
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Sequence

from vswitch.tables.conntrack import ConntrackTable
from vswitch.tables.conntrack_entry import TUPLE_RECORD, make_tuple
from vswitch.tables.services import ServiceTable
from vswitch.tables.shared_slots import ConnectionSlots
from vswitch.tables.tcp_states import TcpState

MAGIC = b"VSWITCH-CONNECTIONS\n"
VERSION = 1
_FRAME = struct.Struct("!HI")
_DIGEST_SIZE = 16
_STATES = tuple(TcpState)
# The machine's byte order, which the columns are written in (the core reads no interpreter state).
_BYTEORDER = "little" if array("H", [1]).tobytes() == b"\x01\x00" else "big"

#: (array of ``ConnectionSlots``, item format, items per slot), in file order. ``expires``,
#: ``seen`` and ``created`` are written as seconds left, since last seen and since created.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("flags", "B", 1), ("state", "B", 1), ("nat", "B", 1), ("label", "I", 1),
    ("tuples", "B", ConnectionSlots.TUPLE_SIZE), ("packets", "Q", 2), ("bytes", "Q", 2),
    ("expires", "d", 1), ("seen", "d", 1), ("created", "d", 1))
_TIMES = ("expires", "seen", "created")


class SnapshotError(ValueError):
    """A snapshot that cannot be used; the message says why."""


@dataclass(frozen=True)
class Capture:
    """What ``capture`` copied from the tables: raw columns, on the tables' clock ``clock``."""

    clock: float
    slots: int
    columns: dict[str, bytes]
    labels: list[tuple[int, dict[str, Any]]]
    affinity: list[list[Any]]
    port_key: bytes


@dataclass(frozen=True)
class Snapshot:
    """A decoded file: times are relative (seconds left, idle, age) as of ``time``."""

    node: str
    time: float
    final: bool
    slots: int
    columns: dict[str, Any]  # name -> array
    labels: dict[int, dict[str, Any]]
    affinity: list[list[Any]]
    port_key: bytes


@dataclass(frozen=True)
class RestoreResult:
    restored: int
    expired: int
    dropped: int
    affinity_restored: int
    affinity_dropped: int
    #: One line per kind of dropped entry, with how many, for the log.
    reasons: dict[str, int]


def capture(table: ConntrackTable, services: ServiceTable, now: float) -> Capture:
    """Copy what a snapshot holds; cheap enough for the thread that forwards packets."""
    slots = table.slots
    high = slots.high_water()
    columns = {name: bytes(getattr(slots, name)[:high * per_slot])
               for name, _, per_slot in COLUMNS}
    affinity = [[key[0], key[1], key[2], str(IPv4Address(client)), str(IPv4Address(backend.ip)),
                 backend.port, left, idle]
                for key, client, backend, left, idle in services.affinity_entries(now)]
    return Capture(now, high, columns, table.label_sets(), affinity, table.port_key)


def encode(captured: Capture, node: str, wall_time: float, final: bool) -> bytes:
    """The file's bytes; pure computation over the copy, for a worker thread."""
    columns = dict(captured.columns)
    clock = captured.clock
    for name in _TIMES:
        values = array("d", columns[name])
        if name == "expires":
            values = array("d", [value - clock for value in values])
        else:
            values = array("d", [clock - value for value in values])
        columns[name] = values.tobytes()
    header = json.dumps({
        "node": node, "time": wall_time, "final": final, "slots": captured.slots,
        "byteorder": _BYTEORDER, "port_key": captured.port_key.hex(),
        "labels": captured.labels, "affinity": captured.affinity,
    }, default=str).encode()
    body = b"".join((MAGIC, _FRAME.pack(VERSION, len(header)), header,
                     *(columns[name] for name, _, _ in COLUMNS)))
    return body + hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest()


def decode(data: bytes, node: str) -> Snapshot:
    """The snapshot in ``data``, which must be a whole version-1 file of ``node``."""
    if not data.startswith(MAGIC):
        raise SnapshotError("not a vswitch connection snapshot")
    if len(data) < len(MAGIC) + _FRAME.size + _DIGEST_SIZE:
        raise SnapshotError("truncated")
    version, header_size = _FRAME.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise SnapshotError(f"version {version}, this vswitchd reads version {VERSION}")
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest() != digest:
        raise SnapshotError("truncated or damaged (its checksum does not match)")
    at = len(MAGIC) + _FRAME.size
    try:
        header = json.loads(body[at:at + header_size])
        if not isinstance(header, dict):
            raise TypeError("the header is not an object")
        found_node, slots = header["node"], header["slots"]
        time, final = float(header["time"]), bool(header["final"])
        port_key = bytes.fromhex(header["port_key"])
        labels = {int(label_id): dict(labels) for label_id, labels in header["labels"]}
        affinity = list(header["affinity"])
        byteorder = header["byteorder"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SnapshotError(f"bad header: {exc}") from exc
    if found_node != node:
        raise SnapshotError(f"written by node {found_node!r}, not {node!r}")
    if byteorder != _BYTEORDER:
        raise SnapshotError(f"written on a {byteorder}-endian machine")
    if not isinstance(slots, int) or slots < 0:
        raise SnapshotError(f"bad slot count {slots!r}")
    at += header_size
    columns = {}
    for name, fmt, per_slot in COLUMNS:
        values = array(fmt)
        size = values.itemsize * per_slot * slots
        if at + size > len(body):
            raise SnapshotError(f"truncated in column {name}")
        values.frombytes(body[at:at + size])
        columns[name] = values
        at += size
    if at != len(body):
        raise SnapshotError(f"{len(body) - at} bytes after the last column")
    return Snapshot(found_node, time, final, slots, columns, labels, affinity, port_key)


def restore(snapshot: Snapshot, table: ConntrackTable, services: ServiceTable,
            snat_addresses: Sequence[bytes], now: float, wall_now: float) -> RestoreResult:
    """Put the snapshot's connections and affinity entries into empty tables programmed with the
    current desired state, at ``now`` on the tables' clock, ``wall_now`` on the wall clock.
    ``snat_addresses`` are the addresses this node SNATs to now."""
    elapsed = max(0.0, wall_now - snapshot.time)
    table.port_key = snapshot.port_key
    columns = snapshot.columns
    flags, states, nat, label_ids = (columns[n] for n in ("flags", "state", "nat", "label"))
    tuples = columns["tuples"].tobytes()
    packets, octets = columns["packets"], columns["bytes"]
    expires_in, idle, age = columns["expires"], columns["seen"], columns["created"]
    allowed_snat = set(snat_addresses)
    restored = expired = 0
    reasons: dict[str, int] = {}
    for slot in range(snapshot.slots):
        bits = flags[slot]
        if not bits & ConnectionSlots.IN_TABLE:
            continue
        left = expires_in[slot] - elapsed
        if not left > 0:
            expired += 1
            continue
        proto, src, sport, dst, dport, dnat_ip, dnat_port, snat_ip, snat_port = \
            TUPLE_RECORD.unpack_from(tuples, slot * ConnectionSlots.TUPLE_SIZE)
        nat_bits = nat[slot]
        dnat = ((dnat_ip, dnat_port if nat_bits & ConnectionSlots.DNAT_PORT else None)
                if nat_bits & ConnectionSlots.DNAT else None)
        snat = ((snat_ip, snat_port if nat_bits & ConnectionSlots.SNAT_PORT else None)
                if nat_bits & ConnectionSlots.SNAT else None)
        why = _gone(proto, dst, dport, dnat, snat, services, allowed_snat)
        labels = snapshot.labels.get(label_ids[slot])
        if why is None and (labels is None or states[slot] >= len(_STATES)):
            why = "damaged entry"
        if why is None:
            entry = table.restore(
                make_tuple(proto, src, sport, dst, dport), now, dnat=dnat, snat=snat,
                labels=labels, state=_STATES[states[slot]],
                flags=bits & (ConnectionSlots.REPLIED | ConnectionSlots.ASSURED),
                simultaneous_open=bool(nat_bits & ConnectionSlots.SIMULTANEOUS_OPEN),
                expires=now + left, seen=now - idle[slot] - elapsed,
                created=now - age[slot] - elapsed,
                packets=(packets[2 * slot], packets[2 * slot + 1]),
                octets=(octets[2 * slot], octets[2 * slot + 1]))
            if entry is None:
                why = "clashes with another entry, or the table is full"
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            restored += 1
    dropped = sum(reasons.values())
    table.count_restore_losses(expired, dropped)
    table.generation += 1  # no cached decision from before the restart is valid
    pinned = unpinned = 0
    for row in snapshot.affinity:
        try:
            service, protocol, port, client, ip, backend_port, left, since = row
            left -= elapsed
            ok = left > 0 and services.restore_affinity(
                (str(service), str(protocol), int(port)), IPv4Address(client).packed,
                IPv4Address(ip).packed, int(backend_port), now + left, now - since - elapsed)
        except (TypeError, ValueError):
            ok = False
        pinned += ok
        unpinned += not ok
    return RestoreResult(restored, expired, dropped, pinned, unpinned, reasons)


def _gone(proto: int, dst: bytes, dport: int, dnat: Any, snat: Any, services: ServiceTable,
          allowed_snat: set[bytes]) -> str | None:
    """Why an entry's translation no longer holds, or None when it still does."""
    if dnat is not None:
        match = services.match(proto, dst, dport)
        if match is None:
            return "its service frontend is gone"
        if not any(b.ip == dnat[0] and (dnat[1] is None or b.port == dnat[1])
                   for b in match.backends):
            return "its backend is no longer a ready endpoint of the service"
    if snat is not None and snat[0] not in allowed_snat:
        return "its SNAT address is no longer the node's"
    return None

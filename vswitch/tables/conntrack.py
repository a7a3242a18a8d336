"""Connection tracking: every flow that passes a NAT decision, both directions of it, and its state.

Theory of operation
-------------------
* An entry holds two tuples. ``original`` is the flow as its client sent it, before any
  translation. ``reply`` is what the answer looks like when it reaches the switch: the translated
  original, reversed. Both tuples index the same entry, so one O(1) lookup of any packet's tuple
  says which connection it belongs to and in which direction it travels. A tuple belongs to at
  most one entry in either role, as in Linux's single hash of both directions; ``create`` refuses
  (and counts a *clash*) rather than let a second connection shadow the first.
* Translations are recorded as the original direction's rewrites: ``dnat`` (the endpoint chosen
  for a service) and ``snat`` (the node or hairpin address and port). The reply direction applies
  the inverse; this table only remembers, the pipeline rewrites.
* Time is passed in. An entry is dead from the moment ``now >= expires``: ``lookup`` no longer
  matches it and ``create`` may reuse its tuples at once, so correctness never waits for the
  timer. ``expire`` reclaims the memory; ``next_deadline`` tells the timer when to call it.
* Every accepted packet refreshes the entry with the timeout of its (new) state: TCP per state,
  UDP 30 s until the first reply and 120 s after it, ICMP echo 30 s, other protocols 600 s.
  Defaults are Linux's nf_conntrack values except ESTABLISHED, which is kube-proxy's 24 h rather
  than Linux's 5 days.
* TCP follows the transition table of Linux's ``nf_conntrack_proto_tcp.c`` (see ``tcp_states.py``,
  which also says what is left out). A packet whose cell is invalid, or whose flags the kernel
  rejects outright, gets INVALID and changes nothing: the caller drops and counts it. A packet
  whose cell the kernel ignores is accepted and counted (``ignored``) without changing the state
  or extending the timeout.
* Also as in Linux: a retransmitted SYN does not extend an unanswered entry (a client that keeps
  retrying must not keep a stale translation alive); a SYN from the client in TIME_WAIT or CLOSE
  (or from the server in TIME_WAIT, which then starts a connection of its own the other way)
  removes the entry and returns REOPEN, so that the packet is looked at again as the first of a
  new connection, exactly as the kernel's ``nf_ct_kill`` + ``NF_REPEAT`` does: a client that
  reuses its port gets a fresh endpoint choice (subject to affinity), never the old translation
  to an endpoint that may have stopped being ready since. A RST before any reply (the server
  refused, or the client gave up) ends the entry at once, counted as ``aborted``, instead of
  holding it in CLOSE. ASSURED is set when the handshake's last ACK completes an answered
  connection (UDP: at the first reply; ICMP: never).
* Known simplifications: UDP is extended to 120 s at the first reply, where kernels since 5.x
  wait until the stream has lasted 2 s. ICMP echo is keyed by identifier alone; the pipeline
  adds the kernel's distinction by type (a request only matches an entry's original direction, a
  reply only its reply direction).
* Two more ways in besides ``create``: ``pick_up`` tracks a connection from a mid-stream segment
  of its client (Linux's ``nf_conntrack_tcp_loose``: a forgotten connection goes on, unreplied
  and short-lived until its other side answers), and ``restore`` puts back a connection an
  earlier run saved, every field as it was (``conntrack_snapshot``). ``incomplete_until`` says
  until when the table may lack connections that exist (after a restart from a snapshot older
  than the end of the last run), which the pipeline needs to tell a backend's reply of a
  forgotten connection from traffic that was never translated.
* SNAT ports are chosen by ``allocate_port``: the client's own port when it is free, else the
  first free one of a scan that starts at a keyed hash of the flow (see ``nat_ports.py``).
* The table is bounded. When it is full, ``create`` first reclaims dead entries, then evicts the
  oldest *unreplied* entries, then the oldest whose handshake a RST ended before it completed
  (still in CLOSE; counted as evictions): a SYN flood or a scan can only push out its own kind,
  never a connection that was ever established. A SYN flood's SYN-ACKs are answered by its own
  kernel with RSTs, which would otherwise hold the table full for CLOSE's 10 s. When every entry has been answered, the new connection
  is refused and counted (``drops_full``); Linux's "table full, dropping packet" is the same
  outcome, but here it is visible in ``statistics`` and only after the cheap victims are gone.
* ``flush_endpoint`` removes every entry translated to an endpoint: when a backend goes away, a
  long-running UDP client with a fixed source port must be sent to a new backend at its next
  datagram, not black-holed until an idle timeout that its own traffic keeps renewing
  (kube-proxy's stale-UDP-conntrack bug).
* ``reply_pairs`` holds the (source, destination) address pair that the replies of each
  translated connection carry, counted: switched traffic between such a pair must go through
  conntrack (a backend answering a client of its own segment). ``generation`` grows when a pair
  appears, because cached decisions about traffic between that pair are then wrong.
* The table alone keeps its indexes (tuples, unreplied entries, reply pairs, deadlines, counts)
  right: every way an entry goes (expiry, eviction, reclaiming, reopening, flush, removal) passes
  through one ``_discard``, so nothing outside ever has to resync them.

Storage: no Python object per connection
----------------------------------------
A connection is a slot of ``ConnectionSlots``: flat arrays, one per field (clock, counters, state
and flags, which the C datapath shares; the original tuple's key and the translations, from
which the reply tuple follows; creation time; an interned label-set id), 92 bytes per slot,
paged in as slots are first used. ``Entry`` objects are views of a slot made on demand (see
``conntrack_entry``). Label sets are interned (``conntrack_labels``): a service's connections
share a few. The indexes cost little per connection too:

* tuples: ``accel.ExactTable`` (C, or its pure twin) maps each direction's 13-byte tuple key to
  ``slot * 2 + direction``, ~100 bytes per connection in C at the largest size. It starts with
  room for 4,096 connections and grows fourfold when full (re-inserting every connection), up
  to two keys per slot: its memory follows the connections, and a small table stays in a few
  pages instead of faulting in a new page of a large one at almost every insert. The price is
  a pause of the slow path at each growth (~0.4 s at the last, 65,536 connections);
* deadlines: ``SlotDeadlines``, an indexed heap of slot numbers in flat arrays (17 bytes per
  slot). Refreshing an entry that only moves its deadline later costs nothing; the slot is filed
  again when it reaches the top. Only a deadline that moves *earlier* (RST, FIN) is scheduled
  again, O(log n); removing an entry is O(1), its slot leaves the heap when it surfaces;
* unreplied entries, oldest first: a FIFO of (slot, incarnation) numbers, 8 bytes each, from which
  a reply or a removal is not taken out but skipped when eviction reaches it; it is compacted
  when skipped items outnumber the unreplied entries, so it stays within twice their number;
* reply pairs: one 8-byte key per distinct pair, not per connection;
* ``flush_endpoint`` has no index: it scans the DNAT addresses of every slot in use, with
  ``bytes.find`` over a copy of the tuple records (a few milliseconds for 262,144 connections),
  because an endpoint going away is rare next to connections coming and going;
* ``entries()`` and ``flush(predicate)`` walk the slots in use in slot order and make a view of
  each: O(table), for the control path.

This module is longer than the core's usual 400 lines: the table class alone is longer, and the
table that keeps its indexes consistent is one invariant ("a tuple belongs to at most one live
entry, and every index agrees"). What can be read alone lives apart: the entry view and the tuple
record in ``conntrack_entry.py``, the label sets in ``conntrack_labels.py``, the field arrays in
``shared_slots.py``, the slot deadline heap in ``deadlines.py``, the TCP state machine in
``tcp_states.py``, the port scan's hash in ``nat_ports.py``.
"""
from __future__ import annotations

import enum
import weakref
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vswitch.accel import pure as _pure
from vswitch.tables.conntrack_entry import (
    PROTO_NAMES,
    TUPLE_KEY,
    TUPLE_RECORD,
    Entry,
    FlowTuple,
    reply_key_of,
    reply_of,
)
from vswitch.tables.conntrack_labels import LabelSets
from vswitch.tables.deadlines import SlotDeadlines
from vswitch.tables.shared_slots import ConnectionSlots
from vswitch.tables.nat_ports import scan_key, scan_start
from vswitch.tables.tcp_states import (
    ACK,
    ACK_CLASS,
    CLASS_OF_FLAGS,
    CLASSIFIED,
    FIN,
    IGNORE,
    RST,
    RST_CLASS,
    SYN,
    SYN_CLASS,
    TIMEOUT_FIELD,
    TRANSITIONS,
    TcpState,
)
from vswitch.wire.headers import IpProto

_TCP = int(IpProto.TCP)
_UDP = int(IpProto.UDP)
_ICMP = int(IpProto.ICMP)

_IN_TABLE = ConnectionSlots.IN_TABLE
_REPLIED = ConnectionSlots.REPLIED
_ASSURED = ConnectionSlots.ASSURED
_KEY_SIZE = ConnectionSlots.KEY_SIZE
_TUPLE_SIZE = ConnectionSlots.TUPLE_SIZE
_DNAT_IP = _KEY_SIZE  # offset of the DNAT address in a tuple record
_DNAT, _DNAT_PORT = ConnectionSlots.DNAT, ConnectionSlots.DNAT_PORT
_SNAT, _SNAT_PORT = ConnectionSlots.SNAT, ConnectionSlots.SNAT_PORT
_NO_ADDRESS = bytes(4)
_VIEWS_PURGE_MIN = 1024
_INDEX_INITIAL = 8192  # tuple keys the index holds before its first growth
_STATES = tuple(TcpState)
_CLOSE = TcpState.CLOSE.value


class Direction(enum.Enum):
    ORIGINAL = 0
    REPLY = 1


_DIRECTIONS = (Direction.ORIGINAL, Direction.REPLY)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    INVALID = "invalid"
    #: The packet opens a new connection on the tuple of a closed one: the old entry is gone and
    #: the packet must be looked at as the first of a new connection (a new endpoint choice).
    REOPEN = "reopen"


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Linux nf_conntrack defaults, except ``established`` (kube-proxy sets 24 h)."""

    syn_sent: float = 120.0
    syn_recv: float = 60.0
    established: float = 86400.0
    fin_wait: float = 120.0
    close_wait: float = 60.0
    last_ack: float = 30.0
    time_wait: float = 120.0
    close: float = 10.0
    udp_unreplied: float = 30.0
    udp_replied: float = 120.0
    icmp: float = 30.0
    syn_sent2: float = 120.0
    generic: float = 600.0  # any other IP protocol (nf_conntrack_generic_timeout)

    def tcp(self, state: TcpState) -> float:
        return getattr(self, TIMEOUT_FIELD[state])


class ReplyPairs(Mapping[tuple[bytes, bytes], int]):
    """(reply source, reply destination) -> count, read-only, over a dict keyed by the two
    addresses as one 8-byte string (a third of the memory of a pair of bytes per key)."""

    __slots__ = ("_counts",)

    def __init__(self, counts: dict[bytes, int]):
        self._counts = counts

    def __contains__(self, pair: object) -> bool:
        try:
            return pair[0] + pair[1] in self._counts  # type: ignore[index]
        except (TypeError, IndexError):
            return False

    def __getitem__(self, pair: tuple[bytes, bytes]) -> int:
        return self._counts[pair[0] + pair[1]]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return ((key[:4], key[4:]) for key in list(self._counts))

    def __len__(self) -> int:
        return len(self._counts)


# -- the table -----------------------------------------------------------------------------------

class ConntrackTable:
    def __init__(self, max_entries: int = 262144, timeouts: Timeouts = Timeouts(), *,
                 port_salt: int = 0, accel: ModuleType = _pure):
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, not {max_entries}")
        self.max_entries = max_entries
        self.timeouts = timeouts
        # Indexed by TcpState.value: the per-packet path avoids an attribute lookup by name.
        self._tcp_timeout = tuple(timeouts.tcp(state) for state in TcpState)
        self._established_timeout = timeouts.established
        # Every field of every connection; the C datapath shares the first six arrays.
        self.slots = ConnectionSlots(max_entries)
        self._size = 0
        # Both directions' tuple keys -> slot * 2 + direction; starts small and grows (see
        # _grow_index), so that its memory follows the connections tracked.
        self._accel = accel
        self._index = accel.ExactTable(_KEY_SIZE, min(2 * max_entries, _INDEX_INITIAL))
        # Slot -> a weak reference to its live view, if one was made (see conntrack_entry).
        # References whose view has died are purged when the dict has doubled since the last
        # purge, so it stays within about twice the views held anywhere.
        self._views: dict[int, weakref.ref[Entry]] = {}
        self._views_purge_at = _VIEWS_PURGE_MIN
        self._labels = LabelSets()
        # (slot << 32 | incarnation) of entries created unreplied, oldest first, from
        # _unreplied_head on; replied and removed ones are skipped when eviction meets them.
        self._unreplied_fifo = array("Q")
        self._unreplied_head = 0
        self._unreplied = 0
        # (slot << 32 | incarnation) of entries a RST closed before their handshake completed,
        # oldest first: evicted once no unreplied entry is left (see ``_oldest_aborted``).
        self._aborted_fifo = array("Q")
        self._aborted_head = 0
        # Reply source + reply destination (8 bytes) of translated entries -> how many entries
        # carry it; ``reply_pairs`` shows it as (source, destination) pairs.
        self._reply_pairs: dict[bytes, int] = {}
        self._reply_pairs_view = ReplyPairs(self._reply_pairs)
        self.generation = 0
        self._deadlines = SlotDeadlines(max_entries, self.slots.expires)
        # Secret key of the hash that starts a port scan (see nat_ports.py). The caller draws it
        # from its seeded source: the daemon's seed is random, a test's is fixed and reproducible.
        self.port_key = scan_key(port_salt)
        # Until this time (on the caller's clock) the table may lack connections that exist: the
        # daemon restarted from a snapshot older than its end (see ``conntrack_snapshot``).
        self.incomplete_until = 0.0
        self._tcp_states: dict[TcpState, int] = {state: 0 for state in TcpState}
        self._protocols: dict[int, int] = {}
        self._counts = {name: 0 for name in (
            "created", "expired", "evictions", "drops_full", "clashes", "invalid", "ignored",
            "reopened", "aborted", "flushed", "removed", "reclaimed", "picked_up", "restored",
            "restore_expired", "restore_dropped")}

    def __len__(self) -> int:
        return self._size

    @property
    def reply_pairs(self) -> Mapping[tuple[bytes, bytes], int]:
        """The address pairs replies of translated connections carry; read-only for callers."""
        return self._reply_pairs_view

    def label_sets(self) -> list[tuple[int, dict[str, Any]]]:
        """The label sets in use, by the ids ``slots.label`` holds."""
        return self._labels.sets()

    def count_restore_losses(self, expired: int, dropped: int) -> None:
        """Saved connections a restart did not restore: their time ran out while the daemon was
        down, or what they were translated to is gone (counted in ``statistics``)."""
        self._counts["restore_expired"] += expired
        self._counts["restore_dropped"] += dropped

    def labels_of(self, slot: int) -> dict[str, Any]:
        """The (shared, read-only) labels of the connection in ``slot``."""
        return self._labels.get(self.slots.label[slot])

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(self, t: FlowTuple, now: float) -> tuple[Entry, Direction] | None:
        found = self._index.lookup(TUPLE_KEY.pack(t.proto, t.src, t.sport, t.dst, t.dport))
        if found is None:
            return None
        slot = found >> 1
        if not now < self.slots.expires[slot]:
            return None
        return self._view(slot), _DIRECTIONS[found & 1]

    def _holder(self, t: FlowTuple) -> int | None:
        """The slot of the entry that holds ``t`` in either direction, dead or alive."""
        found = self._index.lookup(TUPLE_KEY.pack(t.proto, t.src, t.sport, t.dst, t.dport))
        return None if found is None else found >> 1

    def _view(self, slot: int) -> Entry:
        ref = self._views.get(slot)
        if ref is not None:
            view = ref()
            if view is not None:
                return view
        view = Entry.view(self, slot, self.slots.incarnation[slot])
        self._remember(slot, view)
        return view

    def _remember(self, slot: int, view: Entry) -> None:
        views = self._views
        views[slot] = weakref.ref(view)
        if len(views) >= self._views_purge_at:
            for dead in [s for s, ref in views.items() if ref() is None]:
                del views[dead]
            self._views_purge_at = max(_VIEWS_PURGE_MIN, 2 * len(views))

    def _slots_in_use(self) -> list[int]:
        flags = self.slots.flags
        return [slot for slot in range(self.slots.high_water()) if flags[slot] & _IN_TABLE]

    def entries(self) -> list[Entry]:
        """A view of every entry, in slot order."""
        return [self._view(slot) for slot in self._slots_in_use()]

    # -- creation --------------------------------------------------------------------------------

    @staticmethod
    def new_tcp_allowed(flags: int) -> bool:
        """Only a bare SYN starts a TCP connection in the usual way. A segment of the ACK class
        may still be picked up mid-stream towards a service frontend (``pick_up``); anything else
        without an entry is dropped, never forwarded with an unknown translation."""
        return flags & (SYN | ACK | RST | FIN) == SYN

    @staticmethod
    def loose_pickup_allowed(flags: int) -> bool:
        """Whether a TCP segment of no tracked connection may open an ESTABLISHED entry, as
        Linux's ``nf_conntrack_tcp_loose`` allows: only the ACK class (no SYN, FIN or RST), the
        one whose cell from state NONE is ESTABLISHED in the kernel's table."""
        return CLASS_OF_FLAGS.get(flags & CLASSIFIED) == ACK_CLASS

    @staticmethod
    def reopens(entry: Entry, direction: Direction, tcp_flags: int | None) -> bool:
        """Whether ``update`` would answer REOPEN for this packet; changes nothing, so that a
        dry-run trace can tell the truth about a SYN on the tuple of a closed connection."""
        if entry.original.proto != _TCP or tcp_flags is None:
            return False
        cls = CLASS_OF_FLAGS.get(tcp_flags & CLASSIFIED)
        return (cls is not None and entry.tcp_state in (TcpState.TIME_WAIT, TcpState.CLOSE)
                and TRANSITIONS[direction.value][cls][entry.tcp_state.value] is TcpState.SYN_SENT)

    @staticmethod
    def reply_tuple(original: FlowTuple, dnat: tuple[bytes, int] | None = None,
                    snat: tuple[bytes, int] | None = None) -> FlowTuple:
        """The tuple a reply arrives with: the original after translation, reversed. For ICMP
        echo the identifier is one field in both directions, so only ``snat`` may change it."""
        return reply_of(original, dnat, snat)

    def create(self, original: FlowTuple, now: float, *, dnat: tuple[bytes, int] | None = None,
               snat: tuple[bytes, int] | None = None,
               labels: dict[str, Any] | None = None) -> Entry | None:
        """Track a new connection. The packet that caused it is not counted: call ``update`` for
        it as for every other packet (for TCP, its SYN leaves the state at SYN_SENT).

        Returns None when the connection cannot be tracked: its original or reply tuple belongs to
        a live entry (a clash), or the table is full of answered connections.

        Creating may remove other entries, which the caller never sees: evicted ones (counted in
        ``evictions``) and dead ones whose tuples or room it takes (counted in ``reclaimed``, and
        in ``expired``)."""
        return self._create(original, now, dnat, snat, labels, "created")

    def pick_up(self, original: FlowTuple, now: float, *, dnat: tuple[bytes, int] | None = None,
                snat: tuple[bytes, int] | None = None, labels: dict[str, Any] | None = None,
                length: int = 0) -> Entry | None:
        """Track a TCP connection from a mid-stream segment of its client (Linux's
        ``nf_conntrack_tcp_loose``; see ``loose_pickup_allowed``): the entry starts ESTABLISHED
        with the segment counted, but unreplied, so that it lasts ``syn_recv`` seconds until the
        other side answers (a stray ACK must not hold a translation for a day) and is among the
        first evicted. Its first reply makes it replied and ESTABLISHED's timeout applies; the
        segment after that makes it assured, as after a handshake."""
        entry = self._create(original, now, dnat, snat, labels, "picked_up")
        if entry is None:
            return None
        self._tcp_states[TcpState.SYN_SENT] -= 1
        self._tcp_states[TcpState.ESTABLISHED] += 1
        entry.tcp_state = TcpState.ESTABLISHED
        self._count(entry, 0, now, length)
        self._set_expires(entry, now + self.timeouts.syn_recv)
        return entry

    def restore(self, original: FlowTuple, now: float, *, dnat: tuple[bytes, int] | None,
                snat: tuple[bytes, int] | None, labels: dict[str, Any], state: TcpState,
                flags: int, simultaneous_open: bool, expires: float, seen: float,
                created: float, packets: tuple[int, int], octets: tuple[int, int]
                ) -> Entry | None:
        """Track a connection saved by an earlier run, with every field as it was (times on
        this run's clock); ``flags`` are its REPLIED and ASSURED bits. None as for ``create``."""
        entry = self._create(original, now, dnat, snat, labels, "restored")
        if entry is None:
            return None
        if original.proto == _TCP:
            self._tcp_states[TcpState.SYN_SENT] -= 1
            self._tcp_states[state] += 1
            entry.tcp_state = state
        if flags & _REPLIED:
            self._mark_replied(entry)
        entry.assured = bool(flags & ConnectionSlots.ASSURED)
        entry._simultaneous_open = simultaneous_open
        slot = entry.slot
        slots = self.slots
        slots.packets[2 * slot], slots.packets[2 * slot + 1] = packets
        slots.bytes[2 * slot], slots.bytes[2 * slot + 1] = octets
        slots.seen[slot], slots.created[slot] = seen, created
        self._set_expires(entry, expires)
        return entry

    def _create(self, original: FlowTuple, now: float, dnat: tuple[bytes, int] | None,
                snat: tuple[bytes, int] | None, labels: dict[str, Any] | None,
                counter: str) -> Entry | None:
        reply = reply_of(original, dnat, snat)
        proto = original.proto
        original_key = TUPLE_KEY.pack(proto, original.src, original.sport, original.dst,
                                      original.dport)
        reply_key = TUPLE_KEY.pack(proto, reply.src, reply.sport, reply.dst, reply.dport)
        index = self._index
        expires = self.slots.expires
        for key in (original_key, reply_key):
            found = index.lookup(key)
            if found is None:
                continue
            holder = found >> 1
            if now >= expires[holder]:
                self._discard(holder)
                self._counts["expired"] += 1
                self._counts["reclaimed"] += 1
            else:
                self._counts["clashes"] += 1
                return None
        if self._size >= self.max_entries:
            self._counts["reclaimed"] += len(self.expire(now))
            while self._size >= self.max_entries:
                victim = self._oldest_unreplied()
                if victim is None:
                    victim = self._oldest_aborted()
                if victim is None:
                    self._counts["drops_full"] += 1
                    return None
                self._discard(victim)
                self._counts["evictions"] += 1

        if proto == _TCP:
            state = TcpState.SYN_SENT
            timeout = self.timeouts.syn_sent
        elif proto == _UDP:
            state = TcpState.NONE
            timeout = self.timeouts.udp_unreplied
        elif proto == _ICMP:
            state = TcpState.NONE
            timeout = self.timeouts.icmp
        else:
            state = TcpState.NONE
            timeout = self.timeouts.generic
        slots = self.slots
        slot = slots.take()  # never -1: the table holds fewer than max_entries entries now
        bits = 0
        dnat_ip, dnat_port, snat_ip, snat_port = _NO_ADDRESS, 0, _NO_ADDRESS, 0
        if dnat is not None:
            bits |= _DNAT
            dnat_ip = dnat[0]
            if dnat[1] is not None:
                bits |= _DNAT_PORT
                dnat_port = dnat[1]
        if snat is not None:
            bits |= _SNAT
            snat_ip = snat[0]
            if snat[1] is not None:
                bits |= _SNAT_PORT
                snat_port = snat[1]
        TUPLE_RECORD.pack_into(slots.tuples, slot * _TUPLE_SIZE,
                               proto, original.src, original.sport, original.dst, original.dport,
                               dnat_ip, dnat_port, snat_ip, snat_port)
        slots.nat[slot] = bits
        expires[slot] = now + timeout
        slots.seen[slot] = slots.created[slot] = now
        slots.packets[2 * slot] = slots.packets[2 * slot + 1] = 0
        slots.bytes[2 * slot] = slots.bytes[2 * slot + 1] = 0
        slots.state[slot] = state.value
        slots.flags[slot] = _IN_TABLE
        slots.label[slot] = self._labels.intern(labels if labels is not None else {})
        if 2 * self._size + 2 > index.capacity:
            index = self._grow_index()
        # Reply first: a connection whose two tuples are one (a host talking to its own port)
        # is then found in its original direction, as it always was.
        index.insert(reply_key, 2 * slot + 1)
        index.insert(original_key, 2 * slot)
        self._size += 1
        self._unreplied_fifo.append(slot << 32 | slots.incarnation[slot])
        self._unreplied += 1
        self._bound_unreplied()
        if dnat is not None or snat is not None:
            pair = reply.src + reply.dst
            count = self._reply_pairs.get(pair, 0)
            if not count:
                self.generation += 1  # cached decisions about this pair may now be wrong
            self._reply_pairs[pair] = count + 1
        if proto == _TCP:
            self._tcp_states[state] += 1
        self._protocols[proto] = self._protocols.get(proto, 0) + 1
        self._deadlines.schedule(slot, now + timeout)
        self._counts[counter] += 1
        # A fresh slot has no view yet; this one starts with what it would unpack.
        view = Entry.view(self, slot, slots.incarnation[slot], original, reply, (dnat, snat))
        self._remember(slot, view)
        return view

    def allocate_port(self, proto: int, src_ip: bytes, remote_ip: bytes, remote_port: int,
                      preferred: int, low: int = 1024, high: int = 65535, *,
                      now: float | None = None) -> int | None:
        """A source port (for ICMP echo: an identifier) to SNAT a connection to ``src_ip``, such
        that its reply tuple (remote -> src_ip:port) belongs to no entry. The client's own port is
        kept when it is free and in range, as Linux does; otherwise the scan starts at a salted
        hash of the flow, so that colliding clients do not all probe the same ports. With ``now``,
        ports held by dead entries count as free (``create`` reclaims them). Create the entry
        before allocating again: until then the port is not reserved."""
        if not 0 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")

        def free(port: int) -> bool:
            if proto == _ICMP:
                t = FlowTuple(proto, remote_ip, port, src_ip, port)
            else:
                t = FlowTuple(proto, remote_ip, remote_port, src_ip, port)
            holder = self._holder(t)
            return holder is None or (now is not None and now >= self.slots.expires[holder])

        if low <= preferred <= high and free(preferred):
            return preferred
        span = high - low + 1
        start = scan_start(self.port_key, proto, src_ip, remote_ip, remote_port, preferred, span)
        for i in range(span):
            port = low + (start + i) % span
            if free(port):
                return port
        return None

    # -- packets ---------------------------------------------------------------------------------

    def update(self, entry: Entry, direction: Direction, now: float, tcp_flags: int | None = None,
               length: int = 0) -> Verdict:
        """Account one packet of ``entry`` travelling in ``direction``; for TCP, ``tcp_flags`` is
        the header's flags byte and decides the state transition. INVALID means: drop the packet;
        nothing about the entry has changed."""
        if not entry._in_table:
            self._counts["invalid"] += 1
            return Verdict.INVALID
        # ``_value_`` is the member's value as a plain attribute: ``.value`` is a Python-level
        # property call, paid on every packet of every connection.
        d = direction._value_
        proto = entry.original.proto
        if proto != _TCP:
            if d == 1 and not entry.replied:
                self._mark_replied(entry)
                if proto != _ICMP:
                    entry.assured = True
            if proto == _UDP:
                timeout = self.timeouts.udp_replied if entry.replied else self.timeouts.udp_unreplied
            elif proto == _ICMP:
                timeout = self.timeouts.icmp
            else:
                timeout = self.timeouts.generic
            self._count(entry, d, now, length)
            self._set_expires(entry, now + timeout)
            return Verdict.ACCEPT

        if tcp_flags is None:
            raise ValueError("a TCP packet needs its flags to be tracked")
        cls = CLASS_OF_FLAGS.get(tcp_flags & CLASSIFIED)
        if cls is None:
            self._counts["invalid"] += 1
            return Verdict.INVALID
        old = entry.tcp_state
        new = TRANSITIONS[d][cls][old._value_]
        if new is old is TcpState.ESTABLISHED and entry.assured:
            # The common case, a segment of an established connection: only the clock moves.
            entry.packets[d] += 1
            entry.bytes[d] += length
            entry.last_seen = now
            expires = now + self._established_timeout
            if expires < entry.expires:
                self._set_expires(entry, expires)
            else:
                entry.expires = expires
            return Verdict.ACCEPT
        if new is None:
            self._counts["invalid"] += 1
            return Verdict.INVALID
        if new is IGNORE:
            self._counts["ignored"] += 1
            if d == 1 and not entry.replied:
                self._mark_replied(entry)
            self._count(entry, d, now, length)
            return Verdict.ACCEPT
        assert isinstance(new, TcpState)

        if new is TcpState.SYN_SENT and old in (TcpState.TIME_WAIT, TcpState.CLOSE):
            # Either side opening a new connection on the closed one's ports (the table allows
            # the server's side only from TIME_WAIT): the entry goes, and the caller treats the
            # SYN as the first packet of whatever connection it now starts.
            self._discard(entry.slot)
            self._counts["reopened"] += 1
            return Verdict.REOPEN

        if new is TcpState.SYN_SENT2:
            entry._simultaneous_open = True
        elif (new is TcpState.SYN_RECV and d == 1 and cls == ACK_CLASS
              and entry._simultaneous_open):
            # Both sides sent SYN and SYN-ACK; the table alone cannot tell that this ACK
            # completes it.
            new = TcpState.ESTABLISHED

        was_replied = entry.replied
        if (was_replied and not entry.assured and new is TcpState.ESTABLISHED
                and old in (TcpState.SYN_RECV, TcpState.ESTABLISHED)):
            entry.assured = True
        if d == 1 and not was_replied:
            self._mark_replied(entry)
        if new is not old:
            self._tcp_states[old] -= 1
            self._tcp_states[new] += 1
            entry.tcp_state = new
        self._count(entry, d, now, length)
        if d == 0 and not was_replied and cls == SYN_CLASS and old is TcpState.SYN_SENT:
            # A retransmitted SYN must not keep an unanswered translation alive indefinitely.
            return Verdict.ACCEPT
        if cls == RST_CLASS and not was_replied:
            # As the kernel: a connection whose only answer is a RST, or that its client aborts
            # before any answer, never existed; its entry dies now (the RST itself is still
            # translated by the caller) and the tuple is free for the client's next attempt.
            self._counts["aborted"] += 1
            self._set_expires(entry, now)
            return Verdict.ACCEPT
        if cls == RST_CLASS and not entry.assured:
            # Answered, but the handshake never completed: CLOSE for its timeout, as in Linux,
            # yet evictable, as Linux's early drop takes it (a SYN flood's own kernel resets
            # every SYN-ACK; such entries must not fill the table for everyone).
            self._aborted_fifo.append(entry.slot << 32 | self.slots.incarnation[entry.slot])
            if len(self._aborted_fifo) - self._aborted_head > self.max_entries + 64:
                self._compact_aborted()
        # A RST always leads to CLOSE, so its short timeout is CLOSE's.
        self._set_expires(entry, now + self._tcp_timeout[new._value_])
        return Verdict.ACCEPT

    def _count(self, entry: Entry, d: int, now: float, length: int) -> None:
        entry.packets[d] += 1
        entry.bytes[d] += length
        entry.last_seen = now

    def _mark_replied(self, entry: Entry) -> None:
        entry.replied = True
        self._unreplied -= 1  # its FIFO item is skipped when eviction reaches it
        self._bound_unreplied()

    # -- removal and time ------------------------------------------------------------------------

    def remove(self, entry: Entry) -> None:
        if entry._in_table:
            self._discard(entry.slot)
            self._counts["removed"] += 1

    def expire(self, now: float) -> list[Entry]:
        """Remove and return every entry whose deadline has come (``now >= expires``)."""
        gone = [self._view(slot) for slot in self._deadlines.pop_due(now)]
        for entry in gone:
            self._discard(entry.slot)
        self._counts["expired"] += len(gone)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest ``expires`` of any entry in the table, or None when it is empty."""
        return self._deadlines.next_deadline()

    def flush(self, predicate: Callable[[Entry], bool] | None = None) -> int:
        victims = self.entries()
        if predicate is not None:
            victims = [e for e in victims if predicate(e)]
        for entry in victims:
            self._discard(entry.slot)
        self._counts["flushed"] += len(victims)
        return len(victims)

    def flush_endpoint(self, ip: bytes, port: int | None = None, proto: int | None = None,
                       where: Callable[[Entry], bool] | None = None) -> int:
        """Remove the entries translated to endpoint ``ip`` (optionally only its ``port`` and
        ``proto``, and only those ``where`` accepts), so that the flows they carried pick a live
        endpoint at their next packet. Costs a scan of the slots' DNAT addresses in C
        (``bytes.find``) and Python work for the endpoint's entries only."""
        slots = self.slots
        records = slots.tuples[:slots.high_water() * _TUPLE_SIZE].tobytes()
        flags, nat = slots.flags, slots.nat
        victims = []
        at = records.find(ip, _DNAT_IP)
        while at >= 0:
            slot, offset = divmod(at, _TUPLE_SIZE)
            if offset == _DNAT_IP and flags[slot] & _IN_TABLE and nat[slot] & _DNAT:
                entry = self._view(slot)
                if ((port is None or entry.dnat[1] == port)
                        and (proto is None or entry.original.proto == proto)
                        and (where is None or where(entry))):
                    victims.append(entry)
            at = records.find(ip, at + 1)
        for entry in victims:
            self._discard(entry.slot)
        self._counts["flushed"] += len(victims)
        return len(victims)

    def statistics(self) -> dict[str, Any]:
        """A snapshot: counters since start, and what the table holds now."""
        return {
            "entries": self._size,
            "max": self.max_entries,
            **self._counts,
            "unreplied": self._unreplied,
            "tcp_states": {state.name: n for state, n in self._tcp_states.items()
                           if state is not TcpState.NONE},
            "protocols": {PROTO_NAMES.get(p, str(p)): n for p, n in self._protocols.items() if n},
        }

    # -- bookkeeping -----------------------------------------------------------------------------

    def _discard(self, slot: int) -> None:
        slots = self.slots
        records, at = slots.tuples, slot * _TUPLE_SIZE
        reply_key, bits = reply_key_of(slots, slot)
        self._index.delete(bytes(records[at:at + _KEY_SIZE]))
        self._index.delete(reply_key)
        self._deadlines.discard(slot)
        if not slots.flags[slot] & _REPLIED:
            self._unreplied -= 1
            self._bound_unreplied()
        if bits & (_DNAT | _SNAT):
            pair = reply_key[1:5] + reply_key[7:11]
            count = self._reply_pairs.get(pair, 0)
            if count <= 1:
                self._reply_pairs.pop(pair, None)
            else:
                self._reply_pairs[pair] = count - 1
        proto = records[at]
        if proto == _TCP:
            self._tcp_states[_STATES[slots.state[slot]]] -= 1
        self._protocols[proto] -= 1
        slots.flags[slot] &= ~_IN_TABLE
        ref = self._views.pop(slot, None)
        view = ref() if ref is not None else None
        if view is not None:
            view._snapshot()  # whoever holds it keeps this connection's last values
        self._labels.release(slots.label[slot])
        self._size -= 1
        slots.release(slot)

    def _grow_index(self) -> Any:
        """Move the tuple index to one four times larger (at most two keys per slot): each
        growth re-inserts every connection, O(table), so the whole cost is O(1) per
        connection, paid in three pauses of the slow path on the way to 262,144 connections
        (the last, at 65,536, takes ~0.4 s of CPU; the C datapath keeps forwarding meanwhile)."""
        index = self._accel.ExactTable(
            _KEY_SIZE, min(2 * self.max_entries, 4 * self._index.capacity))
        records = self.slots.tuples
        for slot in self._slots_in_use():
            at = slot * _TUPLE_SIZE
            index.insert(reply_key_of(self.slots, slot)[0], 2 * slot + 1)
            index.insert(bytes(records[at:at + _KEY_SIZE]), 2 * slot)
        self._index = index
        return index

    def _oldest_unreplied(self) -> int | None:
        """The slot of the oldest entry that has not seen a reply, or None when there is none."""
        fifo, slots = self._unreplied_fifo, self.slots
        flags, incarnation = slots.flags, slots.incarnation
        head = self._unreplied_head
        found = None
        while head < len(fifo):
            item = fifo[head]
            head += 1
            slot = item >> 32
            if (incarnation[slot] == item & 0xFFFFFFFF
                    and flags[slot] & (_IN_TABLE | _REPLIED) == _IN_TABLE):
                found = slot
                break
        self._unreplied_head = head
        return found

    def _is_aborted(self, item: int) -> bool:
        slot = item >> 32
        slots = self.slots
        return (slots.incarnation[slot] == item & 0xFFFFFFFF
                and slots.flags[slot] & (_IN_TABLE | _ASSURED) == _IN_TABLE
                and slots.state[slot] == _CLOSE)

    def _oldest_aborted(self) -> int | None:
        """The slot of the oldest entry still in CLOSE that a RST closed before its handshake
        completed, or None."""
        fifo, head = self._aborted_fifo, self._aborted_head
        found = None
        while head < len(fifo):
            item = fifo[head]
            head += 1
            if self._is_aborted(item):
                found = item >> 32
                break
        self._aborted_head = head
        return found

    def _compact_aborted(self) -> None:
        """Drop the items of entries that have gone (or reopened): the FIFO stays within the
        table's size, since a live slot is in it at most once per incarnation."""
        self._aborted_fifo = array("Q", (item for item in self._aborted_fifo[self._aborted_head:]
                                         if self._is_aborted(item)))
        self._aborted_head = 0

    def _bound_unreplied(self) -> None:
        if len(self._unreplied_fifo) - self._unreplied_head > 2 * self._unreplied + 64:
            self._compact_unreplied()

    def _compact_unreplied(self) -> None:
        """Drop the FIFO's items of entries that have been answered or have gone."""
        slots = self.slots
        flags, incarnation = slots.flags, slots.incarnation
        self._unreplied_fifo = array("Q", (
            item for item in self._unreplied_fifo[self._unreplied_head:]
            if incarnation[item >> 32] == item & 0xFFFFFFFF
            and flags[item >> 32] & (_IN_TABLE | _REPLIED) == _IN_TABLE))
        self._unreplied_head = 0

    def _set_expires(self, entry: Entry, expires: float) -> None:
        # A later deadline needs nothing from the heap (the slot is filed again at the top).
        earlier = expires < entry.expires
        entry.expires = expires
        if earlier:
            self._deadlines.schedule(entry.slot, expires)

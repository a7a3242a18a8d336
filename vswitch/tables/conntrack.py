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
* SNAT ports are chosen by ``allocate_port``: the client's own port when it is free, else the
  first free one of a scan that starts at a keyed hash of the flow (see ``nat_ports.py``).
* The table is bounded. When it is full, ``create`` first reclaims dead entries, then evicts the
  oldest *unreplied* entries (counted as evictions): a SYN flood or a scan can only push out its
  own kind, never an answered connection. When every entry has been answered, the new connection
  is refused and counted (``drops_full``); Linux's "table full, dropping packet" is the same
  outcome, but here it is visible in ``statistics`` and only after the cheap victims are gone.
* ``flush_endpoint`` removes every entry translated to an endpoint, through an index by endpoint
  address: when a backend goes away, a long-running UDP client with a fixed source port must be
  sent to a new backend at its next datagram, not black-holed until an idle timeout that its own
  traffic keeps renewing (kube-proxy's stale-UDP-conntrack bug).
* ``reply_pairs`` holds the (source, destination) address pair that the replies of each
  translated connection carry, counted: switched traffic between such a pair must go through
  conntrack (a backend answering a client of its own segment). ``generation`` grows when a pair
  appears, because cached decisions about traffic between that pair are then wrong.
* The table alone keeps its indexes (tuples, unreplied entries, endpoints, reply pairs, deadlines)
  right: every way an entry goes (expiry, eviction, reclaiming, reopening, flush, removal) passes
  through one ``_discard``, so nothing outside ever has to resync them.

Deadlines are kept in a ``DeadlineHeap`` (lazy deletion): refreshing an entry that only moves its
deadline later costs nothing, the heap item is moved when it reaches the top. Only a deadline
that moves *earlier* (RST, FIN) is scheduled again.

This module is longer than the core's usual 400 lines: the table class alone is about that long,
and the entry and the table that keeps its indexes consistent are one invariant ("a tuple belongs
to at most one live entry, and every index agrees"), each read beside the other when that is in
question. What can be read alone lives apart: the TCP state machine in ``tcp_states.py``, the
port scan's hash in ``nat_ports.py``.
"""
from __future__ import annotations

import enum
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vswitch.tables.conntrack_entry import PROTO_NAMES, Entry
from vswitch.tables.deadlines import DeadlineHeap
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
from vswitch.wire.addresses import ip_text
from vswitch.wire.headers import IpProto

_TCP = int(IpProto.TCP)
_UDP = int(IpProto.UDP)
_ICMP = int(IpProto.ICMP)



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


class Direction(enum.Enum):
    ORIGINAL = 0
    REPLY = 1


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


# -- the table -----------------------------------------------------------------------------------

class ConntrackTable:
    def __init__(self, max_entries: int = 262144, timeouts: Timeouts = Timeouts(), *,
                 port_salt: int = 0):
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, not {max_entries}")
        self.max_entries = max_entries
        self.timeouts = timeouts
        # Indexed by TcpState.value: the per-packet path avoids an attribute lookup by name.
        self._tcp_timeout = tuple(timeouts.tcp(state) for state in TcpState)
        self._established_timeout = timeouts.established
        # The fields a cache hit changes, shared with the C datapath (``conntrack_entry``).
        self.slots = ConnectionSlots(max_entries)
        self._by_original: dict[FlowTuple, Entry] = {}
        self._by_reply: dict[FlowTuple, Entry] = {}
        # Entries that have not seen a reply, oldest first: the eviction candidates.
        self._unreplied: OrderedDict[Entry, None] = OrderedDict()
        # Entries by the address of their DNAT target, for flush_endpoint. Dicts, not sets, so
        # that a flush removes entries in an order that does not depend on memory addresses.
        self._by_endpoint: dict[bytes, dict[Entry, None]] = {}
        # (reply source, reply destination) of translated entries -> how many entries carry it.
        self._reply_pairs: dict[tuple[bytes, bytes], int] = {}
        self.generation = 0
        self._deadlines: DeadlineHeap[Entry] = DeadlineHeap(operator.attrgetter("expires"))
        # Secret key of the hash that starts a port scan (see nat_ports.py). The caller draws it
        # from its seeded source: the daemon's seed is random, a test's is fixed and reproducible.
        self._port_key = scan_key(port_salt)
        self._tcp_states: dict[TcpState, int] = {state: 0 for state in TcpState}
        self._protocols: dict[int, int] = {}
        self._counts = {name: 0 for name in (
            "created", "expired", "evictions", "drops_full", "clashes", "invalid", "ignored",
            "reopened", "aborted", "flushed", "removed", "reclaimed")}

    def __len__(self) -> int:
        return len(self._by_original)

    @property
    def reply_pairs(self) -> Mapping[tuple[bytes, bytes], int]:
        """The address pairs replies of translated connections carry; read-only for callers."""
        return self._reply_pairs

    # -- lookups ---------------------------------------------------------------------------------

    def lookup(self, t: FlowTuple, now: float) -> tuple[Entry, Direction] | None:
        entry = self._by_original.get(t)
        if entry is not None:
            return (entry, Direction.ORIGINAL) if now < entry.expires else None
        entry = self._by_reply.get(t)
        if entry is not None:
            return (entry, Direction.REPLY) if now < entry.expires else None
        return None

    def _holder(self, t: FlowTuple) -> Entry | None:
        entry = self._by_original.get(t)
        return entry if entry is not None else self._by_reply.get(t)

    def entries(self) -> list[Entry]:
        return list(self._by_original.values())

    # -- creation --------------------------------------------------------------------------------

    @staticmethod
    def new_tcp_allowed(flags: int) -> bool:
        """Only a bare SYN may start a TCP connection: picking up a connection from a stray ACK
        (Linux's ``nf_conntrack_tcp_loose``) would forward packets of a flow whose translation is
        unknown, which is how kube-proxy's spurious resets came about."""
        return flags & (SYN | ACK | RST | FIN) == SYN

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
        dst, dport = original.dst, original.dport
        src, sport = original.src, original.sport
        if dnat is not None:
            dst = dnat[0]
            if dnat[1] is not None and original.proto != _ICMP:
                dport = dnat[1]
        if snat is not None:
            src = snat[0]
            if snat[1] is not None:
                sport = snat[1]
        if original.proto == _ICMP:
            dport = sport
        return FlowTuple(original.proto, dst, dport, src, sport)

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
        reply = self.reply_tuple(original, dnat, snat)
        by_original, by_reply = self._by_original, self._by_reply
        for t in (original, reply):
            holder = by_original.get(t)
            if holder is None:
                holder = by_reply.get(t)
                if holder is None:
                    continue
            if now >= holder.expires:
                self._discard(holder)
                self._counts["expired"] += 1
                self._counts["reclaimed"] += 1
            else:
                self._counts["clashes"] += 1
                return None
        if len(by_original) >= self.max_entries:
            self._counts["reclaimed"] += len(self.expire(now))
            while len(self._by_original) >= self.max_entries:
                if not self._unreplied:
                    self._counts["drops_full"] += 1
                    return None
                victim = next(iter(self._unreplied))
                self._discard(victim)
                self._counts["evictions"] += 1

        proto = original.proto
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
        entry = Entry(original, reply, dnat, snat, now, now + timeout, state,
                      labels if labels is not None else {}, self.slots)
        entry._in_table = True
        by_original[original] = entry
        by_reply[reply] = entry
        self._unreplied[entry] = None
        if dnat is not None:
            group = self._by_endpoint.get(dnat[0])
            if group is None:
                group = self._by_endpoint[dnat[0]] = {}
            group[entry] = None
        if dnat is not None or snat is not None:
            pair = (reply.src, reply.dst)
            count = self._reply_pairs.get(pair, 0)
            if not count:
                self.generation += 1  # cached decisions about this pair may now be wrong
            self._reply_pairs[pair] = count + 1
        if proto == _TCP:
            self._tcp_states[state] += 1
        self._protocols[proto] = self._protocols.get(proto, 0) + 1
        self._deadlines.schedule(entry, entry.expires)
        self._counts["created"] += 1
        return entry

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
            return holder is None or (now is not None and now >= holder.expires)

        if low <= preferred <= high and free(preferred):
            return preferred
        span = high - low + 1
        start = scan_start(self._port_key, proto, src_ip, remote_ip, remote_port, preferred, span)
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
            self._discard(entry)
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
        # A RST always leads to CLOSE, so its short timeout is CLOSE's.
        self._set_expires(entry, now + self._tcp_timeout[new._value_])
        return Verdict.ACCEPT

    def _count(self, entry: Entry, d: int, now: float, length: int) -> None:
        entry.packets[d] += 1
        entry.bytes[d] += length
        entry.last_seen = now

    def _mark_replied(self, entry: Entry) -> None:
        entry.replied = True
        self._unreplied.pop(entry, None)

    # -- removal and time ------------------------------------------------------------------------

    def remove(self, entry: Entry) -> None:
        if entry._in_table:
            self._discard(entry)
            self._counts["removed"] += 1

    def expire(self, now: float) -> list[Entry]:
        """Remove and return every entry whose deadline has come (``now >= expires``)."""
        gone = self._deadlines.pop_due(now)
        for entry in gone:
            self._discard(entry)
        self._counts["expired"] += len(gone)
        return gone

    def next_deadline(self) -> float | None:
        """The earliest ``expires`` of any entry in the table, or None when it is empty."""
        return self._deadlines.next_deadline()

    def flush(self, predicate: Callable[[Entry], bool] | None = None) -> int:
        if predicate is None:
            victims = list(self._by_original.values())
        else:
            victims = [e for e in self._by_original.values() if predicate(e)]
        for entry in victims:
            self._discard(entry)
        self._counts["flushed"] += len(victims)
        return len(victims)

    def flush_endpoint(self, ip: bytes, port: int | None = None, proto: int | None = None,
                       where: Callable[[Entry], bool] | None = None) -> int:
        """Remove the entries translated to endpoint ``ip`` (optionally only its ``port`` and
        ``proto``, and only those ``where`` accepts), so that the flows they carried pick a live
        endpoint at their next packet. Costs the endpoint's entries, not the table's."""
        candidates = self._by_endpoint.get(ip)
        if not candidates:
            return 0
        victims = [e for e in candidates
                   if (port is None or e.dnat is not None and e.dnat[1] == port)
                   and (proto is None or e.original.proto == proto)
                   and (where is None or where(e))]
        for entry in victims:
            self._discard(entry)
        self._counts["flushed"] += len(victims)
        return len(victims)

    def statistics(self) -> dict[str, Any]:
        """A snapshot: counters since start, and what the table holds now."""
        return {
            "entries": len(self._by_original),
            "max": self.max_entries,
            **self._counts,
            "unreplied": len(self._unreplied),
            "tcp_states": {state.name: n for state, n in self._tcp_states.items()
                           if state is not TcpState.NONE},
            "protocols": {PROTO_NAMES.get(p, str(p)): n for p, n in self._protocols.items() if n},
        }

    # -- bookkeeping -----------------------------------------------------------------------------

    def _discard(self, entry: Entry) -> None:
        entry._in_table = False
        self._deadlines.discard(entry)
        del self._by_original[entry.original]
        del self._by_reply[entry.reply]
        self._unreplied.pop(entry, None)
        if entry.dnat is not None:
            group = self._by_endpoint.get(entry.dnat[0])
            if group is not None:
                group.pop(entry, None)
                if not group:
                    del self._by_endpoint[entry.dnat[0]]
        if entry.dnat is not None or entry.snat is not None:
            pair = (entry.reply.src, entry.reply.dst)
            count = self._reply_pairs.get(pair, 0)
            if count <= 1:
                self._reply_pairs.pop(pair, None)
            else:
                self._reply_pairs[pair] = count - 1
        proto = entry.original.proto
        if proto == _TCP:
            self._tcp_states[entry.tcp_state] -= 1
        self._protocols[proto] -= 1

    def _set_expires(self, entry: Entry, expires: float) -> None:
        # A later deadline needs nothing from the heap (its item moves when it surfaces).
        earlier = expires < entry.expires
        entry.expires = expires
        if earlier:
            self._deadlines.schedule(entry, expires)

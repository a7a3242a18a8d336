"""The connection-tracking table: TCP states and timeouts after Linux's nf_conntrack, UDP and ICMP
timeouts, lookups in both directions through NAT, expiry with an injected clock, the bounded table,
clash refusal, SNAT port allocation and endpoint flushes."""
from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vswitch.tables.conntrack import (
    ConntrackTable,
    Direction,
    Entry,
    FlowTuple,
    TcpState,
    Timeouts,
    Verdict,
)

PROPERTY = settings(max_examples=150, deadline=None)

TCP, UDP, ICMP = 6, 17, 1
FIN, SYN, RST, PSH, ACK, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x40, 0x80
SYNACK, FINACK, RSTACK = SYN | ACK, FIN | ACK, RST | ACK
ORIG, REPLY = Direction.ORIGINAL, Direction.REPLY


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


CLIENT = ip("10.244.1.10")
VIP = ip("10.96.0.10")
BACKEND = ip("10.244.1.20")
BACKEND2 = ip("10.244.1.21")
HAIRPIN = ip("169.254.169.5")
NODE = ip("192.0.2.2")
REMOTE = ip("198.51.100.7")

WEB = FlowTuple(TCP, CLIENT, 40000, VIP, 80)
TO_WEB_BACKEND = (BACKEND, 8080)


@pytest.fixture
def table():
    return ConntrackTable()


def handshake(table: ConntrackTable, original: FlowTuple = WEB, t: float = 0.0, **nat) -> Entry:
    entry = table.create(original, t, **nat)
    assert entry is not None
    assert table.update(entry, ORIG, t, SYN) is Verdict.ACCEPT
    assert table.update(entry, REPLY, t, SYNACK) is Verdict.ACCEPT
    assert table.update(entry, ORIG, t, ACK) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.ESTABLISHED
    return entry


def snapshot(entry: Entry):
    return (entry.tcp_state, entry.replied, entry.assured, entry.expires, entry.last_seen,
            list(entry.packets), list(entry.bytes))


# -- tuples ---------------------------------------------------------------------------------------

def test_flow_tuple_reverses_and_describes():
    assert WEB.reversed() == FlowTuple(TCP, VIP, 80, CLIENT, 40000)
    assert WEB.reversed().reversed() == WEB
    assert WEB.describe() == "tcp 10.244.1.10:40000 > 10.96.0.10:80"
    assert FlowTuple(UDP, CLIENT, 5353, VIP, 53).describe() == "udp 10.244.1.10:5353 > 10.96.0.10:53"
    assert FlowTuple(ICMP, CLIENT, 7, REMOTE, 7).describe() == "icmp 10.244.1.10 > 198.51.100.7 id 7"
    assert {WEB: 1}[FlowTuple(TCP, CLIENT, 40000, VIP, 80)] == 1


# -- TCP ------------------------------------------------------------------------------------------

def test_tcp_handshake_moves_through_states_with_their_timeouts(table):
    entry = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    assert entry.tcp_state is TcpState.SYN_SENT and entry.expires == 120.0
    assert table.update(entry, ORIG, 0.0, SYN, 60) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.SYN_SENT and entry.expires == 120.0
    assert not entry.replied

    assert table.update(entry, REPLY, 1.0, SYNACK, 60) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.SYN_RECV
    assert entry.expires == 1.0 + 60
    assert entry.replied and not entry.assured

    assert table.update(entry, ORIG, 2.0, ACK, 52) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.ESTABLISHED
    assert entry.expires == 2.0 + 86400
    assert entry.assured

    assert table.update(entry, REPLY, 3.0, ACK | PSH, 1500) is Verdict.ACCEPT
    assert entry.expires == 3.0 + 86400
    assert entry.packets == [2, 2] and entry.bytes == [112, 1560]
    assert entry.last_seen == 3.0


def test_tcp_close_initiated_by_client(table):
    entry = handshake(table)
    steps = [
        (ORIG, FINACK, TcpState.FIN_WAIT, 120),
        (REPLY, ACK, TcpState.CLOSE_WAIT, 60),
        (REPLY, FINACK, TcpState.LAST_ACK, 30),
        (ORIG, ACK, TcpState.TIME_WAIT, 120),
    ]
    for t, (direction, flags, state, timeout) in enumerate(steps, start=10):
        assert table.update(entry, direction, float(t), flags) is Verdict.ACCEPT
        assert entry.tcp_state is state
        assert entry.expires == t + timeout


def test_tcp_fin_fin_ack_reaches_time_wait(table):
    entry = handshake(table)
    table.update(entry, ORIG, 5.0, FINACK)
    assert entry.tcp_state is TcpState.FIN_WAIT
    table.update(entry, REPLY, 6.0, FINACK)
    assert entry.tcp_state is TcpState.LAST_ACK and entry.expires == 36.0
    table.update(entry, ORIG, 7.0, ACK)
    assert entry.tcp_state is TcpState.TIME_WAIT and entry.expires == 127.0
    assert table.lookup(WEB, 126.9) is not None
    assert table.lookup(WEB, 127.0) is None


@pytest.mark.parametrize("direction", [ORIG, REPLY])
@pytest.mark.parametrize("flags", [RST, RSTACK])
def test_tcp_rst_closes_with_the_short_timeout(table, direction, flags):
    entry = handshake(table)
    assert table.update(entry, direction, 50.0, flags) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.CLOSE
    assert entry.expires == 60.0
    assert table.next_deadline() == 60.0


@pytest.mark.parametrize("direction", [ORIG, REPLY])
def test_rst_before_any_reply_ends_the_entry_at_once(table, direction):
    """The kernel's "if only reply is a RST ... delete the conntrack immediately": a refused or
    abandoned connection leaves nothing behind, and the client's next SYN starts afresh."""
    entry = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    table.update(entry, ORIG, 0.0, SYN)
    assert table.update(entry, direction, 1.0, RSTACK) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.CLOSE and entry.expires == 1.0
    assert table.lookup(WEB, 1.0) is None and not entry.alive(1.0)
    assert table.statistics()["aborted"] == 1
    again = table.create(WEB, 1.5, dnat=(BACKEND2, 8080))
    assert again is not None and table.lookup(WEB, 1.5) == (again, ORIG)


def test_rst_after_a_reply_keeps_close_for_its_timeout(table):
    entry = table.create(WEB, 0.0)
    table.update(entry, ORIG, 0.0, SYN)
    table.update(entry, REPLY, 0.5, SYNACK)
    assert table.update(entry, ORIG, 1.0, RST) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.CLOSE and entry.expires == 11.0
    assert table.statistics()["aborted"] == 0


def _to_syn_sent(table, entry):
    table.update(entry, ORIG, 0.0, SYN)


def _to_established(table, entry):
    for direction, flags in ((ORIG, SYN), (REPLY, SYNACK), (ORIG, ACK)):
        table.update(entry, direction, 0.0, flags)


def _to_close(table, entry):
    _to_established(table, entry)
    table.update(entry, REPLY, 0.0, RST)


def _to_time_wait(table, entry):
    _to_established(table, entry)
    for direction, flags in ((ORIG, FINACK), (REPLY, FINACK), (ORIG, ACK)):
        table.update(entry, direction, 0.0, flags)


INVALID_CASES = [
    # (how to get there, direction, flags, why the kernel refuses it)
    (_to_syn_sent, ORIG, SYNACK, "the client cannot answer its own SYN"),
    (_to_syn_sent, ORIG, ACK, "an ACK before any SYN-ACK was seen"),
    (_to_syn_sent, ORIG, FINACK, "a FIN before the handshake"),
    (_to_syn_sent, REPLY, FINACK, "the server closing a connection it never accepted"),
    (_to_established, REPLY, SYN, "a bare SYN from the server mid-connection"),
    (_to_established, ORIG, SYNACK, "a SYN-ACK from the client mid-connection"),
    (_to_established, ORIG, PSH, "no SYN, ACK, FIN or RST at all"),
    (_to_established, ORIG, 0, "no flags"),
    (_to_established, ORIG, SYN | FIN, "SYN and FIN together"),
    (_to_established, ORIG, SYN | RST, "SYN and RST together"),
    (_to_established, REPLY, FIN, "FIN without ACK"),
    (_to_close, ORIG, SYNACK, "a SYN-ACK from the client after a reset"),
    (_to_close, REPLY, SYN, "a SYN from the server after a reset"),
    (_to_time_wait, ORIG, SYNACK, "a SYN-ACK from the client after the close"),
]


@pytest.mark.parametrize("setup, direction, flags, why", INVALID_CASES,
                         ids=[case[3] for case in INVALID_CASES])
def test_invalid_packets_change_nothing(table, setup, direction, flags, why):
    entry = table.create(WEB, 0.0)
    setup(table, entry)
    before = snapshot(entry)
    invalid = table.statistics()["invalid"]
    assert table.update(entry, direction, 5.0, flags, 100) is Verdict.INVALID, why
    assert snapshot(entry) == before
    assert table.statistics()["invalid"] == invalid + 1


def test_ack_after_close_stays_closed_as_in_linux(table):
    # Linux's table keeps FIN and ACK in CLOSE (they are the tail of the reset connection); only
    # a SYN re-opens and a SYN-ACK from the client is invalid.
    entry = table.create(WEB, 0.0)
    _to_close(table, entry)
    assert table.update(entry, ORIG, 3.0, ACK) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.CLOSE and entry.expires == 13.0


@pytest.mark.parametrize("setup, direction, flags", [
    (_to_established, ORIG, SYN),  # the end points may know better; the server answers RST
    (_to_established, REPLY, SYNACK),  # a late retransmitted SYN-ACK
    (_to_syn_sent, REPLY, ACK),  # maybe a half-open connection's challenge ACK
])
def test_ignored_packets_pass_without_changing_state_or_timeout(table, setup, direction, flags):
    entry = table.create(WEB, 0.0)
    setup(table, entry)
    state, expires = entry.tcp_state, entry.expires
    packets = sum(entry.packets)
    assert table.update(entry, direction, 30.0, flags) is Verdict.ACCEPT
    assert entry.tcp_state is state and entry.expires == expires
    assert sum(entry.packets) == packets + 1
    assert table.statistics()["ignored"] == 1


def test_retransmitted_syn_does_not_extend_an_unanswered_entry(table):
    entry = table.create(WEB, 0.0)
    for t in (0.0, 1.0, 3.0, 7.0, 100.0):
        assert table.update(entry, ORIG, t, SYN) is Verdict.ACCEPT
    assert entry.expires == 120.0 and entry.packets == [5, 0]
    assert table.lookup(WEB, 120.0) is None


def test_new_syn_in_time_wait_removes_the_entry_for_a_new_connection(table):
    entry = handshake(table, dnat=TO_WEB_BACKEND)
    _to_time_wait(table, entry)
    assert entry.tcp_state is TcpState.TIME_WAIT
    assert table.reopens(entry, ORIG, SYN) and table.reopens(entry, REPLY, SYN)
    assert not table.reopens(entry, ORIG, ACK)
    assert table.update(entry, ORIG, 40.0, SYN, 60) is Verdict.REOPEN
    # As the kernel's nf_ct_kill + NF_REPEAT: the old entry is gone, the tuple is free.
    assert entry not in table.entries() and table.lookup(WEB, 40.0) is None
    stats = table.statistics()
    assert stats["reopened"] == 1 and stats["entries"] == 0
    assert stats["tcp_states"]["TIME_WAIT"] == 0
    # The new connection may take another endpoint; it completes its handshake like any other.
    fresh = table.create(WEB, 40.0, dnat=(BACKEND2, 8080))
    assert fresh is not None and fresh.dnat == (BACKEND2, 8080)
    assert table.update(fresh, ORIG, 40.0, SYN) is Verdict.ACCEPT
    table.update(fresh, REPLY, 41.0, SYNACK)
    table.update(fresh, ORIG, 41.0, ACK)
    assert fresh.tcp_state is TcpState.ESTABLISHED and fresh.assured


def test_new_syn_after_reset_removes_the_entry(table):
    entry = table.create(WEB, 0.0)
    _to_close(table, entry)
    assert table.update(entry, ORIG, 1.0, SYN) is Verdict.REOPEN
    assert table.lookup(WEB, 1.0) is None and table.statistics()["entries"] == 0


def test_syn_from_the_server_side_in_time_wait_ends_the_entry(table):
    """The kernel kills the entry and looks again: the server's SYN starts a connection of its
    own, the other way round, untranslated."""
    entry = handshake(table, dnat=TO_WEB_BACKEND)
    _to_time_wait(table, entry)
    assert table.reopens(entry, REPLY, SYN)
    assert table.update(entry, REPLY, 40.0, SYN) is Verdict.REOPEN
    assert table.lookup(WEB, 40.0) is None and table.statistics()["entries"] == 0


def test_syn_from_the_server_side_after_a_reset_is_invalid(table):
    entry = handshake(table, dnat=TO_WEB_BACKEND)
    table.update(entry, ORIG, 1.0, RST)
    assert not table.reopens(entry, REPLY, SYN)
    assert table.update(entry, REPLY, 2.0, SYN) is Verdict.INVALID
    assert table.lookup(WEB, 2.0) == (entry, ORIG)


def test_simultaneous_open_reaches_established(table):
    entry = table.create(WEB, 0.0)
    table.update(entry, ORIG, 0.0, SYN)
    assert table.update(entry, REPLY, 0.1, SYN) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.SYN_SENT2 and entry.expires == 120.1
    assert table.update(entry, ORIG, 0.2, SYNACK) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.SYN_RECV
    assert table.update(entry, REPLY, 0.3, ACK) is Verdict.ACCEPT
    assert entry.tcp_state is TcpState.ESTABLISHED


@pytest.mark.parametrize("flags, allowed", [
    (SYN, True),
    (SYN | ECE | CWR, True),  # an ECN-setup SYN
    (SYN | PSH, True),
    (SYNACK, False),
    (ACK, False),
    (ACK | PSH, False),
    (RST, False),
    (FINACK, False),
    (SYN | FIN, False),
    (SYN | RST, False),
    (0, False),
])
def test_only_a_bare_syn_may_create_a_tcp_entry(flags, allowed):
    assert ConntrackTable.new_tcp_allowed(flags) is allowed


def test_tcp_update_without_flags_is_a_programming_error(table):
    entry = table.create(WEB, 0.0)
    with pytest.raises(ValueError):
        table.update(entry, ORIG, 0.0)


FLAG_CHOICES = [SYN, SYNACK, ACK, ACK | PSH, FINACK, FIN, RST, RSTACK, 0, SYN | FIN, PSH, SYN | ECE | CWR]


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([ORIG, REPLY]), st.sampled_from(FLAG_CHOICES)),
                max_size=30))
def test_tcp_invariants_under_arbitrary_packets(packets):
    table = ConntrackTable()
    entry = table.create(WEB, 0.0)
    table.update(entry, ORIG, 0.0, SYN)
    seen_reply = False
    for i, (direction, flags) in enumerate(packets, start=1):
        now = float(i)
        before = snapshot(entry)
        replied_before = entry.replied
        predicted = table.reopens(entry, direction, flags)
        verdict = table.update(entry, direction, now, flags)
        assert predicted is (verdict is Verdict.REOPEN)
        if verdict is Verdict.REOPEN:
            # The old entry is gone; the pipeline starts a new connection on the same tuple.
            assert before[0] in (TcpState.TIME_WAIT, TcpState.CLOSE)
            assert table.statistics()["entries"] == 0
            if direction is REPLY:
                assert before[0] is TcpState.TIME_WAIT  # the server's side: a reversed connection
                break
            entry = table.create(WEB, now)
            table.update(entry, ORIG, now, flags)
            seen_reply = False
        stats = table.statistics()
        if verdict is Verdict.INVALID:
            assert snapshot(entry) == before
        elif verdict is Verdict.REOPEN:
            assert entry.tcp_state is TcpState.SYN_SENT and entry.expires == now + 120
        elif direction is REPLY:
            seen_reply = True
        assert entry.replied == seen_reply
        assert entry.tcp_state is not TcpState.NONE
        assert entry.expires <= now + 86400
        if verdict is Verdict.ACCEPT and flags & RST:
            # Before any reply the entry dies at once; after one, CLOSE holds it for 10 s.
            assert entry.tcp_state is TcpState.CLOSE
            assert entry.expires == (now + 10 if replied_before else now)
        counted = {name: n for name, n in stats["tcp_states"].items() if n}
        assert counted == {entry.tcp_state.name: 1}
        assert stats["unreplied"] == (0 if entry.replied else 1)


# -- UDP and ICMP ---------------------------------------------------------------------------------

def test_udp_is_short_until_replied_then_long(table):
    dns = FlowTuple(UDP, CLIENT, 5353, VIP, 53)
    entry = table.create(dns, 0.0, dnat=(BACKEND, 53))
    assert entry.expires == 30.0 and entry.tcp_state is TcpState.NONE
    table.update(entry, ORIG, 10.0, length=40)
    assert entry.expires == 40.0 and not entry.replied
    table.update(entry, REPLY, 20.0, length=90)
    assert entry.replied and entry.assured and entry.expires == 140.0
    table.update(entry, ORIG, 50.0)
    assert entry.expires == 170.0
    assert entry.packets == [2, 1] and entry.bytes == [40, 90]


def test_unreplied_udp_expires_after_30_seconds_idle(table):
    flow = FlowTuple(UDP, CLIENT, 9999, REMOTE, 9999)
    entry = table.create(flow, 0.0)
    table.update(entry, ORIG, 0.0)
    assert table.lookup(flow, 29.9) == (entry, ORIG)
    assert table.lookup(flow, 30.0) is None
    assert table.expire(30.0) == [entry]
    assert len(table) == 0


def test_icmp_echo_is_tracked_by_identifier(table):
    ping = FlowTuple(ICMP, CLIENT, 0x1234, REMOTE, 0x1234)
    entry = table.create(ping, 0.0)
    assert entry.expires == 30.0
    assert table.lookup(ping.reversed(), 1.0) == (entry, REPLY)
    assert table.lookup(FlowTuple(ICMP, REMOTE, 0x1235, CLIENT, 0x1235), 1.0) is None
    table.update(entry, REPLY, 5.0, length=84)
    assert entry.replied and entry.expires == 35.0


def test_icmp_echo_masquerade_rewrites_the_identifier_in_both_directions(table):
    ping = FlowTuple(ICMP, CLIENT, 0x1234, REMOTE, 0x1234)
    entry = table.create(ping, 0.0, snat=(NODE, 0x4321))
    assert entry.reply == FlowTuple(ICMP, REMOTE, 0x4321, NODE, 0x4321)
    assert table.lookup(FlowTuple(ICMP, REMOTE, 0x4321, NODE, 0x4321), 1.0) == (entry, REPLY)


def test_other_protocols_use_the_generic_timeout(table):
    gre = FlowTuple(47, CLIENT, 0, REMOTE, 0)
    entry = table.create(gre, 0.0)
    assert entry.expires == 600.0
    assert table.update(entry, REPLY, 1.0) is Verdict.ACCEPT
    assert entry.replied and entry.expires == 601.0
    assert "proto 47" in gre.describe()


def test_custom_timeouts_apply(table):
    table = ConntrackTable(timeouts=Timeouts(established=3600, udp_unreplied=5))
    entry = handshake(table)
    assert entry.expires == 3600.0
    udp = table.create(FlowTuple(UDP, CLIENT, 1, REMOTE, 2), 0.0)
    assert udp.expires == 5.0


# -- lookups through NAT --------------------------------------------------------------------------

def test_lookup_without_nat_matches_both_directions(table):
    flow = FlowTuple(TCP, CLIENT, 40000, BACKEND, 8080)
    entry = table.create(flow, 0.0)
    assert entry.reply == flow.reversed()
    assert table.lookup(flow, 0.0) == (entry, ORIG)
    assert table.lookup(flow.reversed(), 0.0) == (entry, REPLY)


def test_lookup_with_dnat_matches_the_translated_reply(table):
    entry = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND, labels={"service": "default/web"})
    assert entry.reply == FlowTuple(TCP, BACKEND, 8080, CLIENT, 40000)
    assert table.lookup(WEB, 0.0) == (entry, ORIG)
    assert table.lookup(FlowTuple(TCP, BACKEND, 8080, CLIENT, 40000), 0.0) == (entry, REPLY)
    # What the service address would answer with is not what arrives: no match.
    assert table.lookup(WEB.reversed(), 0.0) is None
    # Nor does the translated original (it is never looked up; the client never sends it).
    assert table.lookup(FlowTuple(TCP, CLIENT, 40000, BACKEND, 8080), 0.0) is None


def test_lookup_with_snat_and_dnat_hairpin(table):
    own = FlowTuple(TCP, BACKEND, 33000, VIP, 80)
    entry = table.create(own, 0.0, dnat=TO_WEB_BACKEND, snat=(HAIRPIN, 33000))
    assert entry.reply == FlowTuple(TCP, BACKEND, 8080, HAIRPIN, 33000)
    assert table.lookup(own, 0.0) == (entry, ORIG)
    assert table.lookup(entry.reply, 0.0) == (entry, REPLY)


def test_lookup_with_masquerade(table):
    egress = FlowTuple(TCP, CLIENT, 40000, REMOTE, 443)
    entry = table.create(egress, 0.0, snat=(NODE, 61000))
    assert table.lookup(FlowTuple(TCP, REMOTE, 443, NODE, 61000), 0.0) == (entry, REPLY)
    assert table.lookup(FlowTuple(TCP, REMOTE, 443, NODE, 40000), 0.0) is None


# -- expiry ---------------------------------------------------------------------------------------

def test_expiry_follows_the_injected_clock(table):
    a = table.create(FlowTuple(UDP, CLIENT, 1, REMOTE, 53), 0.0)
    b = table.create(FlowTuple(UDP, CLIENT, 2, REMOTE, 53), 10.0)
    c = handshake(table, t=5.0)
    assert table.next_deadline() == 30.0
    assert table.expire(29.9) == []
    assert table.expire(30.0) == [a]
    assert table.next_deadline() == 40.0
    table.update(b, ORIG, 35.0)
    assert table.next_deadline() == 65.0
    assert table.expire(100.0) == [b]
    assert table.next_deadline() == 5.0 + 86400
    assert table.entries() == [c]
    assert table.statistics()["expired"] == 2


def test_a_dead_entry_frees_its_tuples_before_it_is_reaped(table):
    flow = FlowTuple(UDP, CLIENT, 5000, VIP, 53)
    old = table.create(flow, 0.0, dnat=(BACKEND, 53))
    new = table.create(flow, 30.0, dnat=(BACKEND2, 53))
    assert new is not None and new is not old
    assert table.lookup(flow, 30.0) == (new, ORIG)
    assert len(table) == 1
    assert table.statistics()["expired"] == 1 and table.statistics()["reclaimed"] == 1
    assert table.next_deadline() == 60.0


def test_empty_table_has_no_deadline(table):
    assert table.next_deadline() is None
    assert table.expire(1e12) == []


# -- bounds, clashes ------------------------------------------------------------------------------

def udp_flow(n: int) -> FlowTuple:
    return FlowTuple(UDP, CLIENT, 10000 + n, REMOTE, 53)


def test_full_table_evicts_the_oldest_unreplied_first():
    table = ConntrackTable(max_entries=3)
    first, second, third = (table.create(udp_flow(i), float(i)) for i in range(3))
    table.update(first, REPLY, 3.0)  # the oldest is answered: it must survive
    fourth = table.create(udp_flow(3), 4.0)
    assert fourth is not None
    assert set(table.entries()) == {first, third, fourth}
    assert table.lookup(udp_flow(1), 4.0) is None
    fifth = table.create(udp_flow(4), 5.0)
    assert set(table.entries()) == {first, fourth, fifth}
    stats = table.statistics()
    assert stats["evictions"] == 2 and stats["drops_full"] == 0 and stats["entries"] == 3


def test_full_table_of_answered_connections_refuses_new_ones():
    table = ConntrackTable(max_entries=2)
    for i in range(2):
        entry = table.create(udp_flow(i), 0.0)
        table.update(entry, REPLY, 0.0)
    assert table.create(udp_flow(2), 1.0) is None
    assert table.create(udp_flow(3), 1.0) is None
    stats = table.statistics()
    assert stats["drops_full"] == 2 and stats["evictions"] == 0 and len(table) == 2


def test_full_table_reclaims_dead_entries_before_evicting():
    table = ConntrackTable(max_entries=2)
    dead = table.create(udp_flow(0), 0.0)
    live = table.create(udp_flow(1), 20.0)
    new = table.create(udp_flow(2), 31.0)
    assert new is not None
    assert set(table.entries()) == {live, new}
    assert dead not in table.entries()
    stats = table.statistics()
    assert stats["evictions"] == 0 and stats["expired"] == 1 and stats["reclaimed"] == 1


def test_same_original_twice_is_a_clash(table):
    first = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    assert table.create(WEB, 1.0, dnat=(BACKEND2, 8080)) is None
    assert table.statistics()["clashes"] == 1
    assert table.lookup(WEB, 1.0) == (first, ORIG)


def test_reply_tuple_taken_is_a_clash(table):
    table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    # The client also talks to the backend directly from the same port: the backend's answers
    # would be indistinguishable, so the second connection is refused.
    direct = FlowTuple(TCP, CLIENT, 40000, BACKEND, 8080)
    assert table.create(direct, 1.0) is None
    assert table.statistics()["clashes"] == 1


def test_invalid_max_entries():
    with pytest.raises(ValueError):
        ConntrackTable(max_entries=0)


# -- SNAT port allocation -------------------------------------------------------------------------

def test_allocate_port_keeps_the_clients_port_when_free(table):
    assert table.allocate_port(TCP, NODE, REMOTE, 443, 40000) == 40000
    table.create(FlowTuple(TCP, CLIENT, 40000, REMOTE, 443), 0.0, snat=(NODE, 40000))
    other = table.allocate_port(TCP, NODE, REMOTE, 443, 40000)
    assert other is not None and other != 40000 and 1024 <= other <= 65535
    # Another remote port, or another remote, does not collide.
    assert table.allocate_port(TCP, NODE, REMOTE, 80, 40000) == 40000
    assert table.allocate_port(UDP, NODE, REMOTE, 443, 40000) == 40000


def test_allocate_port_stays_in_range_and_reports_exhaustion(table):
    for n in range(4):
        port = table.allocate_port(UDP, NODE, REMOTE, 53, 5000, low=2000, high=2003)
        assert port is not None and 2000 <= port <= 2003
        assert table.create(FlowTuple(UDP, ip(f"10.244.1.{n + 1}"), 5000, REMOTE, 53), 0.0,
                            snat=(NODE, port)) is not None
    assert table.allocate_port(UDP, NODE, REMOTE, 53, 5000, low=2000, high=2003) is None
    # Ports held by dead entries are free once time is given.
    assert table.allocate_port(UDP, NODE, REMOTE, 53, 5000, low=2000, high=2003, now=30.0) \
        in range(2000, 2004)
    with pytest.raises(ValueError):
        table.allocate_port(UDP, NODE, REMOTE, 53, 5000, low=3000, high=2000)


def test_allocate_icmp_identifier(table):
    table.create(FlowTuple(ICMP, CLIENT, 77, REMOTE, 77), 0.0, snat=(NODE, 77))
    other = table.allocate_port(ICMP, NODE, REMOTE, 0, 77, low=0, high=65535)
    assert other is not None and other != 77
    entry = table.create(FlowTuple(ICMP, ip("10.244.1.11"), 77, REMOTE, 77), 0.0,
                         snat=(NODE, other))
    assert entry is not None


@PROPERTY
@given(preferred=st.lists(st.integers(1024, 1100), min_size=1, max_size=150),
       proto=st.sampled_from([TCP, UDP, ICMP]))
def test_many_allocations_to_one_remote_never_repeat_a_reply_tuple(preferred, proto):
    table = ConntrackTable()
    replies = set()
    for n, port in enumerate(preferred):
        client = ip(f"10.244.{1 + n // 200}.{1 + n % 200}")
        chosen = table.allocate_port(proto, NODE, REMOTE, 443, port, low=1024, high=1200)
        assert chosen is not None and 1024 <= chosen <= 1200
        dport = port if proto == ICMP else 443
        entry = table.create(FlowTuple(proto, client, port, REMOTE, dport), 0.0,
                             snat=(NODE, chosen))
        assert entry is not None, "an allocated port must never clash"
        assert entry.reply not in replies
        replies.add(entry.reply)
    assert table.statistics()["clashes"] == 0


# -- flushes --------------------------------------------------------------------------------------

def test_flush_endpoint_removes_only_entries_translated_to_it(table):
    web_tcp = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    web_udp = table.create(FlowTuple(UDP, CLIENT, 40000, VIP, 80), 0.0, dnat=TO_WEB_BACKEND)
    metrics = table.create(FlowTuple(TCP, CLIENT, 40001, VIP, 9090), 0.0, dnat=(BACKEND, 9090))
    elsewhere = table.create(FlowTuple(TCP, CLIENT, 40002, VIP, 80), 0.0, dnat=(BACKEND2, 8080))
    direct = table.create(FlowTuple(TCP, CLIENT, 40003, BACKEND, 8080), 0.0)

    assert table.flush_endpoint(BACKEND, 8080, UDP) == 1
    assert web_udp not in table.entries()
    assert table.flush_endpoint(BACKEND, 8080) == 1
    assert web_tcp not in table.entries()
    assert table.flush_endpoint(BACKEND) == 1
    assert metrics not in table.entries()
    assert table.flush_endpoint(BACKEND) == 0
    assert set(table.entries()) == {elsewhere, direct}
    assert table.statistics()["flushed"] == 3


def test_fixed_port_udp_client_moves_to_a_new_backend_after_flush(table):
    # kube-proxy's stale-UDP-conntrack bug: the client's own traffic keeps the old entry alive.
    flow = FlowTuple(UDP, CLIENT, 5000, VIP, 53)
    old = table.create(flow, 0.0, dnat=(BACKEND, 53))
    for t in range(1, 100):
        table.update(old, ORIG, float(t))
    assert table.flush_endpoint(BACKEND, 53, UDP) == 1
    assert table.lookup(flow, 100.0) is None
    new = table.create(flow, 100.0, dnat=(BACKEND2, 53))
    assert table.lookup(FlowTuple(UDP, BACKEND2, 53, CLIENT, 5000), 100.0) == (new, REPLY)
    assert table.lookup(FlowTuple(UDP, BACKEND, 53, CLIENT, 5000), 100.0) is None


def test_flush_with_and_without_predicate(table):
    for n in range(5):
        table.create(udp_flow(n), 0.0, labels={"service": "a" if n < 2 else "b"})
    assert table.flush(lambda e: e.labels["service"] == "a") == 2
    assert len(table) == 3
    assert table.flush() == 3
    assert len(table) == 0 and table.next_deadline() is None
    assert table.statistics()["unreplied"] == 0


def test_flush_endpoint_may_narrow_by_a_predicate(table):
    web = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND, labels={"service": "web"})
    other = table.create(FlowTuple(TCP, CLIENT, 40001, VIP, 81), 0.0, dnat=TO_WEB_BACKEND,
                         labels={"service": "other"})
    def only_web(entry):
        return entry.labels["service"] == "web"

    assert table.flush_endpoint(BACKEND, 8080, TCP, where=only_web) == 1
    assert table.entries() == [other] and not web.alive(0.0)


def test_reply_pairs_follow_entries_through_eviction_and_reopening():
    table = ConntrackTable(max_entries=1)
    first = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    assert dict(table.reply_pairs) == {(BACKEND, CLIENT): 1} and table.generation == 1
    # The unreplied entry is evicted for a new one: its pair goes with it, inside ``create``.
    second = table.create(FlowTuple(TCP, CLIENT, 40001, VIP, 80), 0.0, dnat=(BACKEND2, 8080))
    assert table.statistics()["evictions"] == 1 and not first.alive(0.0)
    assert dict(table.reply_pairs) == {(BACKEND2, CLIENT): 1} and table.generation == 2
    _to_time_wait(table, second)
    assert second.tcp_state is TcpState.TIME_WAIT
    assert table.update(second, ORIG, 2.0, SYN) is Verdict.REOPEN
    assert dict(table.reply_pairs) == {} and table.generation == 2


def test_removed_entries_are_gone_everywhere(table):
    entry = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND)
    table.remove(entry)
    table.remove(entry)  # a second removal is harmless
    assert table.lookup(WEB, 0.0) is None
    assert table.lookup(entry.reply, 0.0) is None
    assert table.next_deadline() is None
    assert table.flush_endpoint(BACKEND) == 0
    # No index keeps anything of it: tuple keys, unreplied count, label sets, deadlines.
    assert len(table._index) == 0 and table._unreplied == 0
    assert len(table._labels) == 0 and len(table._deadlines) == 0
    assert table.update(entry, ORIG, 1.0, ACK) is Verdict.INVALID
    stats = table.statistics()
    assert stats["removed"] == 1 and stats["entries"] == 0 and stats["tcp_states"]["SYN_SENT"] == 0


# -- deadlines against brute force ----------------------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(0, 15), st.sampled_from([TCP, UDP, ICMP]),
                  st.booleans()),
        st.tuples(st.just("packet"), st.integers(0, 15), st.sampled_from([ORIG, REPLY]),
                  st.sampled_from(FLAG_CHOICES)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 5.0, 29.0, 60.0, 130.0, 1000.0])),
        st.tuples(st.just("remove"), st.integers(0, 15)),
        st.tuples(st.just("expire"),),
        st.tuples(st.just("flush_endpoint"), st.booleans()),
    ),
    max_size=80,
)


@PROPERTY
@given(OPERATIONS)
def test_next_deadline_and_expire_match_brute_force(operations):
    table = ConntrackTable(max_entries=12)
    now = 0.0
    flows = {}
    previous_pairs, previous_generation = set(), table.generation
    for op in operations:
        kind = op[0]
        if kind == "create":
            _, n, proto, nat = op
            port = 30000 + n
            flow = FlowTuple(proto, CLIENT, port, VIP, port if proto == ICMP else 80)
            if nat:
                translation = {"dnat": (BACKEND if n % 2 else BACKEND2, 8080)}
            else:
                translation = {"snat": (NODE, port)} if n % 3 == 0 else {}
            entry = table.create(flow, now, **translation)
            if entry is not None:
                flows[n] = entry
                if proto == TCP:
                    table.update(entry, ORIG, now, SYN)
        elif kind == "packet":
            _, n, direction, flags = op
            entry = flows.get(n)
            if entry is not None and table.lookup(entry.original, now) is not None:
                table.update(entry, direction, now, flags if entry.original.proto == TCP else None)
        elif kind == "advance":
            now += op[1]
        elif kind == "remove":
            entry = flows.get(op[1])
            if entry is not None:
                table.remove(entry)
        elif kind == "expire":
            due = {e for e in table.entries() if e.expires <= now}
            assert set(table.expire(now)) == due
        elif kind == "flush_endpoint":
            target = BACKEND if op[1] else BACKEND2
            due = {e for e in table.entries() if e.dnat is not None and e.dnat[0] == target}
            assert table.flush_endpoint(target) == len(due)
            assert not due & set(table.entries())

        live = table.entries()
        expected = min((e.expires for e in live), default=None)
        assert table.next_deadline() == expected
        assert len(table) == len(live) <= 12
        for entry in live:
            found = table.lookup(entry.original, now)
            assert (found is not None) == (now < entry.expires)
        stats = table.statistics()
        assert stats["unreplied"] == sum(1 for e in live if not e.replied)
        tcp_live = [e for e in live if e.original.proto == TCP]
        for state in TcpState:
            if state is not TcpState.NONE:
                assert stats["tcp_states"][state.name] == sum(1 for e in tcp_live if e.tcp_state is state)
        assert len(table._deadlines) == len(live)
        unreplied_items = len(table._unreplied_fifo) - table._unreplied_head
        assert unreplied_items <= 2 * stats["unreplied"] + 65
        # The table alone keeps its reply pairs right, whichever way entries went.
        pairs: dict = {}
        for entry in live:
            if entry.dnat is not None or entry.snat is not None:
                pair = (entry.reply.src, entry.reply.dst)
                pairs[pair] = pairs.get(pair, 0) + 1
        assert dict(table.reply_pairs) == pairs
        if set(pairs) - previous_pairs:
            assert table.generation > previous_generation
        previous_pairs, previous_generation = set(pairs), table.generation


def test_heap_stays_bounded_under_churn():
    table = ConntrackTable()
    now = 0.0
    for round_ in range(30):
        entries = []
        for n in range(200):
            flow = FlowTuple(TCP, CLIENT, 1024 + n, ip(f"198.51.100.{round_ + 1}"), 80)
            entry = table.create(flow, now)
            _to_established(table, entry)
            entries.append(entry)
        now += 200.0  # past the first heap items: they are moved to the 24 h deadline
        table.expire(now)
        for entry in entries:
            table.update(entry, REPLY, now, RST)  # earlier deadline: a new heap item each
        now += 11.0
        assert len(table.expire(now)) == 200
        assert len(table) == 0
        assert len(table._deadlines) == len(table)
        assert len(table._unreplied_fifo) - table._unreplied_head <= 64 + 2 * len(table)


# -- presentation ---------------------------------------------------------------------------------

def test_as_dict_is_json_able(table):
    entry = table.create(WEB, 0.0, dnat=TO_WEB_BACKEND, snat=(HAIRPIN, 40000), labels={
        "service": "default/web", "endpoint": BACKEND, "kind": "cluster-ip",
        "port": ("http", 80), "state": TcpState.ESTABLISHED, "mac": b"\x02\x00\x00\x00\x00\x01"})
    table.update(entry, ORIG, 1.0, SYN, 60)
    row = json.loads(json.dumps(entry.as_dict(3.0)))
    assert row["proto"] == "tcp"
    assert row["description"] == "tcp 10.244.1.10:40000 > 10.96.0.10:80"
    assert row["original"] == {"src": "10.244.1.10", "sport": 40000, "dst": "10.96.0.10", "dport": 80}
    assert row["reply"] == {"src": "10.244.1.20", "sport": 8080, "dst": "169.254.169.5", "dport": 40000}
    assert row["dnat"] == {"ip": "10.244.1.20", "port": 8080}
    assert row["snat"] == {"ip": "169.254.169.5", "port": 40000}
    assert row["state"] == "SYN_SENT" and row["replied"] is False
    assert row["age"] == 3.0 and row["idle"] == 2.0 and row["expires_in"] == 117.0
    assert row["packets"] == {"original": 1, "reply": 0}
    assert row["bytes"] == {"original": 60, "reply": 0}
    assert row["labels"]["endpoint"] == "10.244.1.20"
    assert row["labels"]["port"] == ["http", 80]
    assert row["labels"]["state"] == "ESTABLISHED"
    assert row["labels"]["mac"] == "020000000001"

    udp = table.create(FlowTuple(UDP, CLIENT, 1, REMOTE, 2), 0.0)
    row = json.loads(json.dumps(udp.as_dict(100.0)))
    assert row["state"] is None and row["dnat"] is None and row["expires_in"] == 0.0


def test_statistics_snapshot(table):
    handshake(table)
    table.create(FlowTuple(UDP, CLIENT, 1, REMOTE, 2), 0.0)
    table.create(FlowTuple(ICMP, CLIENT, 3, REMOTE, 3), 0.0)
    stats = table.statistics()
    assert stats["entries"] == 3 and stats["max"] == 262144 and stats["created"] == 3
    assert stats["tcp_states"]["ESTABLISHED"] == 1
    assert stats["protocols"] == {"tcp": 1, "udp": 1, "icmp": 1}
    assert stats["unreplied"] == 2
    json.dumps(stats)
    stats["entries"] = 99
    assert table.statistics()["entries"] == 3

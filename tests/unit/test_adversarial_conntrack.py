"""A SYN flood against the connection table: what a malicious pod's half-open connections may
push out, and what they may not.

A SYN flood at a ClusterIP from a pod's own addresses makes each entry answered: the backend's
kernel sends its SYN-ACK, the attacker's kernel (which has no socket for it) answers with a RST.
Such an entry was replied but never assured, and waits in CLOSE for 10 s, as Linux holds it;
only unreplied entries used to be evictable, so a flood of these filled the table and refused
every pod's new connections. They are evicted now after the unreplied ones (Linux's early drop
takes any entry that is not assured); an established connection never is.
"""
from __future__ import annotations

from vswitch.tables.conntrack import ConntrackTable, Direction, FlowTuple, TcpState

TCP = 6
SYN, ACK, RST = 0x02, 0x10, 0x04
ORIG, REPLY = Direction.ORIGINAL, Direction.REPLY
ATTACKER, INNOCENT, BACKEND = bytes([10, 0, 0, 66]), bytes([10, 0, 0, 7]), bytes([10, 0, 0, 9])
VIP = bytes([10, 96, 0, 20])


def connect(table: ConntrackTable, client: bytes, port: int, now: float):
    entry = table.create(FlowTuple(TCP, client, port, VIP, 80), now, dnat=(BACKEND, 8080))
    assert entry is not None
    table.update(entry, ORIG, now, SYN)
    table.update(entry, REPLY, now, SYN | ACK)
    return entry


def test_a_handshake_reset_by_its_client_waits_in_close_but_can_be_evicted():
    table = ConntrackTable(max_entries=2)
    entry = connect(table, ATTACKER, 40000, 0.0)
    assert entry.replied and not entry.assured
    table.update(entry, ORIG, 0.0, RST)
    assert entry.alive(1.0) and entry.tcp_state is TcpState.CLOSE
    answered = connect(table, INNOCENT, 40001, 1.0)  # in SYN_RECV: not evictable
    assert table.create(FlowTuple(TCP, INNOCENT, 40002, VIP, 80), 2.0) is not None
    assert not entry.alive(2.0) and answered.alive(2.0)
    assert table.statistics()["evictions"] == 1


def test_a_reset_of_an_established_connection_still_waits_in_close():
    table = ConntrackTable(max_entries=1024)
    entry = connect(table, INNOCENT, 40000, 0.0)
    table.update(entry, ORIG, 0.0, ACK)
    assert entry.assured
    table.update(entry, ORIG, 1.0, RST)
    assert entry.alive(1.0) and entry.tcp_state is TcpState.CLOSE
    assert table.statistics()["aborted"] == 0


def test_a_syn_flood_never_refuses_new_connections_nor_evicts_established_ones():
    table = ConntrackTable(max_entries=1024)
    established = connect(table, INNOCENT, 50000, 0.0)
    table.update(established, ORIG, 0.0, ACK)
    now = 0.0
    for port in range(1024, 1024 + 5000):  # five times the table, within a CLOSE timeout
        now += 0.001
        flood = connect(table, ATTACKER, port, now)
        table.update(flood, ORIG, now, RST)
    late = table.create(FlowTuple(TCP, INNOCENT, 50001, VIP, 80), now, dnat=(BACKEND, 8080))
    assert late is not None, table.statistics()
    assert established.alive(now) and established.tcp_state is TcpState.ESTABLISHED
    stats = table.statistics()
    assert stats["drops_full"] == 0 and len(table) <= table.max_entries, stats

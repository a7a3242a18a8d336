"""Connection state across restarts, sans I/O: a snapshot of the conntrack table, its NAT bindings,
labels and ClientIP affinity survives encode/decode/restore field for field; time left is carried
over minus the wall-clock time that passed; entries whose backend is gone are dropped and counted;
a damaged file is refused whole; a mid-stream segment of a forgotten connection is picked up (with
Maglev, to the same backend), and a backend's mid-stream reply of an unknown connection is dropped,
never forwarded untranslated. The runtime's file handling is tested at the end with trio."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from ipaddress import IPv4Address
from types import MappingProxyType

import pytest
import trio

from vswitch.core.presentation import conntrack_rows
from vswitch.model import Service, ServicePort
from vswitch.runtime.connection_state import ConnectionState
from vswitch.tables import conntrack_snapshot as snapshots
from vswitch.tables.conntrack import ConntrackTable, Direction, FlowTuple, TcpState
from vswitch.tables.conntrack_snapshot import SnapshotError
from vswitch.tables.services import ServiceTable
from tests.unit.daemon.support import Harness, make_topology, real_switch
from tests.unit.daemon.test_lifecycle import KeepingKernel
from tests.unit.test_pipeline_services import (
    A, A_IP, B, B_IP, C, C_IP, FAR, GW, NODE, UPLINK, VIP, _pod, _topology, connect, ip, mac,
    packet_of, ports_of, send)
from tests.unit.test_pipeline_services import _switch as services_switch

NODE_NAME = "unit"
WALL = 1_800_000_000.0


def _switch(accel_name, topology=None, seed=0):
    return services_switch(accel_name, topology, seed=seed)


def _maglev_topology(affinity=False):
    web = {"app": "web"}
    service = Service("web", cluster_ip=IPv4Address(VIP), type="NodePort",
                      selector=MappingProxyType(web), load_balancer="maglev",
                      session_affinity="ClientIP" if affinity else "None",
                      ports=(ServicePort("http", "tcp", 80, "http", 30080),))
    return _topology(services=(service,))


def _addresses(switch):
    nat = switch.nat
    return [a for a in (nat.node_address, nat.hairpin_address, nat.overlay_snat_address) if a]


def _snapshot(switch, now, wall=WALL, final=True):
    captured = snapshots.capture(switch.conntrack, switch.services, now)
    return snapshots.encode(captured, NODE_NAME, wall, final)


def _restore(data, switch, now, wall):
    return snapshots.restore(snapshots.decode(data, NODE_NAME), switch.conntrack, switch.services,
                             _addresses(switch), now, wall)


def _rows(switch, now):
    return sorted(conntrack_rows(switch, now), key=lambda row: row["description"])


def _handshake(switch, client_port, client_ip, vip, sport, now):
    """A whole TCP handshake through a service; the backend port it reached."""
    (tx,) = connect(switch, client_port, client_ip, vip, sport=sport, now=now)
    backend = {A: A_IP, B: B_IP}[tx.port]
    send(switch, tx.port, f"tcp {backend}:8080 > {client_ip}:{sport} flags SA", mac(backend),
         mac(client_ip), now)
    connect(switch, client_port, client_ip, vip, sport=sport, now=now, flags="A")
    return tx.port


def _busy_switch(accel_name):
    """Connections of every kind: an assured TCP one, a half-open one, a UDP one with a reply, a
    NodePort one (DNAT + SNAT to the node), a masqueraded one, an echo."""
    switch = _switch(accel_name, seed=1)
    _handshake(switch, C, C_IP, VIP, 40000, 1.0)
    connect(switch, C, C_IP, VIP, sport=40001, now=2.0)
    (tx,) = send(switch, C, f"udp {C_IP}:5000 > 10.96.0.53:53", mac(C_IP), mac(GW), 3.0)
    backend = {A: A_IP, B: B_IP}[tx.port]
    send(switch, tx.port, f"udp {backend}:5353 > {C_IP}:5000", mac(backend), mac(C_IP), 3.5)
    send(switch, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR), mac(NODE), 4.0)
    send(switch, C, f"tcp {C_IP}:41000 > 203.0.113.9:443 flags S", mac(C_IP), mac(GW), 5.0)
    send(switch, C, f"icmp {C_IP} > 203.0.113.9 id 7", mac(C_IP), mac(GW), 5.0)
    return switch


# -- round trip ------------------------------------------------------------------------------

def test_every_field_survives_a_round_trip(accel_name):
    old = _busy_switch(accel_name)
    data = _snapshot(old, now=10.0)
    new = _switch(accel_name, seed=2)
    result = _restore(data, new, now=500.0, wall=WALL)  # no wall-clock time passed
    assert (result.restored, result.expired, result.dropped) == (len(old.conntrack), 0, 0)
    # The same rows, as ordinary entries: tuples, NAT, state, flags, counters, labels, ages.
    assert _rows(new, 500.0) == _rows(old, 10.0)
    old_stats, new_stats = old.conntrack.statistics(), new.conntrack.statistics()
    for key in ("entries", "unreplied", "tcp_states", "protocols"):
        assert new_stats[key] == old_stats[key], key
    assert new_stats["restored"] == len(old.conntrack) and new_stats["created"] == 0
    assert dict(new.conntrack.reply_pairs) == dict(old.conntrack.reply_pairs)
    assert new.conntrack.port_key == old.conntrack.port_key
    # The indexes agree: every entry is found by both of its tuples, in its direction.
    for entry in new.conntrack.entries():
        assert new.conntrack.lookup(entry.original, 500.0)[1] is Direction.ORIGINAL
        assert new.conntrack.lookup(entry.reply, 500.0)[1] is Direction.REPLY
    assert new.conntrack.next_deadline() == pytest.approx(
        500.0 + old.conntrack.next_deadline() - 10.0)


def test_a_restored_connection_goes_on_translated_both_ways(accel_name):
    old = _switch(accel_name, seed=1)
    backend_port = _handshake(old, C, C_IP, VIP, 40000, 1.0)
    new = _switch(accel_name, seed=2)
    _restore(_snapshot(old, 2.0), new, now=0.5, wall=WALL + 1.0)
    (tx,) = connect(new, C, C_IP, VIP, sport=40000, now=0.6, flags="A")
    assert tx.port == backend_port
    backend = {A: A_IP, B: B_IP}[backend_port]
    (back,) = send(new, backend_port, f"tcp {backend}:8080 > {C_IP}:40000 flags A",
                   mac(backend), mac(C_IP), 0.7)
    _, header, packet = packet_of(back)
    assert header.src == ip(VIP) and ports_of(packet) == (80, 40000)
    assert new.conntrack.statistics()["created"] == 0


def test_nat_ports_stay_reserved_after_a_restore(accel_name):
    old = _switch(accel_name, seed=1)
    send(old, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR), mac(NODE), 1.0)
    (entry,) = old.conntrack.entries()
    new = _switch(accel_name, seed=2)
    _restore(_snapshot(old, 2.0), new, now=1.0, wall=WALL)
    # The same SNAT port is taken for that backend: another client may not have it.
    snat_ip, snat_port = entry.snat
    assert new.conntrack.allocate_port(6, snat_ip, entry.dnat[0], entry.dnat[1],
                                       preferred=snat_port) != snat_port


def test_affinity_survives_with_its_remaining_time(accel_name):
    old = _switch(accel_name, _maglev_topology(affinity=True), seed=1)
    (tx,) = connect(old, C, C_IP, VIP, sport=40000, now=1.0)
    (row,) = old.services.affinity_info(1.0)
    new = _switch(accel_name, _maglev_topology(affinity=True), seed=2)
    result = _restore(_snapshot(old, 101.0), new, now=7.0, wall=WALL + 50.0)
    assert (result.affinity_restored, result.affinity_dropped) == (1, 0)
    (restored,) = new.services.affinity_info(7.0)
    assert restored["backend"] == row["backend"]
    assert restored["expires_in"] == pytest.approx(row["expires_in"] - 100.0 - 50.0, abs=1e-3)


# -- time ------------------------------------------------------------------------------------

def test_time_left_is_what_was_left_minus_the_wall_clock_time_since(accel_name):
    old = _switch(accel_name, seed=1)
    connect(old, C, C_IP, VIP, sport=40000, now=0.0)  # SYN_SENT: 120 s
    data = _snapshot(old, now=20.0)  # 100 s left
    later = _switch(accel_name, seed=2)
    _restore(data, later, now=3.0, wall=WALL + 30.0)
    (row,) = conntrack_rows(later, 3.0)
    assert row["expires_in"] == pytest.approx(70.0)
    assert row["age"] == pytest.approx(50.0) and row["idle"] == pytest.approx(50.0)
    too_late = _switch(accel_name, seed=3)
    result = _restore(data, too_late, now=3.0, wall=WALL + 100.0)
    assert (result.restored, result.expired) == (0, 1)
    assert too_late.conntrack.statistics()["restore_expired"] == 1
    # A clock that stepped back adds no life.
    back = _switch(accel_name, seed=4)
    _restore(data, back, now=3.0, wall=WALL - 1000.0)
    assert conntrack_rows(back, 3.0)[0]["expires_in"] == pytest.approx(100.0)


# -- what no longer exists -------------------------------------------------------------------

def test_entries_whose_backend_is_gone_are_dropped_and_counted(accel_name):
    old = _switch(accel_name, seed=1)
    ports = {_handshake(old, C, C_IP, VIP, sport, 1.0) for sport in range(40000, 40040)}
    assert ports == {A, B}
    on_a = sum(1 for e in old.conntrack.entries() if e.dnat[0] == ip(A_IP))
    # Pod a is no longer a backend: its labels changed while the daemon was down.
    topology = _topology(pods=(_pod("a", A_IP, {}), _pod("b", B_IP, {"app": "web"}),
                               _pod("c", C_IP, {})))
    new = _switch(accel_name, topology, seed=2)
    result = _restore(_snapshot(old, 2.0), new, now=1.0, wall=WALL)
    assert result.dropped == on_a and result.restored == 40 - on_a
    assert result.reasons == {"its backend is no longer a ready endpoint of the service": on_a}
    assert all(e.dnat[0] == ip(B_IP) for e in new.conntrack.entries())
    assert new.conntrack.statistics()["restore_dropped"] == on_a


def test_entries_of_a_removed_service_are_dropped(accel_name):
    old = _switch(accel_name, seed=1)
    _handshake(old, C, C_IP, VIP, 40000, 1.0)
    new = _switch(accel_name, dataclasses.replace(_topology(), services=()), seed=2)
    result = _restore(_snapshot(old, 2.0), new, now=1.0, wall=WALL)
    assert result.reasons == {"its service frontend is gone": 1} and len(new.conntrack) == 0


def _deny_ingress_to_web():
    from vswitch.model import LabelSelector, NetworkPolicy
    web = LabelSelector(MappingProxyType({"app": "web"}))
    return dataclasses.replace(_topology(), network_policies=(
        NetworkPolicy("web-deny", pod_selector=web, policy_types=("Ingress",)),))


def test_restored_connections_the_policies_in_force_deny_are_cut(accel_name):
    """The previous run judged its connections by its own policies; a start with a policy that
    denies them cuts them once restored, counted for the policy, and keeps the others."""
    old = _busy_switch(accel_name)
    new = _switch(accel_name, _deny_ingress_to_web(), seed=2)
    result = _restore(_snapshot(old, 6.0), new, now=1.0, wall=WALL)
    assert result.restored == len(old.conntrack)
    # Pod C's connections through the services; the NodePort one is SNATed to the node, whose
    # traffic policies always allow.
    to_web = [e for e in new.conntrack.entries()
              if e.dnat is not None and e.original.src == IPv4Address(C_IP).packed]
    assert len(to_web) == 3, "the busy switch has three connections from C through services"
    assert new.programming.cut_denied(1.0) == len(to_web)
    assert not any(e.dnat is not None and e.original.src == IPv4Address(C_IP).packed
                   for e in new.conntrack.entries())
    assert len(new.conntrack) == len(old.conntrack) - len(to_web)
    assert new.programming.cut_denied(1.0) == 0


async def test_a_start_cuts_restored_connections_the_policies_deny(tmp_path, accel_name):
    old = _switch(accel_name, seed=1)
    _handshake(old, C, C_IP, VIP, 40000, 1.0)
    (tmp_path / f"{NODE_NAME}.connections").write_bytes(_snapshot(old, 2.0))
    allowed = _switch(accel_name, seed=2)
    await ConnectionState.of(_Topology(tmp_path), allowed, logging.getLogger("test")).restore()
    assert len(allowed.conntrack) == 1
    denied = _switch(accel_name, _deny_ingress_to_web(), seed=2)
    await ConnectionState.of(_Topology(tmp_path), denied, logging.getLogger("test")).restore()
    assert len(denied.conntrack) == 0


# -- damaged files ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], "truncated"),
    (lambda data: data[:30], "truncated"),
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum"),
    (lambda data: data[:200] + b"\0" + data[201:], "checksum"),
    (lambda data: b"garbage" + data, "not a vswitch connection snapshot"),
    (lambda data: b"", "not a vswitch connection snapshot"),
    (lambda data: data[:20] + b"\0\x02" + data[22:], "version 2"),
])
def test_damaged_files_are_refused_whole(accel_name, damage, message):
    data = _snapshot(_busy_switch(accel_name), 10.0)
    with pytest.raises(SnapshotError, match=message):
        snapshots.decode(damage(data), NODE_NAME)


def test_another_nodes_file_is_refused(accel_name):
    data = _snapshot(_busy_switch(accel_name), 10.0)
    with pytest.raises(SnapshotError, match="written by node 'unit', not 'other'"):
        snapshots.decode(data, "other")


def test_an_empty_table_round_trips():
    table, services = ConntrackTable(16), ServiceTable(__import__("random").Random(0))
    data = snapshots.encode(snapshots.capture(table, services, 0.0), NODE_NAME, WALL, False)
    snapshot = snapshots.decode(data, NODE_NAME)
    assert (snapshot.slots, snapshot.final) == (0, False)
    result = snapshots.restore(snapshot, ConntrackTable(16), services, [], 0.0, WALL)
    assert (result.restored, result.dropped) == (0, 0)


# -- loose pickup ----------------------------------------------------------------------------

def test_a_mid_stream_segment_reaches_the_same_backend_with_maglev(accel_name):
    before = _switch(accel_name, _maglev_topology(), seed=1)
    backends = {sport: _handshake(before, C, C_IP, VIP, sport, 1.0)
                for sport in range(40000, 40020)}
    assert set(backends.values()) == {A, B}
    after = _switch(accel_name, _maglev_topology(), seed=99)  # nothing saved, another seed
    for sport, backend_port in backends.items():
        (tx,) = connect(after, C, C_IP, VIP, sport=sport, now=1.0, flags="A")
        assert tx.port == backend_port
    stats = after.statistics()
    assert stats["stages"]["ip4-service"]["picked-up"] == 20
    assert stats["conntrack"]["picked_up"] == 20 and stats["conntrack"]["created"] == 0


def test_with_affinity_every_connection_of_a_client_is_picked_up_to_its_backend(accel_name):
    """Maglev under ClientIP affinity hashes the client alone: whichever of a client's
    connections is picked up first pins the backend the others had too."""
    before = _switch(accel_name, _maglev_topology(affinity=True), seed=1)
    first = _handshake(before, C, C_IP, VIP, 40000, 1.0)
    assert {_handshake(before, C, C_IP, VIP, sport, 1.0)
            for sport in range(40001, 40010)} == {first}
    for order in ((40007, 40000, 40003), (40000, 40009), (40004,)):
        after = _switch(accel_name, _maglev_topology(affinity=True), seed=99)
        for sport in order:
            (tx,) = connect(after, C, C_IP, VIP, sport=sport, now=1.0, flags="A")
            assert tx.port == first


def test_a_picked_up_connection_becomes_replied_then_assured(accel_name):
    switch = _switch(accel_name, seed=5)
    (tx,) = connect(switch, C, C_IP, VIP, sport=40000, now=1.0, flags="A")
    (entry,) = switch.conntrack.entries()
    assert entry.tcp_state is TcpState.ESTABLISHED and not entry.replied
    assert entry.expires == pytest.approx(1.0 + switch.conntrack.timeouts.syn_recv)
    backend = {A: A_IP, B: B_IP}[tx.port]
    (back,) = send(switch, tx.port, f"tcp {backend}:8080 > {C_IP}:40000 flags A",
                   mac(backend), mac(C_IP), 1.1)
    assert packet_of(back)[1].src == ip(VIP)
    assert entry.replied and not entry.assured
    assert entry.expires == pytest.approx(1.1 + switch.conntrack.timeouts.established)
    connect(switch, C, C_IP, VIP, sport=40000, now=1.2, flags="A")
    assert entry.assured


def test_only_the_ack_class_is_picked_up(accel_name):
    switch = _switch(accel_name, seed=5)
    for flags in ("F", "FA", "R", "RA", "SA"):
        assert connect(switch, C, C_IP, VIP, sport=40000, now=1.0, flags=flags) == []
    assert switch.statistics()["stages"]["ip4-service"]["invalid"] == 5
    assert len(switch.conntrack) == 0
    assert ConntrackTable.loose_pickup_allowed(0x18)  # PSH+ACK
    assert not ConntrackTable.loose_pickup_allowed(0x02)


def test_a_nodeport_connection_picked_up_keeps_the_clients_port(accel_name):
    before = _switch(accel_name, _maglev_topology(), seed=1)
    (first,) = send(before, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR),
                    mac(NODE), 1.0)
    after = _switch(accel_name, _maglev_topology(), seed=99)
    (again,) = send(after, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags A", mac(FAR),
                    mac(NODE), 1.0)
    assert again.port == first.port
    assert ports_of(packet_of(again)[2]) == ports_of(packet_of(first)[2])
    assert packet_of(again)[1].src == packet_of(first)[1].src == ip(NODE)


# -- the backend's side ----------------------------------------------------------------------

def test_a_backends_mid_stream_segment_to_a_snat_address_is_dropped(accel_name):
    before = _switch(accel_name, seed=1)
    (tx,) = send(before, UPLINK, f"tcp {FAR}:50000 > {NODE}:30080 flags S", mac(FAR),
                 mac(NODE), 1.0)
    backend = {A: A_IP, B: B_IP}[tx.port]
    sport, dport = ports_of(packet_of(tx)[2])
    after = _switch(accel_name, seed=2)
    assert send(after, tx.port, f"tcp {backend}:{dport} > {NODE}:{sport} flags A", mac(backend),
                mac(GW), 1.0) == []
    assert after.statistics()["stages"]["ip4-conntrack"]["unknown-backend-reply"] == 1


def test_a_backends_reply_is_dropped_only_while_the_table_is_incomplete(accel_name):
    """Routed (the client is outside): untranslated, the client would answer with a RST."""
    switch = _switch(accel_name, seed=1)
    segment = f"tcp {A_IP}:8080 > {FAR}:50000 flags A"
    switch.conntrack.incomplete_until = 10.0
    assert send(switch, A, segment, mac(A_IP), mac(GW), 1.0) == []
    assert switch.statistics()["stages"]["ip4-conntrack"]["unknown-backend-reply"] == 1
    # Later, such a segment may be of a connection made to the pod's own address: it goes on
    # (here to masquerade, which has no connection for it either).
    send(switch, A, segment, mac(A_IP), mac(GW), 10.0)
    stages = switch.statistics()["stages"]
    assert stages["ip4-conntrack"]["unknown-backend-reply"] == 1
    assert stages["ip4-masquerade"]["invalid"] == 1
    # A SYN-ACK or a port that is no backend is never in question.
    switch.conntrack.incomplete_until = 100.0
    send(switch, A, f"tcp {A_IP}:8080 > {FAR}:50001 flags SA", mac(A_IP), mac(GW), 11.0)
    send(switch, A, f"tcp {A_IP}:22 > {FAR}:50001 flags A", mac(A_IP), mac(GW), 11.0)
    stages = switch.statistics()["stages"]
    assert stages["ip4-conntrack"]["unknown-backend-reply"] == 1
    assert stages["ip4-masquerade"]["invalid"] == 3


# -- the runtime's file ------------------------------------------------------------------------

class _Topology:
    def __init__(self, state_dir):
        self.control = type("Control", (), {"state_dir": str(state_dir)})()
        self.node = type("Node", (), {"name": NODE_NAME})()


# Under trio's mock clock, which starts at 0 as the switches' clock in these tests does.

async def test_the_runtime_saves_atomically_and_restores(tmp_path, accel_name, mock_clock):
    old = _busy_switch(accel_name)
    log = logging.getLogger("test")
    state = ConnectionState.of(_Topology(tmp_path), old, log)
    assert await state.restore() is None  # nothing saved yet
    assert old.conntrack.incomplete_until == 0.0  # a first start misses nothing
    await state.save_final()
    assert os.listdir(tmp_path) == ["unit.connections"]
    assert os.stat(tmp_path / "unit.connections").st_mode & 0o777 == 0o600
    new = _switch(accel_name, seed=2)
    result = await ConnectionState.of(_Topology(tmp_path), new, log).restore()
    assert result.restored == len(old.conntrack) == len(new.conntrack)
    assert new.conntrack.incomplete_until == 0.0  # a final snapshot misses nothing


async def test_the_runtime_starts_without_a_damaged_file(tmp_path, accel_name, caplog,
                                                         mock_clock):
    (tmp_path / "unit.connections").write_bytes(b"VSWITCH-CONNECTIONS\n\0\1\0\0\0\5{}")
    switch = _switch(accel_name, seed=2)
    state = ConnectionState.of(_Topology(tmp_path), switch, logging.getLogger("test"))
    assert await state.restore() is None
    assert "saved connections not used" in caplog.text
    assert os.listdir(tmp_path) == ["unit.connections.bad"]
    assert switch.conntrack.incomplete_until > trio.current_time()


async def test_a_periodic_snapshot_marks_the_table_incomplete(tmp_path, accel_name, mock_clock):
    mock_clock.autojump_threshold = 0
    old = _busy_switch(accel_name)
    log = logging.getLogger("test")
    state = ConnectionState(str(tmp_path), NODE_NAME, old, log, interval=0.01)
    with trio.move_on_after(0.2):
        await state.run()
    assert state.written >= 1
    new = _switch(accel_name, seed=2)
    await ConnectionState.of(_Topology(tmp_path), new, log).restore()
    assert len(new.conntrack) == len(old.conntrack)
    assert new.conntrack.incomplete_until > trio.current_time()


async def test_discarding_removes_the_file_and_a_damaged_one(tmp_path, accel_name, mock_clock):
    (tmp_path / "unit.connections.bad").write_bytes(b"x")
    state = ConnectionState.of(_Topology(tmp_path), _busy_switch(accel_name),
                               logging.getLogger("test"))
    await state.restore()
    await state.save_final()
    state.discard()
    assert os.listdir(tmp_path) == []


# -- the daemon's hooks ------------------------------------------------------------------------

async def _run_until(harness, signum, check=None):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await harness.start(nursery, save_connections=True)
            if check is not None:
                check(harness.switch)
            os.kill(os.getpid(), signum)


async def test_the_daemon_restores_before_forwarding_and_saves_at_sigterm(tmp_path):
    topology = make_topology(tmp_path)
    earlier = real_switch(topology)
    flow = FlowTuple(6, ip("10.244.1.10"), 40000, ip("10.244.1.11"), 80)
    earlier.conntrack.create(flow, 0.0)
    (tmp_path / "t1.connections").write_bytes(snapshots.encode(
        snapshots.capture(earlier.conntrack, earlier.services, 0.0), "t1", time.time(), True))

    def restored(switch):
        (entry,) = switch.conntrack.entries()
        assert entry.original == flow
        assert switch.conntrack.statistics()["restored"] == 1

    harness = Harness(topology)
    harness.kernel = KeepingKernel()
    await _run_until(harness, signal.SIGTERM, restored)
    # SIGTERM keeps the pods, and their connections for the next start, in a final snapshot.
    assert snapshots.decode((tmp_path / "t1.connections").read_bytes(), "t1").final
    again = Harness(topology)
    await _run_until(again, signal.SIGINT, restored)
    # SIGINT removes the pods, and their connections with them.
    assert not (tmp_path / "t1.connections").exists()

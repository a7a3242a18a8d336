"""The connection table's storage: fields in per-slot arrays, entries as views made on demand,
views that outlive their connection, interned labels, the slot deadline heap, and the same
behaviour whichever accel holds the tuple index."""
from __future__ import annotations

import gc
import random
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vswitch import accel
from vswitch.tables.conntrack import ConntrackTable, Direction, Entry, FlowTuple, TcpState
from vswitch.tables.conntrack_labels import LabelSets
from vswitch.tables.deadlines import SlotDeadlines
from vswitch.tables.shared_slots import shared_array

TCP, UDP, ICMP = 6, 17, 1
SYN, ACK, RST = 0x02, 0x10, 0x04
ORIG, REPLY = Direction.ORIGINAL, Direction.REPLY
ACCELS = pytest.mark.parametrize("accel_name", ["pure", "native"])


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


CLIENT = ip("10.244.1.10")
VIP = ip("10.96.0.10")
BACKEND = ip("10.244.1.20")


def flow(port: int, proto: int = TCP) -> FlowTuple:
    return FlowTuple(proto, CLIENT, port, VIP, port if proto == ICMP else 80)


def live_entries() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Entry)


@ACCELS
def test_a_tracked_connection_holds_no_python_object(accel_name):
    table = ConntrackTable(max_entries=64, accel=accel.load(accel_name))
    gc.collect()
    before = live_entries()
    for port in range(40000, 40032):
        entry = table.create(flow(port), 0.0, dnat=(BACKEND, 8080),
                             labels={"service": "default/web", "backend": "web-1"})
        table.update(entry, ORIG, 0.0, SYN)
    del entry
    gc.collect()
    assert len(table) == 32 and live_entries() == before and not any(ref() for ref in table._views.values())
    assert len(table._labels) == 1  # 32 connections, one label set
    found, direction = table.lookup(flow(40007), 1.0)
    assert direction is ORIG and found.dnat == (BACKEND, 8080)
    assert found.labels == {"service": "default/web", "backend": "web-1"}
    assert found.tcp_state is TcpState.SYN_SENT and found.packets == [1, 0]


def test_two_views_of_one_connection_are_equal():
    table = ConntrackTable(max_entries=8)
    created = table.create(flow(40000), 0.0, dnat=(BACKEND, 8080))
    by_reply, direction = table.lookup(created.reply, 0.0)
    assert direction is REPLY and by_reply is created  # one live view per slot
    other = Entry.view(table, created.slot, table.slots.incarnation[created.slot])
    assert other == created and hash(other) == hash(created) and other is not created
    assert {created: 1}[other] == 1
    second = table.create(flow(40001), 0.0)
    assert second != created


def test_a_view_that_outlives_its_connection_keeps_its_last_values():
    table = ConntrackTable(max_entries=1)
    old = table.create(flow(40000), 0.0, dnat=(BACKEND, 8080), labels={"kind": "service"})
    table.update(old, ORIG, 0.5, SYN)
    table.update(old, REPLY, 0.6, SYN | ACK, length=60)
    slot, key = old.slot, hash(old)
    table.remove(old)
    new = table.create(flow(40001, UDP), 2.0, labels={"kind": "other"})
    table.update(new, ORIG, 2.0, length=100)
    assert new.slot == slot  # the same slot, a new incarnation
    assert not old.alive(2.0) and old.slot == -1 and hash(old) == key and old != new
    assert old.original == flow(40000) and old.dnat == (BACKEND, 8080)
    assert old.tcp_state is TcpState.SYN_RECV and old.replied
    assert old.packets == [1, 1] and old.bytes == [0, 60] and old.last_seen == 0.6
    assert old.created == 0.0 and old.labels == {"kind": "service"}
    assert new.original == flow(40001, UDP) and new.packets == [1, 0] and new.alive(2.0)
    assert table.update(old, ORIG, 3.0, ACK).name == "INVALID"
    assert new.packets == [1, 0]


def test_expired_entries_come_back_as_snapshots():
    table = ConntrackTable(max_entries=4)
    entry = table.create(flow(40000, UDP), 0.0)
    (gone,) = table.expire(30.0)
    assert gone is entry and not gone.alive(0.0) and gone.expires == 30.0 and gone.slot == -1


def test_flush_endpoint_matches_the_dnat_address_only():
    table = ConntrackTable(max_entries=8)
    # Traffic *from* the backend's address to a service: BACKEND appears in the tuples but is
    # not the DNAT target.
    from_backend = table.create(FlowTuple(TCP, BACKEND, 40000, VIP, 80), 0.0,
                                dnat=(ip("10.244.1.30"), 8080))
    to_backend = table.create(flow(40001), 0.0, dnat=(BACKEND, 8080))
    snat_only = table.create(flow(40002), 0.0, snat=(BACKEND, 40002))
    assert table.flush_endpoint(BACKEND) == 1
    assert set(table.entries()) == {from_backend, snat_only} and not to_backend.alive(0.0)


def test_eviction_skips_answered_and_reused_slots():
    table = ConntrackTable(max_entries=3)
    first = table.create(flow(40000), 0.0)
    second = table.create(flow(40001), 0.0)
    table.update(first, ORIG, 0.0, SYN)
    table.update(first, REPLY, 0.0, SYN | ACK)  # answered: never evicted
    table.remove(second)
    third = table.create(flow(40002), 0.0)  # takes second's slot
    fourth = table.create(flow(40003), 0.0)
    fifth = table.create(flow(40004), 0.0)  # full: the oldest unreplied is third
    assert fifth is not None and not third.alive(0.0)
    assert set(table.entries()) == {first, fourth, fifth}
    assert table.statistics()["evictions"] == 1 and table.statistics()["unreplied"] == 2


@ACCELS
def test_both_accels_give_the_same_table(accel_name):
    rng = random.Random(9)
    tables = [ConntrackTable(max_entries=16, accel=accel.load("pure")),
              ConntrackTable(max_entries=16, accel=accel.load(accel_name))]
    now = 0.0
    for _ in range(400):
        port = 40000 + rng.randrange(24)
        proto = TCP if port % 2 else UDP
        op = rng.random()
        now += rng.choice([0.0, 1.0, 20.0])
        results = []
        for table in tables:
            if op < 0.4:
                made = table.create(flow(port, proto), now,
                                    dnat=(BACKEND, 8080) if port % 3 else None)
                results.append(made is not None and made.original == flow(port, proto))
            elif op < 0.8:
                hit = table.lookup(flow(port, proto), now)
                if hit is not None:
                    entry, direction = hit
                    flags = SYN if entry.original.proto == TCP else None
                    results.append(table.update(entry, direction, now, flags).name)
                else:
                    results.append(None)
            elif op < 0.9:
                results.append(len(table.expire(now)))
            else:
                results.append(table.flush_endpoint(BACKEND))
        assert results[0] == results[1]
        first, second = ([e.as_dict(now) for e in t.entries()] for t in tables)
        assert first == second
        assert tables[0].statistics() == tables[1].statistics()
        assert tables[0].next_deadline() == tables[1].next_deadline()


# -- the slot deadline heap against brute force ---------------------------------------------------

DEADLINE_OPERATIONS = st.lists(st.tuples(
    st.sampled_from(["schedule", "postpone", "discard", "pop"]),
    st.integers(0, 19), st.integers(0, 50)), max_size=120)


@settings(max_examples=200, deadline=None)
@given(DEADLINE_OPERATIONS)
def test_slot_deadlines_match_brute_force(operations):
    true = shared_array("d", 20)
    heap = SlotDeadlines(20, true)
    tracked: dict[int, float] = {}
    for kind, slot, value in operations:
        at = float(value)
        if kind == "schedule":
            if slot not in tracked or at < true[slot]:
                true[slot] = at
                tracked[slot] = at
                heap.schedule(slot, at)
        elif kind == "postpone" and slot in tracked:
            true[slot] = tracked[slot] = true[slot] + at  # later: no call needed
        elif kind == "discard":
            tracked.pop(slot, None)
            heap.discard(slot)
        elif kind == "pop":
            due = heap.pop_due(at)
            assert sorted(due) == sorted(s for s, d in tracked.items() if d <= at)
            assert [true[s] for s in due] == sorted(true[s] for s in due)  # earliest first
            for s in due:
                del tracked[s]
        assert heap.next_deadline() == min(tracked.values(), default=None)
        assert len(heap) == len(tracked)
        assert all((s in heap) == (s in tracked) for s in range(20))


def test_label_sets_share_equal_dicts_and_forget_the_last_reference():
    sets = LabelSets()
    web = sets.intern({"service": "default/web", "backend": "web-1"})
    again = sets.intern({"service": "default/web", "backend": "web-1"})
    other = sets.intern({"service": "default/web", "backend": "web-2"})
    odd = sets.intern({"ports": [80, 443]})  # unhashable: stored on its own
    odd_again = sets.intern({"ports": [80, 443]})
    assert web == again != other and odd != odd_again and len(sets) == 4
    assert sets.get(odd) == {"ports": [80, 443]}
    sets.release(web)
    assert sets.get(again) == {"service": "default/web", "backend": "web-1"}
    sets.release(again)
    assert len(sets) == 3
    reused = sets.intern({"service": "default/db"})
    assert reused == web and sets.get(reused) == {"service": "default/db"}
    assert sets.intern({"service": "default/web", "backend": "web-1"}) not in (other, reused)


def test_label_sets_share_keys_and_strings_between_sets():
    sets = LabelSets()
    first = sets.intern({"service": "default/" + "web", "backend": "web-1"})
    second = sets.intern({"service": "default/" + "web", "backend": "web-2"})
    assert sets.get(first)["service"] is sets.get(second)["service"]
    assert sets._keys[first] is sets._keys[second]
    labels = sets.get(first)
    labels["service"] = "changed"  # a copy: the set is not changed
    assert sets.get(first)["service"] == "default/web"
    for n in range(3000):  # the string table is rebuilt from the live sets, not kept growing
        sets.release(sets.intern({"service": f"s{n}"}))
    assert len(sets._strings) < 2100 and len(sets) == 2


def test_reply_pairs_read_as_address_pairs():
    table = ConntrackTable(max_entries=8)
    entry = table.create(flow(40000), 0.0, dnat=(BACKEND, 8080))
    table.create(flow(40001), 0.0, dnat=(BACKEND, 8080))
    pairs = table.reply_pairs
    assert (BACKEND, CLIENT) in pairs and (CLIENT, BACKEND) not in pairs and "x" not in pairs
    assert pairs[(BACKEND, CLIENT)] == 2 and list(pairs) == [(BACKEND, CLIENT)]
    assert len(pairs) == 1 and dict(pairs) == {(BACKEND, CLIENT): 2}
    table.remove(entry)
    assert dict(pairs) == {(BACKEND, CLIENT): 1}


@ACCELS
def test_the_tuple_index_grows_with_the_connections(accel_name):
    table = ConntrackTable(max_entries=20000, accel=accel.load(accel_name))
    first = table._index.capacity
    made = []
    for n in range(5000):
        client = bytes([10, 244, 2 + n // 250, n % 250])
        made.append(table.create(FlowTuple(UDP, client, 5000, VIP, 53), 0.0,
                                 dnat=(BACKEND, 53) if n % 2 else None))
    assert first < table._index.capacity <= 40000 and len(table._index) == 10000
    for n in (0, 1, 4098, 4999):
        entry = made[n]
        assert table.lookup(entry.original, 1.0) == (entry, ORIG)
        assert table.lookup(entry.reply, 1.0) == (entry, REPLY)
    assert table.flush_endpoint(BACKEND) == 2500 and len(table._index) == 5000

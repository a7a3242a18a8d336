"""The FDB and neighbour table keep their entries in the native exact-match table: behaviour at
the edges (slot reuse, a full table) against both implementations."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vswitch import accel as accel_impls
from vswitch.tables.fdb import Fdb, LearnResult
from vswitch.tables.neighbors import NeighborTable, ResolveResult
from vswitch.tables.object_table import ObjectTable


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_impls.load(request.param)


def test_object_table_reuses_slots_and_refuses_when_full(accel):
    table = ObjectTable(accel, 4, 4)
    keys = [bytes([0, 0, 0, i]) for i in range(64)]
    stored = [k for k in keys if table.put(k, k.hex())]
    assert 4 <= len(stored) < 64  # the C table rounds capacity up, then refuses
    assert all(table.get(k) == k.hex() for k in stored)
    assert table.put(stored[0], "replaced") and table.get(stored[0]) == "replaced"
    assert table.pop(stored[1]) == stored[1].hex() and table.get(stored[1]) is None
    assert table.put(keys[-1], "again") or keys[-1] in stored
    assert len(table) == len(list(table.values()))


def test_fdb_full_table_refuses_new_macs_like_the_port_limit(accel):
    fdb = Fdb(aging=300, mac_limit=10_000, accel=accel, capacity=8)
    results = [fdb.learn(0, bytes([2, 0, 0, 0, 0, i]), 1, 0.0)[0] for i in range(64)]
    assert LearnResult.LIMIT in results
    learned = results.count(LearnResult.NEW)
    assert len(fdb) == learned and fdb.count_on_port(1) == learned


def test_same_mac_in_two_segments_is_two_entries(accel):
    fdb = Fdb(aging=300, mac_limit=8, accel=accel)
    mac = bytes.fromhex("0a580af4010a")
    fdb.learn(0, mac, 1, 0.0)
    fdb.learn(1, mac, 2, 0.0)
    assert fdb.lookup(0, mac, 1.0).port == 1 and fdb.lookup(1, mac, 1.0).port == 2


def test_neighbour_table_full_refuses_a_new_next_hop(accel):
    table = NeighborTable(accel=accel, capacity=4)
    results = [table.resolve(0, bytes([10, 0, 0, i]), f"packet {i}", 0.0)[0] for i in range(64)]
    assert ResolveResult.FULL in results
    assert len(table) == results.count(ResolveResult.PROBE)


# -- FDB aging: the lazy heap against a scan of the table ---------------------------------------

_FDB_STEPS = st.lists(st.tuples(
    st.sampled_from(["learn", "expire", "flush"]),
    st.integers(0, 5),      # MAC
    st.integers(1, 3),      # port
    st.floats(0, 40),       # time advance
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_FDB_STEPS)
def test_fdb_aging_heap_equals_a_scan(steps):
    fdb = Fdb(aging=30, mac_limit=100)
    now = 0.0
    for action, mac_index, port, advance in steps:
        now += advance
        mac = bytes([2, 0, 0, 0, 0, mac_index])
        if action == "learn":
            fdb.learn(0, mac, port, now)
        elif action == "flush":
            fdb.flush_port(port)
        else:
            alive_before = {e.mac for e in fdb.entries() if now - e.last_seen < fdb.aging}
            fdb.expire(now)
            assert {e.mac for e in fdb.entries()} == alive_before
        expected = min((e.last_seen + fdb.aging for e in fdb.entries()), default=None)
        assert fdb.next_expiry() == expected


# -- held fragments ---------------------------------------------------------------------------

def test_fragment_hold_is_bounded_per_datagram_and_in_total():
    from vswitch.tables.fragments import FirstFragment, FragmentTable

    hold = FragmentTable(hold_timeout=5.0, max_frames=4, max_per_datagram=3)
    one, two = (17, b"a" * 4, b"b" * 4, 1), (17, b"a" * 4, b"b" * 4, 2)
    assert all(hold.hold(one, 1, bytes([i]), 0.0) for i in range(3))
    assert not hold.hold(one, 1, b"x", 0.0)  # a fourth fragment of the same datagram
    assert hold.hold(two, 2, b"y", 1.0)
    assert not hold.hold(two, 2, b"z", 1.0)  # four frames in all
    assert hold.statistics() == {"waiting_datagrams": 2, "waiting_frames": 4, "held": 4,
                                 "released": 0, "expired": 0, "refused": 2}
    assert not hold.take_released()
    hold.record(one, FirstFragment.UNTRANSLATED, 1.0)  # its first fragment came: released
    assert list(hold.take_released()) == [(1, b"\x00"), (1, b"\x01"), (1, b"\x02")]  # arrival order
    hold.record(one, FirstFragment.UNTRANSLATED, 1.0)
    assert not hold.take_released()
    assert hold.next_deadline() == 6.0  # the datagram's first held fragment sets it
    assert hold.expire(5.9) == 0 and hold.expire(6.0) == 1
    assert len(hold) == 0 and hold.statistics()["expired"] == 1


def test_first_fragment_outcomes_expire_and_are_bounded():
    from vswitch.tables.fragments import FirstFragment, FragmentTable

    table = FragmentTable(outcome_timeout=30.0, max_datagrams=2)
    keys = [(17, b"a" * 4, b"b" * 4, n) for n in range(3)]
    table.record(keys[0], FirstFragment.DROPPED, 0.0)
    assert table.outcome(keys[0], 29.9).kind is FirstFragment.DROPPED
    assert table.outcome(keys[0], 30.0) is None  # later fragments no longer follow it
    table.record(keys[1], FirstFragment.UNTRANSLATED, 10.0)
    table.record(keys[2], FirstFragment.UNTRANSLATED, 31.0)  # full: the expired one goes first
    assert table.outcome(keys[1], 31.0) is not None and table.outcome(keys[2], 31.0) is not None
    table.record(keys[0], FirstFragment.UNTRANSLATED, 32.0)  # full of live ones: starts over
    assert table.outcome(keys[1], 32.0) is None and table.outcome(keys[0], 32.0) is not None


# -- the deadline heap ------------------------------------------------------------------------

_DEADLINE_STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 7), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("discard"), st.integers(0, 7)),
    st.tuples(st.just("pop_due"), st.integers(0, 60)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(_DEADLINE_STEPS)
def test_deadline_heap_equals_a_scan(steps):
    """Owners keep the true deadlines; moving one later may skip ``schedule``, moving one earlier
    (or adding a key) may not. Whatever the mix, the heap answers what a scan of them would."""
    from vswitch.tables.deadlines import DeadlineHeap

    deadlines: dict[int, float] = {}
    heap = DeadlineHeap(deadlines.__getitem__)
    for step in steps:
        if step[0] == "set":
            _, key, deadline, tell = step
            earlier = key not in deadlines or deadline < deadlines[key]
            deadlines[key] = float(deadline)
            if earlier or tell:
                heap.schedule(key, float(deadline))
        elif step[0] == "discard":
            deadlines.pop(step[1], None)
            heap.discard(step[1])
        else:
            now = float(step[1])
            due = sorted((d, k) for k, d in deadlines.items() if d <= now)
            popped = heap.pop_due(now)
            assert sorted(popped) == sorted(k for _, k in due)
            assert [deadlines[k] for k in popped] == [d for d, _ in due]  # earliest first
            for key in popped:
                del deadlines[key]
        assert heap.next_deadline() == min(deadlines.values(), default=None)
        assert len(heap) == len(deadlines)
        assert len(heap._heap) <= 2 * len(deadlines) + 65

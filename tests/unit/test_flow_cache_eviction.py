"""The flow cache's bounds: the sweep of idle entries and the eviction clock of a full cache,
the pure ``FlowCache`` against the C datapath's table, slot for slot.

The two must agree on every program of installs, lookups and sweeps: which lookups find their
entry, how many entries there are, how many were evicted and swept. (Whole switches with small
caches, where the two install different entries, are held to the pipeline's answers in
test_flow_cache_parity_services.py.)
"""
from __future__ import annotations

import math

from hypothesis import given, settings, strategies as st

from vswitch.core import fast_path
from vswitch.core.flow_cache import FLOW_IDLE, CacheEntry, FlowCache

from .test_datapath_engine import NOW, Harness, frame, key_of

FLOWS = [frame(dst=f"10.244.1.{10 + i}") for i in range(8)]
KEYS = [key_of(1, data, 10) for data in FLOWS]
GENERATION = 5  # Harness installs under this generation


def _entry() -> CacheEntry:
    """A switched decision; the lookup looks at its generation and kind only."""
    return CacheEntry(GENERATION, 2, None, None)


def _found(cache: FlowCache, flow: int) -> bool:
    entry, _ = fast_path.lookup(cache.entries, KEYS[flow], FLOWS[flow], 10, GENERATION)
    return entry is not None


_OP = st.one_of(st.tuples(st.just("install"), st.integers(0, len(FLOWS) - 1)),
                st.tuples(st.just("lookup"), st.integers(0, len(FLOWS) - 1)),
                st.tuples(st.just("sweep"), st.just(0)))


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 5), program=st.lists(_OP, max_size=60))
def test_the_pure_cache_evicts_and_sweeps_as_the_c_table_does(capacity, program):
    pure = FlowCache(capacity)
    native = Harness(flow_capacity=capacity)
    for op, flow in program:
        if op == "install":
            pure.install(KEYS[flow], _entry())
            native.install(KEYS[flow])
        elif op == "lookup":
            assert _found(pure, flow) == (native.dp.process(1, FLOWS[flow], NOW)[0] > 0)
        else:
            assert pure.sweep() == native.dp.sweep()
        stats, c_stats = pure.statistics(), native.dp.stats()
        assert (stats.entries, stats.evictions, stats.swept, stats.installs) == (
            c_stats["entries"], c_stats["evictions"], c_stats["swept"], c_stats["installs"])
        assert stats.entries <= capacity


def test_a_full_cache_evicts_the_first_idle_entry_the_hand_reaches():
    cache = FlowCache(3)
    for flow in range(3):
        cache.install(KEYS[flow], _entry())
    cache.install(KEYS[3], _entry())  # all were used: the hand marks them idle, then takes 0
    assert set(cache.entries) == {KEYS[1], KEYS[2], KEYS[3]}
    assert _found(cache, 1)
    cache.install(KEYS[4], _entry())  # the hand is at 1, used again: it passes on to 2
    assert set(cache.entries) == {KEYS[1], KEYS[3], KEYS[4]}
    assert cache.statistics().evictions == 2


def test_replacing_an_entry_keeps_its_slot_and_evicts_nothing():
    cache = FlowCache(2)
    cache.install(KEYS[0], _entry())
    cache.install(KEYS[1], _entry())
    replacement = _entry()
    cache.install(KEYS[0], replacement)
    assert cache.entries[KEYS[0]] is replacement and replacement.slot == 0
    assert cache.statistics().evictions == 0


def test_a_flow_that_stops_is_swept_after_one_to_two_periods():
    cache = FlowCache()
    cache.install(KEYS[0], _entry())
    cache.install(KEYS[1], _entry())
    now = 100.0
    assert cache.expire(now) == 0 and cache.next_sweep == now + FLOW_IDLE
    assert cache.expire(now + FLOW_IDLE / 2) == 0  # not due
    assert cache.expire(now + FLOW_IDLE) == 0  # due: both were used since installed
    assert _found(cache, 0)  # flow 0 runs on, flow 1 has stopped
    assert cache.expire(now + 2 * FLOW_IDLE) == 1
    assert list(cache.entries) == [KEYS[0]] and cache.statistics().swept == 1
    assert cache.next_sweep == now + 3 * FLOW_IDLE


def test_an_entry_of_an_old_generation_is_never_marked_and_goes_at_the_next_sweep():
    cache = FlowCache()
    cache.install(KEYS[0], _entry())
    cache.sweep()
    assert fast_path.lookup(cache.entries, KEYS[0], FLOWS[0], 10, GENERATION + 1) == (None, None)
    assert cache.sweep() == 1


def test_a_flush_empties_the_cache_at_once_and_counts():
    cache = FlowCache(2)
    cache.install(KEYS[0], _entry())
    cache.clear()
    cache.install(KEYS[1], _entry())
    stats = cache.statistics()
    assert (stats.entries, stats.flushes, stats.evictions) == (1, 1, 0)
    assert cache.entries[KEYS[1]].slot == 0


def test_a_cache_of_capacity_zero_holds_nothing():
    cache = FlowCache(0)
    cache.install(KEYS[0], _entry())
    assert cache.statistics().entries == 0
    assert cache.next_sweep is None
    assert cache.expire(math.inf) == 0

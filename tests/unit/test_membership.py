"""The pure parts of node membership: record encoding, view differences, backoff, subnet order."""
from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch.membership.members import (Backoff, ChangeKind, NodeRecord, diff_views,
                                        lease_refresh_interval)
from vswitch.membership.subnets import candidate_order


def record(name: str, cidr: str = "10.244.2.0/24", address: str = "192.0.2.2") -> NodeRecord:
    return NodeRecord(name, IPv4Network(cidr), IPv4Address(address), "0a:58:c0:00:02:02",
                      ("10.244.2.10:8080",))


def test_a_record_survives_its_json():
    rec = record("n2")
    assert NodeRecord.from_json(rec.to_json()) == rec


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"name": "x"}',
                                 b'{"name": "x", "pod_cidr": "10.0.0.1/24", "address": "1.2.3.4",'
                                 b' "vtep_mac": "m"}'])
def test_a_malformed_record_is_a_value_error(raw):
    with pytest.raises(ValueError):
        NodeRecord.from_json(raw)


def test_diff_views_names_joins_changes_and_departures_in_name_order():
    old = {"a": record("a"), "b": record("b"), "c": record("c")}
    moved = record("b", address="192.0.2.9")
    new = {"b": moved, "c": record("c"), "d": record("d")}
    changes = diff_views(old, new)
    assert [(c.kind, c.record.name) for c in changes] == [
        (ChangeKind.LEFT, "a"), (ChangeKind.CHANGED, "b"), (ChangeKind.JOINED, "d")]
    assert changes[0].record == old["a"]  # a departure carries the last record known
    assert changes[1].record == moved
    assert diff_views(new, new) == []


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(random.Random(1), initial=0.2, cap=3.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0, 3.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    backoff.reset()
    assert 0.1 <= backoff.next_delay() <= 0.2
    again = Backoff(random.Random(1), initial=0.2, cap=3.0)
    assert [again.next_delay() for _ in range(8)] == delays  # the seed decides the jitter


def test_the_lease_is_refreshed_well_before_it_runs_out():
    for ttl in (3, 10, 60):
        assert 0 < lease_refresh_interval(ttl) <= ttl / 2


def test_candidate_order_covers_the_pool_once_from_a_name_derived_start():
    pool = IPv4Network("10.244.0.0/16")
    order = candidate_order(pool, 24, "node-a")
    assert sorted(order) == list(pool.subnets(new_prefix=24))
    assert candidate_order(pool, 24, "node-a") == order
    starts = {candidate_order(pool, 24, f"node-{i}")[0] for i in range(20)}
    assert len(starts) > 10  # different nodes start in different places

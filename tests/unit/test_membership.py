"""The pure parts of node membership: record encoding, view differences, backoff, subnet order."""
from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from vswitch.membership.members import (Backoff, ChangeKind, NodeRecord, diff_views,
                                        lease_refresh_interval)
from vswitch.membership.records import EndpointRecord
from vswitch.membership.subnets import candidate_order


def record(name: str, cidr: str = "10.244.2.0/24", address: str = "192.0.2.2") -> NodeRecord:
    web = EndpointRecord("web-1", IPv4Address("10.244.2.10"), {"app": "web"},
                         {"http": ("tcp", 8080)})
    return NodeRecord(name, IPv4Network(cidr), IPv4Address(address), "0a:58:c0:00:02:02",
                      (web,))


def test_a_record_survives_its_json():
    rec = record("n2")
    assert NodeRecord.from_json(rec.to_json()) == rec


def test_a_record_carries_its_ready_pods_as_objects():
    data = json.loads(record("n2").to_json())
    assert data["ready_endpoints"] == [{"name": "web-1", "namespace": "default", "ip": "10.244.2.10",
                                        "labels": {"app": "web"},
                                        "ports": {"http": {"protocol": "tcp", "port": 8080}}}]


def test_a_record_of_an_older_node_lists_its_endpoints_as_strings():
    raw = json.dumps({"name": "n2", "pod_cidr": "10.244.2.0/24", "address": "192.0.2.2",
                      "vtep_mac": "0a:58:c0:00:02:02",
                      "ready_endpoints": ["10.244.2.10:8080", "10.244.2.11"]}).encode()
    endpoints = NodeRecord.from_json(raw).ready_endpoints
    assert [(e.name, e.ip, dict(e.labels), dict(e.ports)) for e in endpoints] == [
        ("10.244.2.10", IPv4Address("10.244.2.10"), {}, {}),
        ("10.244.2.11", IPv4Address("10.244.2.11"), {}, {})]


_GOOD_HEAD = (b'{"name": "x", "pod_cidr": "10.0.0.0/24", "address": "1.2.3.4", "vtep_mac": "m", '
              b'"ready_endpoints": ')


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"name": "x"}',
                                 b'{"name": "x", "pod_cidr": "10.0.0.1/24", "address": "1.2.3.4",'
                                 b' "vtep_mac": "m"}',
                                 _GOOD_HEAD + b'[1]}', _GOOD_HEAD + b'[{"name": "a"}]}',
                                 _GOOD_HEAD + b'[{"name": "a", "ip": "10.0.0.300"}]}',
                                 _GOOD_HEAD + b'[{"name": "a", "ip": "10.0.0.3", "ports": '
                                 b'{"p": {"protocol": "tcp"}}}]}'])
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

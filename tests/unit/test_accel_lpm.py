"""Lpm4, the IPv4 longest-prefix-match table, against both implementations and a brute-force
reference."""
from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch import accel as accel_api
from vswitch.accel import TableFullError, native, pure

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_api.load(request.param)


def ip(text: str) -> int:
    return int(IPv4Address(text))


def net(text: str) -> tuple[int, int]:
    n = IPv4Network(text)
    return int(n.network_address), n.prefixlen


def mask(length: int) -> int:
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


class BruteForceLpm:
    """The definition of longest-prefix match, with no cleverness at all."""

    def __init__(self) -> None:
        self.routes: dict[tuple[int, int], int] = {}

    def add(self, prefix: int, length: int, value: int) -> None:
        self.routes[(prefix & mask(length), length)] = value

    def delete(self, prefix: int, length: int) -> bool:
        return self.routes.pop((prefix & mask(length), length), None) is not None

    def lookup(self, addr: int) -> int | None:
        best = None
        for (prefix, length), value in self.routes.items():
            if addr & mask(length) == prefix and (best is None or length > best[0]):
                best = (length, value)
        return None if best is None else best[1]


def probe_addresses(routes, extra) -> list[int]:
    """Addresses at and around every route's edges, where off-by-one expansions would show."""
    addrs = set(extra)
    for prefix, length in routes:
        last = prefix | (~mask(length) & 0xFFFFFFFF)
        for a in (prefix, last, prefix - 1, last + 1, (prefix + last) // 2):
            if 0 <= a <= 0xFFFFFFFF:
                addrs.add(a)
    return sorted(addrs)


def test_empty_table(accel):
    table = accel.Lpm4(max_routes=16)
    assert len(table) == 0
    assert table.lookup(ip("10.0.0.1")) is None
    assert table.lookup_batch([0, 0xFFFFFFFF]) == [None, None]
    assert table.lookup_batch([]) == []


def test_default_route_and_host_route(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(0, 0, 1)
    table.add(ip("10.1.2.3"), 32, 2)
    assert table.lookup(0) == 1
    assert table.lookup(0xFFFFFFFF) == 1
    assert table.lookup(ip("10.1.2.3")) == 2
    assert table.lookup(ip("10.1.2.2")) == 1
    assert table.lookup(ip("10.1.2.4")) == 1
    assert len(table) == 2


def test_overlapping_prefixes_pick_the_longest(accel):
    table = accel.Lpm4(max_routes=16)
    for value, text in enumerate(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25"]):
        table.add(*net(text), value)
    assert table.lookup_batch(
        [ip("10.9.9.9"), ip("10.1.9.9"), ip("10.1.2.3"), ip("10.1.2.200"), ip("11.0.0.0")]
    ) == [0, 1, 2, 3, None]


def test_less_specific_added_after_more_specific_does_not_shadow_it(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(*net("10.1.2.128/25"), 3)
    table.add(*net("10.1.2.0/24"), 2)
    table.add(*net("10.0.0.0/8"), 0)
    table.add(0, 0, 9)
    assert table.lookup(ip("10.1.2.129")) == 3
    assert table.lookup(ip("10.1.2.1")) == 2
    assert table.lookup(ip("10.200.0.1")) == 0
    assert table.lookup(ip("192.168.0.1")) == 9


def test_delete_of_a_more_specific_restores_the_less_specific(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(*net("10.0.0.0/8"), 1)
    table.add(*net("10.1.2.0/24"), 2)
    table.add(*net("10.1.2.3/32"), 3)
    assert table.delete(*net("10.1.2.0/24"))
    assert table.lookup(ip("10.1.2.3")) == 3
    assert table.lookup(ip("10.1.2.4")) == 1
    assert table.delete(*net("10.1.2.3/32"))
    assert table.lookup(ip("10.1.2.3")) == 1
    assert table.delete(*net("10.0.0.0/8"))
    assert table.lookup(ip("10.1.2.3")) is None
    assert len(table) == 0
    assert table.statistics().groups == 0


def test_delete_of_a_covering_route_reaches_inside_groups(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(*net("10.0.0.0/8"), 1)
    table.add(*net("10.1.2.128/25"), 2)  # forces a second- and a third-level group
    table.add(*net("10.1.0.0/16"), 3)
    assert table.delete(*net("10.1.0.0/16"))
    assert table.lookup(ip("10.1.2.1")) == 1  # inside the third-level group, outside the /25
    assert table.lookup(ip("10.1.7.1")) == 1  # inside the second-level group
    assert table.delete(*net("10.0.0.0/8"))
    assert table.lookup_batch([ip("10.1.2.1"), ip("10.1.7.1"), ip("10.1.2.200")]) == [None, None, 2]
    assert table.statistics().groups == 2


def test_delete_then_re_add(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(*net("172.16.0.0/12"), 5)
    assert table.delete(*net("172.16.0.0/12"))
    assert not table.delete(*net("172.16.0.0/12"))
    assert table.lookup(ip("172.20.0.1")) is None
    table.add(*net("172.16.0.0/12"), 6)
    assert table.lookup(ip("172.20.0.1")) == 6
    assert len(table) == 1


def test_host_bits_are_ignored(accel):
    table = accel.Lpm4(max_routes=16)
    table.add(ip("10.1.2.3"), 8, 4)
    assert table.lookup(ip("10.200.1.1")) == 4
    assert table.delete(ip("10.99.99.99"), 8)
    assert len(table) == 0


def test_adding_an_existing_route_replaces_its_value(accel):
    table = accel.Lpm4(max_routes=1)
    table.add(*net("10.0.0.0/24"), 1)
    table.add(*net("10.0.0.0/24"), 2)  # an update must work even when the table is full
    assert table.lookup(ip("10.0.0.7")) == 2
    assert len(table) == 1


def test_full_table_raises_and_stays_intact(accel):
    table = accel.Lpm4(max_routes=2)
    table.add(*net("10.0.0.0/24"), 1)
    table.add(*net("10.0.1.0/24"), 2)
    with pytest.raises(TableFullError):
        table.add(*net("10.0.2.0/24"), 3)
    assert table.lookup(ip("10.0.2.1")) is None
    assert len(table) == 2
    table.delete(*net("10.0.0.0/24"))
    table.add(*net("10.0.2.0/24"), 3)
    assert table.lookup(ip("10.0.2.1")) == 3


def test_clear(accel):
    table = accel.Lpm4(max_routes=8)
    table.add(0, 0, 1)
    table.add(*net("10.1.2.0/25"), 2)
    table.clear()
    assert len(table) == 0
    assert table.lookup(ip("10.1.2.1")) is None
    assert table.statistics().groups == 0
    table.add(*net("10.1.2.0/25"), 3)
    assert table.lookup(ip("10.1.2.1")) == 3


def test_statistics_count_groups(accel):
    table = accel.Lpm4(max_routes=8)
    table.add(*net("10.1.2.0/24"), 1)  # one second-level group
    table.add(*net("10.1.2.0/25"), 2)  # plus one third-level group
    stats = table.statistics()
    assert (stats.routes, stats.max_routes, stats.groups) == (2, 8, 2)
    table.delete(*net("10.1.2.0/25"))
    assert table.statistics().groups == 1


def test_value_limits(accel):
    table = accel.Lpm4(max_routes=4)
    table.add(0, 0, 2**31 - 1)
    assert table.lookup(1) == 2**31 - 1
    table.add(*net("10.0.0.0/8"), 0)
    assert table.lookup(ip("10.0.0.1")) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.add(0, 33, 1),
        lambda t: t.add(0, -1, 1),
        lambda t: t.add(2**32, 8, 1),
        lambda t: t.add(0, 8, 2**31),
        lambda t: t.add(0, 8, -1),
        lambda t: t.delete(0, 33),
        lambda t: t.lookup(-1),
        lambda t: t.lookup(2**32),
        lambda t: t.lookup_batch([1, 2**32]),
        lambda t: t.lookup_batch([-5]),
    ],
)
def test_argument_errors(accel, call):
    table = accel.Lpm4(max_routes=4)
    with pytest.raises(ValueError):
        call(table)


def test_max_routes_must_be_positive(accel):
    with pytest.raises(ValueError):
        accel.Lpm4(max_routes=0)


# Prefixes cluster inside 10.0.0.0/16 and 10.0.1.0/24, and lengths favour the level boundaries
# (16/17, 24/25), so that random route sets overlap at every level of the trie.
addresses = st.one_of(
    st.integers(0, 0xFFFFFFFF),
    st.integers(ip("10.0.0.0"), ip("10.0.255.255")),
    st.integers(ip("10.0.1.0"), ip("10.0.1.255")),
)
lengths = st.one_of(st.integers(0, 32), st.sampled_from([0, 8, 15, 16, 17, 23, 24, 25, 31, 32]))
route = st.tuples(addresses, lengths, st.integers(0, 2**31 - 1))
operations = st.lists(st.tuples(st.sampled_from(["add", "add", "delete"]), route), max_size=60)


@PROPERTY
@given(ops=operations, extra=st.lists(addresses, max_size=30))
def test_lpm_matches_brute_force(accel, ops, extra):
    table = accel.Lpm4(max_routes=64)
    reference = BruteForceLpm()
    added = []
    for op, (prefix, length, value) in ops:
        if op == "add":
            table.add(prefix, length, value)
            reference.add(prefix, length, value)
            added.append((prefix & mask(length), length))
        else:
            # Delete something that exists most of the time, and something random otherwise.
            if added and value % 4:
                prefix, length = added[value % len(added)]
            assert table.delete(prefix, length) == reference.delete(prefix, length)
    assert len(table) == len(reference.routes)
    addrs = probe_addresses(added, extra)
    assert table.lookup_batch(addrs) == [reference.lookup(a) for a in addrs]
    assert [table.lookup(a) for a in addrs] == [reference.lookup(a) for a in addrs]


@settings(max_examples=150, deadline=None)
@given(ops=operations, extra=st.lists(addresses, max_size=30))
def test_lpm_twins_agree_including_shape(ops, extra):
    tables = [native.Lpm4(max_routes=64), pure.Lpm4(max_routes=64)]
    added = []
    for op, (prefix, length, value) in ops:
        for table in tables:
            if op == "add":
                table.add(prefix, length, value)
            else:
                target = added[value % len(added)] if added and value % 4 else (prefix, length)
                table.delete(*target)
        if op == "add":
            added.append((prefix & mask(length), length))
    addrs = probe_addresses(added, extra)
    a, b = tables
    assert a.lookup_batch(addrs) == b.lookup_batch(addrs)
    assert a.statistics() == b.statistics()


def test_deleting_everything_returns_every_group(accel):
    rng = random.Random(7)
    table = accel.Lpm4(max_routes=500)
    routes = {(rng.getrandbits(32) & mask(n), n) for n in [rng.randint(0, 32) for _ in range(500)]}
    for i, (prefix, length) in enumerate(routes):
        table.add(prefix, length, i)
    assert table.statistics().groups > 0
    for prefix, length in rng.sample(sorted(routes), len(routes)):
        assert table.delete(prefix, length)
    assert table.statistics().groups == 0
    assert len(table) == 0
    assert table.lookup_batch([rng.getrandbits(32) for _ in range(100)]) == [None] * 100


def test_one_hundred_thousand_routes(accel):
    rng = random.Random(100_000)
    # A realistic mix: mostly /24s, some aggregates and host routes.
    lengths = [24] * 6 + [16, 20, 22, 23, 28, 32]
    routes = {}
    while len(routes) < 100_000:
        length = rng.choice(lengths)
        routes[(rng.getrandbits(32) & mask(length), length)] = len(routes)
    table = accel.Lpm4(max_routes=100_000)
    by_length: dict[int, dict[int, int]] = {}
    for (prefix, length), value in routes.items():
        table.add(prefix, length, value)
        by_length.setdefault(length, {})[prefix] = value
    assert len(table) == 100_000
    with pytest.raises(TableFullError):
        table.add(0, 0, 1)

    def reference(addr: int) -> int | None:
        for length in sorted(by_length, reverse=True):
            value = by_length[length].get(addr & mask(length))
            if value is not None:
                return value
        return None

    sample = [p | rng.getrandbits(32 - n) if n < 32 else p for p, n in rng.sample(sorted(routes), 2000)]
    sample += [rng.getrandbits(32) for _ in range(2000)]
    assert table.lookup_batch(sample) == [reference(a) for a in sample]

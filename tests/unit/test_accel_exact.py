"""ExactTable, the fixed-size-key hash table, against both implementations and a dict."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch import accel as accel_api
from vswitch.accel import native, pure

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

FDB_KEY = 8  # MAC (6) + segment (2)


@pytest.fixture(params=["native", "pure"])
def accel(request):
    return accel_api.load(request.param)


def mac_key(n: int) -> bytes:
    return bytes([0x0A, 0x58]) + n.to_bytes(4, "big") + b"\x00\x01"


def test_insert_lookup_update_delete(accel):
    table = accel.ExactTable(FDB_KEY, 16)
    assert table.lookup(mac_key(1)) is None
    assert table.insert(mac_key(1), 100)
    assert table.insert(mac_key(2), -5)
    assert table.lookup(mac_key(1)) == 100
    assert table.lookup(mac_key(2)) == -5
    assert table.insert(mac_key(1), 101)
    assert table.lookup(mac_key(1)) == 101
    assert len(table) == 2
    assert table.delete(mac_key(1))
    assert not table.delete(mac_key(1))
    assert table.lookup(mac_key(1)) is None
    assert table.lookup(mac_key(2)) == -5
    assert len(table) == 1


def test_int64_values(accel):
    table = accel.ExactTable(4, 4)
    table.insert(b"\x00\x00\x00\x01", 2**63 - 1)
    table.insert(b"\x00\x00\x00\x02", -(2**63))
    assert table.lookup_batch([b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]) == [2**63 - 1, -(2**63)]
    with pytest.raises(ValueError):
        table.insert(b"\x00\x00\x00\x03", 2**63)


def test_full_table(accel):
    table = accel.ExactTable(4, 3)
    for i in range(3):
        assert table.insert(i.to_bytes(4, "big"), i)
    assert not table.insert((99).to_bytes(4, "big"), 99)
    assert table.lookup((99).to_bytes(4, "big")) is None
    assert table.insert((1).to_bytes(4, "big"), 11)  # updates still work when full
    assert table.lookup((1).to_bytes(4, "big")) == 11
    assert table.delete((0).to_bytes(4, "big"))
    assert table.insert((99).to_bytes(4, "big"), 99)
    assert len(table) == 3


@pytest.mark.parametrize(
    ("capacity", "slots"), [(1, 2), (3, 4), (4, 8), (12, 16), (13, 32), (100_000, 262_144)]
)
def test_slot_count_is_a_power_of_two_for_load_at_most_three_quarters(accel, capacity, slots):
    stats = accel.ExactTable(16, capacity).statistics()
    assert (stats.entries, stats.capacity, stats.slots, stats.max_probe) == (0, capacity, slots, 0)


def test_clear_and_items(accel):
    table = accel.ExactTable(FDB_KEY, 32, seed=3)
    entries = {mac_key(i): i * 10 for i in range(20)}
    for key, value in entries.items():
        table.insert(key, value)
    assert dict(table.items()) == entries
    assert len(table.items()) == 20
    table.clear()
    assert len(table) == 0
    assert table.items() == []
    assert table.lookup(mac_key(3)) is None
    assert table.insert(mac_key(3), 1)


def test_accepts_bytes_like_keys(accel):
    table = accel.ExactTable(4, 4)
    table.insert(bytearray(b"abcd"), 1)
    assert table.lookup(memoryview(b"xabcd")[1:]) == 1
    assert table.lookup_batch([bytearray(b"abcd"), b"abcd", b"zzzz"]) == [1, 1, None]
    assert table.delete(memoryview(b"abcd"))


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.insert(b"abc", 1),
        lambda t: t.lookup(b"abcde"),
        lambda t: t.delete(b""),
        lambda t: t.lookup_batch([b"abcd", b"abc"]),
        lambda t: t.lookup_batch([b"ab", b"abcdef"]),  # same total length as two good keys
    ],
)
def test_wrong_key_size_is_a_value_error(accel, call):
    with pytest.raises(ValueError, match="key must be 4 bytes"):
        call(accel.ExactTable(4, 4))


@pytest.mark.parametrize(("key_size", "capacity"), [(0, 4), (256, 4), (4, 0), (4, 2**28 + 1)])
def test_bad_shape(accel, key_size, capacity):
    with pytest.raises(ValueError):
        accel.ExactTable(key_size, capacity)


def test_batch_lookup_sizes(accel):
    table = accel.ExactTable(4, 1024)
    for i in range(0, 1000, 3):
        table.insert(i.to_bytes(4, "big"), i)
    keys = [i.to_bytes(4, "big") for i in range(1000)]
    expected = [i if i % 3 == 0 else None for i in range(1000)]
    assert table.lookup_batch(keys) == expected
    # A smaller batch after a larger one must not see leftovers of the earlier one.
    assert table.lookup_batch(keys[1:3]) == [None, None]
    assert table.lookup_batch(keys[:1]) == [0]
    assert table.lookup_batch([]) == []


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=64), seed=st.integers(0, 2**64 - 1))
def test_hash_twins_agree(key, seed):
    assert native.hash_key(key, seed) == pure.hash_key(key, seed)


def test_hash_depends_on_seed_and_every_byte(accel):
    key = bytes(range(16))
    base = accel.hash_key(key, 0)
    assert accel.hash_key(key, 1) != base
    for i in range(16):
        flipped = key[:i] + bytes([key[i] ^ 1]) + key[i + 1 :]
        assert accel.hash_key(flipped, 0) != base
    assert accel.hash_key(b"", 0) != accel.hash_key(b"\0", 0)


# Keys from a small alphabet so that inserts, updates and deletes hit the same keys often.
small_keys = st.integers(0, 40).map(lambda n: n.to_bytes(2, "big") * 3)
table_ops = st.lists(
    st.tuples(st.sampled_from(["insert", "insert", "delete", "lookup"]), small_keys,
              st.integers(-(2**63), 2**63 - 1)),
    max_size=120,
)


@PROPERTY
@given(ops=table_ops, capacity=st.integers(1, 24), seed=st.integers(0, 2**64 - 1))
def test_table_behaves_like_a_bounded_dict(accel, ops, capacity, seed):
    table = accel.ExactTable(6, capacity, seed=seed)
    reference: dict[bytes, int] = {}
    for op, key, value in ops:
        if op == "insert":
            fits = key in reference or len(reference) < capacity
            assert table.insert(key, value) == fits
            if fits:
                reference[key] = value
        elif op == "delete":
            assert table.delete(key) == (reference.pop(key, None) is not None)
        else:
            assert table.lookup(key) == reference.get(key)
        assert len(table) == len(reference)
    every_key = [n.to_bytes(2, "big") * 3 for n in range(41)]
    assert table.lookup_batch(every_key) == [reference.get(k) for k in every_key]
    assert dict(table.items()) == reference


@settings(max_examples=150, deadline=None)
@given(ops=table_ops, capacity=st.integers(1, 24), seed=st.integers(0, 2**64 - 1))
def test_table_twins_agree_including_layout(ops, capacity, seed):
    tables = [native.ExactTable(6, capacity, seed=seed), pure.ExactTable(6, capacity, seed=seed)]
    for op, key, value in ops:
        results = [getattr(t, op)(key, value) if op == "insert" else getattr(t, op)(key) for t in tables]
        assert results[0] == results[1]
    assert tables[0].items() == tables[1].items()
    assert tables[0].statistics() == tables[1].statistics()

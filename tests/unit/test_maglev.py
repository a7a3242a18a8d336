"""Maglev table properties: prime sizes, balance, minimal disruption, determinism across processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from vswitch.tables.maglev import (build_table, is_prime, permutation_parameters, table_size)


def names(n: int, port: int = 8080) -> list[str]:
    return [f"10.244.{i // 250}.{i % 250 + 2}:{port}" for i in range(n)]


def moved_slots(before: list[str], after: list[str]) -> tuple[int, int]:
    """(slots whose owner changed although their owner survives, table size)."""
    size = table_size(len(before))
    old = build_table(before, size)
    new = build_table(after, size)
    survivors = set(after)
    moved = sum(1 for slot in range(size)
                if before[old[slot]] in survivors and after[new[slot]] != before[old[slot]])
    return moved, size


def test_is_prime_agrees_with_a_sieve():
    limit = 5000
    sieve = [True] * limit
    sieve[0] = sieve[1] = False
    for i in range(2, limit):
        if sieve[i]:
            for j in range(i * i, limit, i):
                sieve[j] = False
    assert [i for i in range(limit) if is_prime(i)] == [i for i in range(limit) if sieve[i]]


@pytest.mark.parametrize("n, expected", [(0, 251), (1, 251), (2, 251), (3, 307), (10, 1009),
                                         (50, 5003), (100, 10007), (1000, 100003)])
def test_table_size_is_the_smallest_prime_of_at_least_100_per_backend(n, expected):
    assert table_size(n) == expected
    assert is_prime(expected)
    assert not any(is_prime(k) for k in range(max(100 * n, 251), expected))


def test_permutation_parameters_stay_in_range():
    for name in names(200):
        offset, skip = permutation_parameters(name, 251)
        assert 0 <= offset < 251
        assert 1 <= skip < 251


@pytest.mark.parametrize("n", range(2, 51))
def test_every_backend_gets_its_share_of_slots(n):
    size = table_size(n)
    table = build_table(names(n), size)
    assert len(table) == size
    counts = Counter(table)
    assert set(counts) == set(range(n))
    for count in counts.values():
        assert 0.8 * size / n <= count <= 1.2 * size / n


@settings(max_examples=60, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=20), min_size=1, max_size=40))
def test_turn_taking_balances_to_within_one_slot(backend_names):
    # Each round gives every backend exactly one slot, so shares differ by at most one.
    backends = sorted(backend_names)
    size = table_size(len(backends))
    counts = Counter(build_table(backends, size))
    assert sum(counts.values()) == size
    assert len(counts) == len(backends)
    assert max(counts.values()) - min(counts.values()) <= 1


@pytest.mark.parametrize("n", [3, 5, 10, 20, 30, 50])
def test_removing_a_backend_moves_few_other_slots(n):
    backends = names(n)
    size = table_size(n)
    for gone in range(n):
        moved, _ = moved_slots(backends, backends[:gone] + backends[gone + 1:])
        # Measured worst case is about 1.2/n of the table at n = 50, far below a rehash
        # (which would move (n-1)/n of it).
        assert moved < 2 * size / n, (gone, moved, size)


@pytest.mark.parametrize("n", [3, 10, 30])
def test_adding_a_backend_moves_few_other_slots(n):
    before = names(n)
    after = before + names(1, port=9090)
    # Same table size on both sides, as the service table only grows M when n crosses a step.
    size = table_size(n + 1)
    old, new = build_table(before, size), build_table(after, size)
    taken = sum(1 for slot in range(size) if new[slot] == n)
    reshuffled = sum(1 for slot in range(size) if new[slot] != n and new[slot] != old[slot])
    assert abs(taken - size / (n + 1)) <= 1
    assert reshuffled < 2 * size / n


def test_the_removed_backends_slots_all_find_a_new_owner():
    backends = names(8)
    size = table_size(8)
    table = build_table(backends[1:], size)
    assert sorted(set(table)) == list(range(7))


def test_same_backends_give_the_same_table_in_another_process():
    backends = names(17)
    size = table_size(17)
    code = ("import sys, json; from vswitch.tables.maglev import build_table; "
            "print(json.dumps(build_table(json.loads(sys.argv[1]), int(sys.argv[2]))))")
    outputs = set()
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", code, json.dumps(backends), str(size)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.add(run.stdout)
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == build_table(backends, size)


def test_a_single_backend_owns_every_slot():
    assert build_table(["10.244.1.2:80"], 251) == [0] * 251


@pytest.mark.parametrize("backends, size, message", [
    ([], 251, "at least one"),
    (["a", "b"], 250, "prime"),
    (["a", "a"], 251, "distinct"),
    ([str(i) for i in range(12)], 11, "do not fit"),
])
def test_invalid_input_is_refused(backends, size, message):
    with pytest.raises(ValueError, match=message):
        build_table(backends, size)

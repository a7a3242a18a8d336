"""Maglev consistent hashing: a lookup table that maps flow hashes to backends.

Theory of operation (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
Balancer", NSDI 2016, section 3.4)
-----------------------------------------------------------------------------------------
* The table has ``M`` slots, ``M`` prime. Each backend owns a permutation of the slots, given by
  an ``offset`` and a ``skip`` derived from two independent hashes of its name:
  ``permutation[j] = (offset + j * skip) mod M``. Because ``M`` is prime and ``1 <= skip < M``,
  every such sequence visits every slot exactly once.
* Backends take turns claiming the next slot of their own permutation that is still free, until
  every slot is taken. Turn-taking gives each backend ``M / n`` slots, give or take one, which is
  the balance property. Since each backend's preference order depends only on its own name, taking
  one backend away leaves the others' preferences intact, so most slots keep their owner: the
  minimal-disruption property that lets a flow whose connection state was lost (or that lands on
  another node) still reach the same backend.
* Names, not positions, drive the hashes, and the hashes are keyed BLAKE2b rather than Python's
  ``hash()``, which is salted per process: two daemons (or a restart) given the same backends build
  the same table.
* ``M`` should be much larger than the number of backends, or balance suffers (the paper's bound
  on imbalance shrinks with ``M / n``). Cilium and VPP use about 100 slots per backend; so does
  ``table_size``.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

MIN_TABLE_SIZE = 251
SLOTS_PER_BACKEND = 100

# Personalisation strings make the two BLAKE2b hashes independent functions of the same name.
_OFFSET_PERSON = b"vswitch-mglv-off"
_SKIP_PERSON = b"vswitch-mglv-skp"


def is_prime(value: int) -> bool:
    if value < 2:
        return False
    if value % 2 == 0:
        return value == 2
    divisor = 3
    while divisor * divisor <= value:
        if value % divisor == 0:
            return False
        divisor += 2
    return True


def table_size(n_backends: int) -> int:
    """The smallest prime that is at least 100 slots per backend and at least 251."""
    candidate = max(SLOTS_PER_BACKEND * n_backends, MIN_TABLE_SIZE)
    while not is_prime(candidate):
        candidate += 1
    return candidate


def _hash(name: str, person: bytes) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little")


def permutation_parameters(name: str, size: int) -> tuple[int, int]:
    """A backend's (offset, skip) in a table of ``size`` slots."""
    return _hash(name, _OFFSET_PERSON) % size, _hash(name, _SKIP_PERSON) % (size - 1) + 1


def build_table(backends: Sequence[str], size: int) -> list[int]:
    """For each of ``size`` slots, the index in ``backends`` of the backend that owns it.

    ``backends`` are stable names (such as "10.244.1.10:8080") and must be distinct: two equal
    names would share one permutation and split its slots arbitrarily by position.
    """
    if not backends:
        raise ValueError("a Maglev table needs at least one backend")
    if not is_prime(size):
        raise ValueError(f"the Maglev table size must be prime, got {size}")
    if len(set(backends)) != len(backends):
        raise ValueError("Maglev backend names must be distinct")
    if len(backends) > size:
        raise ValueError(f"{len(backends)} backends do not fit a table of {size} slots")
    if len(backends) == 1:
        return [0] * size
    params = [permutation_parameters(name, size) for name in backends]
    # next_slot[i] is the slot where backend i's walk along its permutation resumes; stepping by
    # ``skip`` modulo ``size`` walks the permutation without ever multiplying.
    next_slot = [offset for offset, _ in params]
    skips = [skip for _, skip in params]
    table = [-1] * size
    filled = 0
    while True:
        for index in range(len(backends)):
            slot = next_slot[index]
            skip = skips[index]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = index
            slot += skip
            next_slot[index] = slot - size if slot >= size else slot
            filled += 1
            if filled == size:
                return table

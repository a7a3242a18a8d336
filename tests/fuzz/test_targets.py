"""Every fuzz target, on its seeds and on a few hundred inputs mutated from them, in the regular
test run: a target that breaks (or a seed that no longer says what it meant) shows here first,
without atheris or the sanitizer build that ``native/fuzz.py`` runs them on."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from .targets import REACHES, TARGETS, THREADED

MUTATED_PER_TARGET = 200


def mutations(seeds: list[bytes], rng: random.Random, count: int):
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            how = rng.randrange(4)
            if how == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif how == 1:
                del data[rng.randint(0, len(data)):]
            elif how == 2:
                data[rng.randint(0, len(data)):0] = rng.randbytes(rng.randint(1, 8))
            elif data:
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
        yield bytes(data)


def test_every_native_function_has_a_target():
    header = Path(__file__).resolve().parents[2] / "native" / "vswitch_native.h"
    declared = set(re.findall(r"\b(vs_\w+)\s*\(", header.read_text()))
    reached = {name for names in REACHES.values() for name in names}
    assert declared - set(THREADED) == reached
    assert set(REACHES) == set(TARGETS)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_target_holds_on_its_seeds_and_their_mutations(name):
    target = TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for data in seeds:
        target.run(data)
    count = MUTATED_PER_TARGET // 4 if name == "pipeline" else MUTATED_PER_TARGET
    for data in mutations(seeds, random.Random(name), count):
        target.run(data)

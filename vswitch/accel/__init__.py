"""One API, two implementations: ``native`` (the cffi C module) and ``pure`` (the reference twin).

The daemon uses the native implementation; the pure one exists so that tests can hold the two equal
and so that a developer can step through the algorithm. It is never a silent fallback: if the native
module is missing, ``load("native")`` raises.
"""
from __future__ import annotations

import importlib
from types import ModuleType

IMPLEMENTATIONS = ("native", "pure")


def load(name: str = "native") -> ModuleType:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown accel implementation {name!r}; choose one of {IMPLEMENTATIONS}")
    return importlib.import_module(f"vswitch.accel.{name}")

"""The cffi C module behind the same API as ``vswitch.accel.pure``."""
from __future__ import annotations

from vswitch._native import ffi, lib

NAME = "native"


def sum16(data: bytes, initial: int = 0) -> int:
    return lib.vs_sum16(ffi.from_buffer(data), len(data), initial)


def checksum(data: bytes) -> int:
    return lib.vs_checksum(ffi.from_buffer(data), len(data))

"""cffi (API mode) build script for ``vswitch._native``.

setup.py names this file in ``cffi_modules``, so ``pip install .`` compiles it. The declarations
below are the whole C surface the Python side may call.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial);
    uint16_t vs_checksum(const uint8_t *data, size_t len);
    """
)
ffibuilder.set_source(
    "vswitch._native",
    '#include "vswitch_native.h"',
    sources=SOURCES,
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

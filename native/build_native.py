"""cffi (API mode) build script for ``vswitch._native``.

setup.py names this file in ``cffi_modules``, so ``pip install .`` compiles it. The C surface the
Python side may call is exactly what vswitch_native.h declares: the cdef is derived from the
header, so the two cannot drift apart. API mode (rather than ABI mode) means the C compiler checks
every call cffi generates against the real header.
"""
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))

HEADER = HERE / "vswitch_native.h"

_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_DEFINE = re.compile(r"^#define\s+(\w+)\s+\S.*$")


def cdef_from_header(text: str) -> str:
    """The header as cffi's cdef parser takes it: without comments, the include guard and the
    includes (cffi knows the <stdint.h> types), and with each ``#define`` constant's value left
    to the compiler (``...``), since cdef accepts only plain integer literals. One source of
    truth: the functions Python may call are exactly those the header declares."""
    lines = []
    for line in _COMMENT.sub("", text).splitlines():
        stripped = line.strip()
        if stripped.startswith(("#ifndef", "#endif", "#include")):
            continue
        define = _DEFINE.match(stripped)
        if define:
            if define.group(1) != "VSWITCH_NATIVE_H":
                lines.append(f"#define {define.group(1)} ...")
            continue
        if stripped.startswith("#define"):
            continue  # the guard's bare ``#define``
        lines.append(line)
    return "\n".join(lines)


CDEF = cdef_from_header(HEADER.read_text())

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vswitch._native",
    '#include "vswitch_native.h"',
    sources=SOURCES,
    include_dirs=[str(HERE)],
    depends=[str(HEADER)],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

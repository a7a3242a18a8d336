"""The cffi declarations come from the header, and the built module exposes all of them."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "native" / "vswitch_native.h"


def _build_script():
    spec = importlib.util.spec_from_file_location("build_native", ROOT / "native" / "build_native.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cdef_is_the_header_without_what_cffi_cannot_parse():
    cdef = _build_script().cdef_from_header(HEADER.read_text())
    assert "/*" not in cdef and "#include" not in cdef and "VSWITCH_NATIVE_H" not in cdef
    assert "#define VS_FLOW_KEY_LEN ..." in cdef
    FFI().cdef(cdef)  # parses


def test_every_function_of_the_header_is_callable_from_the_built_module():
    from vswitch import _native

    declared = set(re.findall(r"\b(vs_\w+)\s*\(", HEADER.read_text()))
    assert len(declared) > 20
    missing = {name for name in declared if not callable(getattr(_native.lib, name, None))}
    assert not missing, missing
    assert _native.lib.VS_FLOW_KEY_LEN == 22 and _native.lib.VS_LPM_FULL == -1

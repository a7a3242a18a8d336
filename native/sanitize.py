"""Runs the accel tests against a build of the C sources with AddressSanitizer and UBSan.

    python3 native/sanitize.py [extra pytest arguments]

The regular build cannot prove the bounds rules; this one aborts on the first out-of-bounds read,
use after free or undefined arithmetic that the property tests provoke. It compiles into a
temporary directory, never touching the installed module, and makes the test process import the
instrumented module in its place (through a generated sitecustomize on PYTHONPATH), with the
sanitizer runtimes preloaded because the Python binary itself is not instrumented.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import build_native  # noqa: E402  (the build script is not a package module)

SITECUSTOMIZE = """\
import glob, importlib.util, sys
path = glob.glob({pattern!r})[0]
spec = importlib.util.spec_from_file_location("vswitch._native", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["vswitch._native"] = module
"""


def runtime(name: str) -> str:
    return subprocess.run(
        ["gcc", f"-print-file-name={name}"], check=True, capture_output=True, text=True
    ).stdout.strip()


def build_instrumented(tmp: str) -> None:
    """Compile the C sources with ASan+UBSan into ``tmp`` and make ``tmp/sitecustomize.py``
    import that module as ``vswitch._native``; ``fuzz.py`` runs its targets on the same build."""
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    ffi = FFI()
    ffi.cdef(build_native.CDEF)
    ffi.set_source(
        "vswitch._native",
        '#include "vswitch_native.h"',
        sources=[str(ROOT / s) for s in build_native.SOURCES],
        include_dirs=[str(HERE)],
        extra_compile_args=["-O1", "-g", "-std=c11", "-fno-omit-frame-pointer", *sanitizers],
        extra_link_args=sanitizers,
    )
    ffi.compile(tmpdir=tmp)
    Path(tmp, "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(pattern=f"{tmp}/vswitch/_native*.so"))


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="vswitch-asan-") as tmp:
        build_instrumented(tmp)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])),
            LD_PRELOAD=f"{runtime('libasan.so')} {runtime('libubsan.so')}",
            # CPython's own allocations at exit are not leaks of ours.
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        )
        unit = ROOT / "tests" / "unit"
        tests = sorted(str(p) for pattern in ("test_accel*.py", "test_vxlan_native.py",
                                              "test_datapath_engine.py")
                       for p in unit.glob(pattern))
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *argv]
        return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

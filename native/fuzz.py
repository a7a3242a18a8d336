"""Runs one fuzz target of tests/fuzz under atheris, against the C built with ASan and UBSan.

    python3 native/fuzz.py TARGET [libFuzzer flags, e.g. -runs=100000 -max_total_time=60]
    python3 native/fuzz.py --list

The C sources are compiled the way ``sanitize.py`` compiles them (AddressSanitizer and UBSan,
aborting on the first finding, into a temporary directory, never touching the installed module)
and the fuzzing process imports that module in place of ``vswitch._native``, with the sanitizer
runtimes preloaded because the Python binary is not instrumented. ``PYTHONMALLOC=malloc`` sends
every Python allocation through ASan's malloc, so a read past the end of a small ``bytes`` object
is caught too instead of landing in a pymalloc arena.

Coverage: the machine's compiler is gcc, whose builds carry no libFuzzer (SanitizerCoverage)
instrumentation, so the fuzzer's feedback comes from the Python code atheris instruments: the
pure twins, the wrappers and the pipeline that call the C. A C branch steers the search only
through the Python that reacts to its result; the sanitizers still check every byte C touches.

Each target's seeds (``tests/fuzz/targets.py``) start the corpus, in a temporary directory
unless a corpus directory is given among the flags. A crash leaves its input as ``crash-*`` in
the current directory, to be replayed with ``python3 native/fuzz.py TARGET crash-<hash>``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import sanitize  # noqa: E402  (a script beside this one, not a package module)

# Runs in the instrumented process: seeds the corpus, then hands the target to atheris.
DRIVER = """\
import os, sys
import atheris
with atheris.instrument_imports():
    from tests.fuzz import targets
name, corpus = sys.argv[1], sys.argv[2]
target = targets.TARGETS[name]
for index, seed in enumerate(target.seeds()):
    with open(os.path.join(corpus, f"seed-{index}"), "wb") as f:
        f.write(seed)
atheris.Setup([sys.argv[0], *sys.argv[3:]], target.run)
atheris.Fuzz()
"""


def build_instrumented(tmp: str) -> None:
    """Compile the C sources with ASan+UBSan into ``tmp`` and make ``tmp/sitecustomize.py``
    import that module as ``vswitch._native``; as ``sanitize.py`` does."""
    from cffi import FFI

    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    ffi = FFI()
    ffi.cdef(sanitize.build_native.CDEF)
    ffi.set_source(
        "vswitch._native",
        '#include "vswitch_native.h"',
        sources=[str(ROOT / s) for s in sanitize.build_native.SOURCES],
        include_dirs=[str(HERE)],
        extra_compile_args=["-O1", "-g", "-std=c11", "-fno-omit-frame-pointer", *sanitizers],
        extra_link_args=sanitizers,
    )
    ffi.compile(tmpdir=tmp)
    Path(tmp, "sitecustomize.py").write_text(
        sanitize.SITECUSTOMIZE.format(pattern=f"{tmp}/vswitch/_native*.so"))


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.fuzz import targets

    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__ if argv[:1] != ["--list"] else "")
        print("targets:", " ".join(sorted(targets.TARGETS)))
        return 0 if argv else 2
    name, flags = argv[0], argv[1:]
    if name not in targets.TARGETS:
        print(f"unknown target {name!r}; targets: {' '.join(sorted(targets.TARGETS))}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vswitch-fuzz-") as tmp:
        print(f"[fuzz] building the sanitizer module in {tmp}", file=sys.stderr, flush=True)
        build_instrumented(tmp)
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        given = [f for f in flags if not f.startswith("-")]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [tmp, str(ROOT),
                                                     os.environ.get("PYTHONPATH")])),
            LD_PRELOAD=f"{sanitize.runtime('libasan.so')} {sanitize.runtime('libubsan.so')}",
            # CPython's own allocations at exit are not leaks of ours.
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
            UBSAN_OPTIONS="print_stacktrace=1",
            PYTHONMALLOC="malloc",
        )
        # libFuzzer reads (and adds to) the corpus directories it is given, the first one first.
        dirs = [] if given else [str(corpus)]
        command = [sys.executable, "-c", DRIVER, name, str(corpus), *flags, *dirs]
        return subprocess.run(command, cwd=os.getcwd(), env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

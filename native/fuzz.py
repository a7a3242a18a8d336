"""Runs one fuzz target of tests/fuzz under atheris, against the C built with ASan and UBSan.

    python3 native/fuzz.py [--build-dir DIR] TARGET [libFuzzer flags, e.g. -runs=100000
                                                     -max_total_time=60, corpus dirs, inputs]
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
gcc's sanitizer runtime also defines the coverage callbacks (as no-ops) and, preloaded, would
take the calls atheris makes to register its Python counters with libFuzzer; a small shim
(``SHIM``, compiled with the module) is preloaded in front of it and hands those calls to the
libFuzzer inside atheris instead.

The build takes about 20 s; ``--build-dir DIR`` keeps it in DIR and reuses it on later runs
(delete DIR after changing the C). Each target's seeds (``tests/fuzz/targets.py``) start the
corpus, from a temporary directory read after any corpus directories given. A crash
leaves its input as ``crash-*`` in the current directory, to be replayed with
``python3 native/fuzz.py TARGET crash-<hash>``.
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


# Preloaded first: the coverage callbacks atheris's Python instrumentation calls, forwarded to
# the definitions in atheris's own libFuzzer (found by its path once atheris has loaded it).
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

static void *libfuzzer(const char *name)
{
    static void *handle;
    if (handle == NULL) {
        const char *path = getenv("VSWITCH_FUZZ_LIBFUZZER");
        handle = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : NULL;
        if (handle == NULL)
            return NULL;
    }
    return dlsym(handle, name);
}

#define FORWARD(name, params, args) \
    void name params { \
        void (*f) params = (void (*) params)libfuzzer(#name); \
        if (f != NULL) f args; \
    }

FORWARD(__sanitizer_cov_8bit_counters_init, (uint8_t *a, uint8_t *b), (a, b))
FORWARD(__sanitizer_cov_pcs_init, (const uintptr_t *a, const uintptr_t *b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_switch, (uint64_t a, uint64_t *b), (a, b))
"""


def build_shim(tmp: str) -> str:
    source, library = Path(tmp, "coverage_shim.c"), Path(tmp, "coverage_shim.so")
    source.write_text(SHIM)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
                   check=True)
    return str(library)


def libfuzzer() -> str:
    """atheris's module that carries libFuzzer."""
    import atheris

    (path,) = Path(atheris.__file__).parent.glob("core_with_libfuzzer*.so")
    return str(path)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.fuzz import targets

    if not argv or argv[0] in ("-h", "--help", "--list"):
        if argv[:1] != ["--list"]:
            print(__doc__)
        print("targets:", " ".join(sorted(targets.TARGETS)))
        return 0 if argv else 2
    build_dir = None
    if argv[0] == "--build-dir" and len(argv) > 2:
        build_dir, argv = Path(argv[1]).resolve(), argv[2:]
    name, flags = argv[0], argv[1:]
    if name not in targets.TARGETS:
        print(f"unknown target {name!r}; targets: {' '.join(sorted(targets.TARGETS))}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vswitch-fuzz-") as tmp:
        build = str(build_dir or tmp)
        if not Path(build, "sitecustomize.py").exists():
            print(f"[fuzz] building the sanitizer module in {build}", file=sys.stderr, flush=True)
            Path(build).mkdir(parents=True, exist_ok=True)
            sanitize.build_instrumented(build)
        corpus = Path(tmp, "corpus")
        corpus.mkdir()
        given = [f for f in flags if not f.startswith("-")]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [build, str(ROOT),
                                                     os.environ.get("PYTHONPATH")])),
            # The shim first: gcc's sanitizer runtimes define the coverage callbacks too (as
            # no-ops), and the first definition is the one every module gets.
            LD_PRELOAD=" ".join([build_shim(tmp), sanitize.runtime("libasan.so"),
                                 sanitize.runtime("libubsan.so")]),
            VSWITCH_FUZZ_LIBFUZZER=libfuzzer(),
            # CPython's own allocations at exit are not leaks of ours; the runtime need not be
            # the first library loaded as long as it comes before any that allocates; a small
            # quarantine keeps a long run's memory within libFuzzer's 2 GB limit.
            ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:"
                         "quarantine_size_mb=64",
            UBSAN_OPTIONS="print_stacktrace=1",
            PYTHONMALLOC="malloc",
        )
        # libFuzzer adds what it finds to the first corpus directory and reads the others; given
        # files (a crash to replay) it runs those alone.
        replaying = any(not Path(arg).is_dir() for arg in given)
        dirs = [] if replaying else [str(corpus)]
        command = [sys.executable, "-c", DRIVER, name, str(corpus), *flags, *dirs]
        return subprocess.run(command, cwd=os.getcwd(), env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

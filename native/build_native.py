"""cffi (API mode) build script for ``vswitch._native``.

setup.py names this file in ``cffi_modules``, so ``pip install .`` compiles it. The declarations
below are the whole C surface the Python side may call; they repeat vswitch_native.h because cffi's
cdef parser does not read real headers. API mode (rather than ABI mode) means the C compiler checks
these declarations against the header, so a mismatch fails the build instead of corrupting memory.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))

CDEF = """
    uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial);
    uint16_t vs_checksum(const uint8_t *data, size_t len);
    uint16_t vs_checksum_update16(uint16_t old_csum, uint16_t old_word, uint16_t new_word);
    uint16_t vs_checksum_update32(uint16_t old_csum, uint32_t old_value, uint32_t new_value);
    uint16_t vs_pseudo_header_sum(const uint8_t *src_ip, const uint8_t *dst_ip, uint8_t proto,
                                  uint32_t length);
    uint16_t vs_l4_checksum(const uint8_t *src_ip, const uint8_t *dst_ip, int proto,
                            const uint8_t *segment, size_t len);

    #define VS_EXACT_MAX_KEY ...
    #define VS_EXACT_MAX_CAPACITY ...
    typedef struct vs_exact vs_exact;
    uint64_t vs_exact_hash(const uint8_t *key, size_t len, uint64_t seed);
    uint32_t vs_exact_slots_for(uint32_t capacity);
    vs_exact *vs_exact_create(uint32_t key_size, uint32_t capacity, uint64_t seed);
    void vs_exact_destroy(vs_exact *t);
    uint32_t vs_exact_count(const vs_exact *t);
    uint32_t vs_exact_slots(const vs_exact *t);
    int vs_exact_insert(vs_exact *t, const uint8_t *key, int64_t value);
    int vs_exact_lookup(const vs_exact *t, const uint8_t *key, int64_t *value);
    int vs_exact_delete(vs_exact *t, const uint8_t *key);
    void vs_exact_clear(vs_exact *t);
    size_t vs_exact_lookup_batch(const vs_exact *t, const uint8_t *keys, size_t n,
                                 int64_t *values, uint8_t *found);
    size_t vs_exact_dump(const vs_exact *t, uint8_t *keys, int64_t *values, size_t max);
    uint32_t vs_exact_max_probe(const vs_exact *t);

    #define VS_LPM_MAX_VALUE ...
    #define VS_LPM_MAX_ROUTES ...
    enum vs_lpm_status { VS_LPM_OK, VS_LPM_FULL, VS_LPM_NOMEM, VS_LPM_BADARG, ... };
    typedef struct vs_lpm4 vs_lpm4;
    vs_lpm4 *vs_lpm4_create(uint32_t max_routes);
    void vs_lpm4_destroy(vs_lpm4 *t);
    int vs_lpm4_add(vs_lpm4 *t, uint32_t prefix, unsigned length, uint32_t value);
    int vs_lpm4_delete(vs_lpm4 *t, uint32_t prefix, unsigned length);
    int vs_lpm4_lookup(const vs_lpm4 *t, uint32_t addr, uint32_t *value);
    size_t vs_lpm4_lookup_batch(const vs_lpm4 *t, const uint32_t *addrs, size_t n, int32_t *out);
    uint32_t vs_lpm4_count(const vs_lpm4 *t);
    uint32_t vs_lpm4_groups(const vs_lpm4 *t);
    void vs_lpm4_clear(vs_lpm4 *t);

    #define VS_FLOW_KEY_LEN ...
    enum vs_flow_key_status { VS_FK_OK, VS_FK_SHORT, VS_FK_NOT_IPV4, VS_FK_BAD_VERSION,
                              VS_FK_BAD_IHL, VS_FK_BAD_TOTAL_LEN, VS_FK_FRAGMENT, VS_FK_WINDOW,
                              ... };
    int vs_flow_key(const uint8_t *frame, size_t readable, size_t len, size_t offset,
                    uint8_t *key);
    size_t vs_flow_keys_batch(const uint8_t *windows, size_t stride, const uint64_t *lens,
                              size_t n, size_t offset, uint8_t *keys, uint8_t *status);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vswitch._native",
    '#include "vswitch_native.h"',
    sources=SOURCES,
    include_dirs=[str(HERE)],
    depends=[str(HERE / "vswitch_native.h")],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

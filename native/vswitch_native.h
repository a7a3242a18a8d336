/* The C side of vswitch's fast path.
 *
 * Every function here has a pure-Python twin in vswitch/accel/pure.py with the same Python-level
 * signature; tests hold the two equal. The rules all of it follows (see native/README.md):
 *   - The caller owns every buffer passed in and keeps it alive for the duration of the call; no
 *     function keeps a pointer to caller memory after it returns.
 *   - Nothing reads past the length it is given; short input yields a status, never a crash.
 *   - Tables allocate when they are created or grown by a control-plane call (add/insert of a new
 *     entry that needs room). Lookups, batch lookups and the checksum and flow-key code allocate
 *     nothing.
 */
#ifndef VSWITCH_NATIVE_H
#define VSWITCH_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* ---- Internet checksum (RFC 1071, RFC 1624) ---------------------------------------------- */

uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial);
uint16_t vs_checksum(const uint8_t *data, size_t len);
uint16_t vs_checksum_update16(uint16_t old_csum, uint16_t old_word, uint16_t new_word);
uint16_t vs_checksum_update32(uint16_t old_csum, uint32_t old_value, uint32_t new_value);
uint16_t vs_pseudo_header_sum(const uint8_t *src_ip, const uint8_t *dst_ip, uint8_t proto,
                              uint32_t length);
uint16_t vs_l4_checksum(const uint8_t *src_ip, const uint8_t *dst_ip, int proto,
                        const uint8_t *segment, size_t len);

/* ---- NAT rewrite (RFC 1624 incremental checksums) ----------------------------------------- */

enum vs_nat_status {
    VS_NAT_OK = 0,
    VS_NAT_SHORT = -1,   /* fewer than 20 bytes */
    VS_NAT_BAD_IHL = -2, /* IHL < 5 */
};

/* Rewrites the IPv4 packet of len bytes in place: src_ip/dst_ip (4 bytes each, NULL: keep), the
 * TCP/UDP ports or the ICMP echo identifier (sport, else dport; -1: keep). partial says the L4
 * checksum field holds a virtio-net partial checksum (a pseudo-header sum). */
int vs_nat_rewrite(uint8_t *packet, size_t len, const uint8_t *src_ip, const uint8_t *dst_ip,
                   int32_t sport, int32_t dport, int partial);

/* ---- Exact-match hash table (robin-hood open addressing, backward-shift delete) ---------- */

#define VS_EXACT_MAX_KEY 255u
#define VS_EXACT_MAX_CAPACITY (1u << 28)

typedef struct vs_exact vs_exact;

uint64_t vs_exact_hash(const uint8_t *key, size_t len, uint64_t seed);
uint32_t vs_exact_slots_for(uint32_t capacity);
vs_exact *vs_exact_create(uint32_t key_size, uint32_t capacity, uint64_t seed);
void vs_exact_destroy(vs_exact *t);
uint32_t vs_exact_count(const vs_exact *t);
uint32_t vs_exact_slots(const vs_exact *t);
/* 1: inserted, 2: existing key updated, 0: table full. */
int vs_exact_insert(vs_exact *t, const uint8_t *key, int64_t value);
/* 1: found (value stored), 0: absent. */
int vs_exact_lookup(const vs_exact *t, const uint8_t *key, int64_t *value);
int vs_exact_delete(vs_exact *t, const uint8_t *key);
void vs_exact_clear(vs_exact *t);
/* keys holds n keys of key_size bytes back to back. Returns the number of hits. */
size_t vs_exact_lookup_batch(const vs_exact *t, const uint8_t *keys, size_t n, int64_t *values,
                             uint8_t *found);
/* Copies up to max entries in slot order. Returns the number copied. */
size_t vs_exact_dump(const vs_exact *t, uint8_t *keys, int64_t *values, size_t max);
/* Longest probe distance present, for statistics. */
uint32_t vs_exact_max_probe(const vs_exact *t);

/* ---- IPv4 longest-prefix match (DIR-16-8-8 multibit trie) ------------------------------- */

#define VS_LPM_MAX_VALUE 0x7fffffffu
#define VS_LPM_MAX_ROUTES (1u << 26)

enum vs_lpm_status {
    VS_LPM_OK = 0,
    VS_LPM_FULL = -1,   /* max_routes reached */
    VS_LPM_NOMEM = -2,  /* growing the group pool failed; the table is unchanged */
    VS_LPM_BADARG = -3, /* length > 32 or value > VS_LPM_MAX_VALUE */
};

typedef struct vs_lpm4 vs_lpm4;

vs_lpm4 *vs_lpm4_create(uint32_t max_routes);
void vs_lpm4_destroy(vs_lpm4 *t);
int vs_lpm4_add(vs_lpm4 *t, uint32_t prefix, unsigned length, uint32_t value);
int vs_lpm4_delete(vs_lpm4 *t, uint32_t prefix, unsigned length);
int vs_lpm4_lookup(const vs_lpm4 *t, uint32_t addr, uint32_t *value);
/* out[i] is the value for addrs[i], or -1 when no route covers it. Returns the number of hits. */
size_t vs_lpm4_lookup_batch(const vs_lpm4 *t, const uint32_t *addrs, size_t n, int32_t *out);
uint32_t vs_lpm4_count(const vs_lpm4 *t);
uint32_t vs_lpm4_groups(const vs_lpm4 *t);
void vs_lpm4_clear(vs_lpm4 *t);

/* ---- Flow-key extraction (Ethernet + IPv4) ----------------------------------------------- */

#define VS_FLOW_KEY_LEN 22

enum vs_flow_key_status {
    VS_FK_OK = 0,
    VS_FK_SHORT = 1,          /* fewer than offset + 14 + 20 bytes */
    VS_FK_NOT_IPV4 = 2,       /* ethertype is not 0x0800 (VLAN tags included) */
    VS_FK_BAD_VERSION = 3,    /* IP version field is not 4 */
    VS_FK_BAD_IHL = 4,        /* IHL < 5 or the header does not fit the frame */
    VS_FK_BAD_TOTAL_LEN = 5,  /* total length < header length or > bytes present */
    VS_FK_FRAGMENT = 6,       /* MF set or fragment offset non-zero */
    VS_FK_WINDOW = 7,         /* the caller passed fewer readable bytes than the checks need */
};

/* Classifies one frame of `len` bytes, of which the first `readable` are at `frame` (readable may
 * be less than len when the caller passes only the headers). Fills key on VS_FK_OK. */
int vs_flow_key(const uint8_t *frame, size_t readable, size_t len, size_t offset, uint8_t *key);
/* Batch form over header windows: window i starts at windows + i * stride and holds the first
 * min(lens[i], stride) bytes of frame i, whose full length is lens[i]. A stride of offset + 34
 * covers every byte the checks and the key need. keys receives n * VS_FLOW_KEY_LEN bytes (zeros
 * where there is no key), status n codes. Returns the number of VS_FK_OK. */
size_t vs_flow_keys_batch(const uint8_t *windows, size_t stride, const uint64_t *lens, size_t n,
                          size_t offset, uint8_t *keys, uint8_t *status);

#endif

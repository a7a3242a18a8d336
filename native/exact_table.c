/* Exact-match table for fixed-size byte keys: robin-hood open addressing with backward-shift
 * delete.
 *
 * Theory of operation: a key lives at its home slot (hash & mask) or after it, at probe distance
 * `dist`. Robin hood insertion lets a newcomer that has travelled further take the slot of a
 * resident that is closer to home, so probe distances stay short and even. A lookup can then stop
 * as soon as it meets a slot whose resident is closer to home than the probe has travelled, which
 * bounds misses as well as hits. Delete shifts the following cluster back by one instead of leaving
 * tombstones, so the table never degrades with churn and never needs a rebuild.
 *
 * Rules: the slot count is a power of two of at least capacity / 0.75 and is fixed at creation;
 * the table holds at most `capacity` entries, so the load factor never exceeds 0.75 and every probe
 * loop terminates at an empty slot. All memory is allocated in vs_exact_create; the swap buffers
 * for robin-hood insertion are part of it, so insert, lookup and delete allocate nothing.
 */
#include <stdlib.h>
#include <string.h>
#include "vswitch_native.h"

struct vs_exact {
    uint32_t key_size;
    uint32_t capacity; /* most entries allowed */
    uint32_t mask;     /* slots - 1 */
    uint32_t count;
    uint64_t seed;
    uint32_t *dist;  /* per slot: 0 = empty, else probe distance + 1 */
    uint8_t *keys;   /* slots * key_size */
    int64_t *values; /* slots */
    uint8_t *scratch; /* 2 * key_size, for swapping keys during insertion */
};

static const uint64_t K1 = 0x9e3779b97f4a7c15ull;
static const uint64_t K2 = 0xff51afd7ed558ccdull;
static const uint64_t K3 = 0xc4ceb9fe1a85ec53ull;

static uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

/* A seeded word-at-a-time mix, finished with MurmurHash3's fmix64. Words are read as
 * little-endian byte by byte so that the value is the same on every host and in the Python twin;
 * the compiler turns the loop into one load on little-endian machines. */
uint64_t vs_exact_hash(const uint8_t *key, size_t len, uint64_t seed)
{
    uint64_t h = seed ^ ((uint64_t)len * K1);
    size_t i = 0;
    while (i < len) {
        uint64_t w = 0;
        size_t n = len - i < 8 ? len - i : 8;
        for (size_t j = 0; j < n; j++)
            w |= (uint64_t)key[i + j] << (8 * j);
        w *= K2;
        w = rotl64(w, 31);
        h ^= w;
        h = rotl64(h, 27) * K1 + K3;
        i += n;
    }
    h ^= h >> 33;
    h *= K2;
    h ^= h >> 33;
    h *= K3;
    h ^= h >> 33;
    return h;
}

uint32_t vs_exact_slots_for(uint32_t capacity)
{
    /* ceil(capacity / 0.75) without floating point. */
    uint64_t need = ((uint64_t)capacity * 4 + 2) / 3;
    uint64_t slots = 1;
    while (slots < need)
        slots <<= 1;
    return (uint32_t)slots;
}

vs_exact *vs_exact_create(uint32_t key_size, uint32_t capacity, uint64_t seed)
{
    if (key_size == 0 || key_size > VS_EXACT_MAX_KEY || capacity == 0 ||
        capacity > VS_EXACT_MAX_CAPACITY)
        return NULL;
    vs_exact *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uint32_t slots = vs_exact_slots_for(capacity);
    t->key_size = key_size;
    t->capacity = capacity;
    t->mask = slots - 1;
    t->seed = seed;
    t->dist = calloc(slots, sizeof *t->dist);
    t->keys = calloc(slots, key_size);
    t->values = calloc(slots, sizeof *t->values);
    t->scratch = malloc(2 * (size_t)key_size);
    if (!t->dist || !t->keys || !t->values || !t->scratch) {
        vs_exact_destroy(t);
        return NULL;
    }
    return t;
}

void vs_exact_destroy(vs_exact *t)
{
    if (!t)
        return;
    free(t->dist);
    free(t->keys);
    free(t->values);
    free(t->scratch);
    free(t);
}

uint32_t vs_exact_count(const vs_exact *t)
{
    return t->count;
}

uint32_t vs_exact_slots(const vs_exact *t)
{
    return t->mask + 1;
}

static uint8_t *slot_key(const vs_exact *t, uint32_t pos)
{
    return t->keys + (size_t)pos * t->key_size;
}

/* Slot holding key, or -1. */
static int64_t find(const vs_exact *t, const uint8_t *key)
{
    uint32_t pos = (uint32_t)vs_exact_hash(key, t->key_size, t->seed) & t->mask;
    for (uint32_t d = 1;; d++) {
        uint32_t r = t->dist[pos];
        /* An empty slot, or a resident closer to home than we have probed, ends the search. */
        if (r < d)
            return -1;
        if (r == d && memcmp(slot_key(t, pos), key, t->key_size) == 0)
            return pos;
        pos = (pos + 1) & t->mask;
    }
}

int vs_exact_lookup(const vs_exact *t, const uint8_t *key, int64_t *value)
{
    int64_t pos = find(t, key);
    if (pos < 0)
        return 0;
    *value = t->values[pos];
    return 1;
}

int vs_exact_insert(vs_exact *t, const uint8_t *key, int64_t value)
{
    int64_t found = find(t, key);
    if (found >= 0) {
        t->values[found] = value;
        return 2;
    }
    if (t->count >= t->capacity)
        return 0;
    uint8_t *carry = t->scratch;
    uint8_t *tmp = t->scratch + t->key_size;
    memcpy(carry, key, t->key_size);
    uint32_t pos = (uint32_t)vs_exact_hash(key, t->key_size, t->seed) & t->mask;
    uint32_t d = 1;
    for (;;) {
        uint32_t r = t->dist[pos];
        if (r == 0) {
            t->dist[pos] = d;
            memcpy(slot_key(t, pos), carry, t->key_size);
            t->values[pos] = value;
            t->count++;
            return 1;
        }
        if (r < d) {
            /* The resident is richer (closer to home): it yields the slot and moves on. */
            memcpy(tmp, slot_key(t, pos), t->key_size);
            memcpy(slot_key(t, pos), carry, t->key_size);
            memcpy(carry, tmp, t->key_size);
            int64_t v = t->values[pos];
            t->values[pos] = value;
            value = v;
            t->dist[pos] = d;
            d = r;
        }
        pos = (pos + 1) & t->mask;
        d++;
    }
}

int vs_exact_delete(vs_exact *t, const uint8_t *key)
{
    int64_t found = find(t, key);
    if (found < 0)
        return 0;
    uint32_t pos = (uint32_t)found;
    for (;;) {
        uint32_t next = (pos + 1) & t->mask;
        uint32_t r = t->dist[next];
        if (r <= 1) {
            t->dist[pos] = 0;
            break;
        }
        memcpy(slot_key(t, pos), slot_key(t, next), t->key_size);
        t->values[pos] = t->values[next];
        t->dist[pos] = r - 1;
        pos = next;
    }
    t->count--;
    return 1;
}

void vs_exact_clear(vs_exact *t)
{
    memset(t->dist, 0, ((size_t)t->mask + 1) * sizeof *t->dist);
    t->count = 0;
}

size_t vs_exact_lookup_batch(const vs_exact *t, const uint8_t *keys, size_t n, int64_t *values,
                             uint8_t *found)
{
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t pos = find(t, keys + i * t->key_size);
        if (pos >= 0) {
            values[i] = t->values[pos];
            found[i] = 1;
            hits++;
        } else {
            values[i] = 0;
            found[i] = 0;
        }
    }
    return hits;
}

size_t vs_exact_dump(const vs_exact *t, uint8_t *keys, int64_t *values, size_t max)
{
    size_t n = 0;
    for (uint32_t pos = 0; pos <= t->mask && n < max; pos++) {
        if (t->dist[pos] == 0)
            continue;
        memcpy(keys + n * t->key_size, slot_key(t, pos), t->key_size);
        values[n] = t->values[pos];
        n++;
    }
    return n;
}

uint32_t vs_exact_max_probe(const vs_exact *t)
{
    uint32_t m = 0;
    for (uint32_t pos = 0; pos <= t->mask; pos++)
        if (t->dist[pos] > m)
            m = t->dist[pos];
    return m ? m - 1 : 0;
}

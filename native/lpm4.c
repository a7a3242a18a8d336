/* IPv4 longest-prefix match: a DIR-16-8-8 multibit trie with controlled prefix expansion.
 *
 * Theory of operation: the top level is a flat array of 65,536 entries indexed by the first 16
 * address bits; below it hang "groups" of 256 entries indexed by the next 8 bits, and below those
 * groups for the last 8 bits. An entry is 0 (no route), a rule number + 1, or a group number with
 * the EXT bit set. A lookup is therefore at most three dependent array reads plus one read of the
 * rule's value. A route of length L is expanded into every entry its prefix covers at the level
 * where L ends; an entry is only overwritten by a route at least as specific as the one it holds,
 * which is why every entry can be traced back to the rule (and so the length) that owns it.
 *
 * Rules: the rules themselves (prefix, length, value) live in a fixed table of max_routes slots,
 * indexed by an exact-match table keyed on (prefix, length); entries refer to rules by number, so
 * changing a route's value touches one word. Deleting a route gives each entry it owned to the
 * next less specific covering route (found by probing the rule index for lengths L-1 .. 0), then
 * collapses any group whose 256 entries have become identical, so memory returns to the pool and
 * the trie stays the same shape as if the route had never been added. Groups come from a pool that
 * grows (by doubling) only inside vs_lpm4_add, before the trie is touched; lookups allocate nothing.
 */
#include <stdlib.h>
#include <string.h>
#include "vswitch_native.h"

#define L1_SIZE 65536u
#define GROUP 256u
#define EXT 0x80000000u
#define NO_GROUP 0xffffffffu
#define RULE_KEY 5

struct vs_lpm4 {
    uint32_t *l1;
    uint32_t *groups;   /* group_cap * GROUP entries */
    uint32_t group_cap;
    uint32_t group_high; /* groups ever handed out since the last clear */
    uint32_t group_free; /* head of the free list, linked through entry 0 */
    uint32_t groups_live;
    uint32_t max_routes;
    uint32_t count;
    uint32_t *rule_prefix;
    uint8_t *rule_len;
    uint32_t *rule_value;
    uint32_t *rule_free; /* stack of free rule numbers */
    uint32_t rule_free_top;
    vs_exact *index;     /* (prefix, length) -> rule number */
};

static uint32_t mask_of(unsigned length)
{
    return length == 0 ? 0 : 0xffffffffu << (32 - length);
}

static void rule_key(uint8_t key[RULE_KEY], uint32_t prefix, unsigned length)
{
    key[0] = (uint8_t)(prefix >> 24);
    key[1] = (uint8_t)(prefix >> 16);
    key[2] = (uint8_t)(prefix >> 8);
    key[3] = (uint8_t)prefix;
    key[4] = (uint8_t)length;
}

static void reset(vs_lpm4 *t)
{
    memset(t->l1, 0, L1_SIZE * sizeof *t->l1);
    t->group_high = 0;
    t->group_free = NO_GROUP;
    t->groups_live = 0;
    t->count = 0;
    for (uint32_t i = 0; i < t->max_routes; i++)
        t->rule_free[i] = t->max_routes - 1 - i;
    t->rule_free_top = t->max_routes;
    vs_exact_clear(t->index);
}

vs_lpm4 *vs_lpm4_create(uint32_t max_routes)
{
    if (max_routes == 0 || max_routes > VS_LPM_MAX_ROUTES)
        return NULL;
    vs_lpm4 *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->max_routes = max_routes;
    t->l1 = calloc(L1_SIZE, sizeof *t->l1);
    t->rule_prefix = calloc(max_routes, sizeof *t->rule_prefix);
    t->rule_len = calloc(max_routes, sizeof *t->rule_len);
    t->rule_value = calloc(max_routes, sizeof *t->rule_value);
    t->rule_free = calloc(max_routes, sizeof *t->rule_free);
    t->index = vs_exact_create(RULE_KEY, max_routes, 0x4c504d34u);
    if (!t->l1 || !t->rule_prefix || !t->rule_len || !t->rule_value || !t->rule_free ||
        !t->index) {
        vs_lpm4_destroy(t);
        return NULL;
    }
    reset(t);
    return t;
}

void vs_lpm4_destroy(vs_lpm4 *t)
{
    if (!t)
        return;
    free(t->l1);
    free(t->groups);
    free(t->rule_prefix);
    free(t->rule_len);
    free(t->rule_value);
    free(t->rule_free);
    vs_exact_destroy(t->index);
    free(t);
}

void vs_lpm4_clear(vs_lpm4 *t)
{
    reset(t);
}

uint32_t vs_lpm4_count(const vs_lpm4 *t)
{
    return t->count;
}

uint32_t vs_lpm4_groups(const vs_lpm4 *t)
{
    return t->groups_live;
}

static uint32_t *group_at(const vs_lpm4 *t, uint32_t g)
{
    return t->groups + (size_t)g * GROUP;
}

/* Makes sure `need` groups can be handed out without reallocating, so that no pointer into the
 * pool taken later in the same add is invalidated. */
static int reserve_groups(vs_lpm4 *t, uint32_t need)
{
    uint32_t available = t->group_cap - t->group_high;
    for (uint32_t g = t->group_free; g != NO_GROUP && available < need;
         g = group_at(t, g)[0])
        available++;
    if (available >= need)
        return 0;
    uint32_t cap = t->group_cap ? t->group_cap : 16;
    while (cap - t->group_high < need)
        cap *= 2;
    uint32_t *grown = realloc(t->groups, (size_t)cap * GROUP * sizeof *grown);
    if (!grown)
        return -1;
    t->groups = grown;
    t->group_cap = cap;
    return 0;
}

static uint32_t take_group(vs_lpm4 *t, uint32_t fill)
{
    uint32_t g;
    if (t->group_free != NO_GROUP) {
        g = t->group_free;
        t->group_free = group_at(t, g)[0];
    } else {
        g = t->group_high++;
    }
    uint32_t *grp = group_at(t, g);
    for (uint32_t i = 0; i < GROUP; i++)
        grp[i] = fill;
    t->groups_live++;
    return g;
}

static void give_group(vs_lpm4 *t, uint32_t g)
{
    group_at(t, g)[0] = t->group_free;
    t->group_free = g;
    t->groups_live--;
}

/* The group under *slot, creating it (filled with what *slot held) if *slot is a leaf. */
static uint32_t descend(vs_lpm4 *t, uint32_t *slot)
{
    if (*slot & EXT)
        return *slot & ~EXT;
    uint32_t g = take_group(t, *slot);
    *slot = EXT | g;
    return g;
}

static int depth_of(const vs_lpm4 *t, uint32_t e)
{
    return e == 0 ? -1 : t->rule_len[e - 1];
}

static void set_range(vs_lpm4 *t, uint32_t *tbl, uint32_t start, uint32_t count, uint32_t entry,
                      int depth)
{
    for (uint32_t i = start; i < start + count; i++) {
        uint32_t e = tbl[i];
        if (e & EXT)
            set_range(t, group_at(t, e & ~EXT), 0, GROUP, entry, depth);
        else if (depth_of(t, e) < depth)
            tbl[i] = entry;
    }
}

/* Turns *slot back into a leaf if its group has become uniform. */
static void collapse(vs_lpm4 *t, uint32_t *slot)
{
    if (!(*slot & EXT))
        return;
    uint32_t g = *slot & ~EXT;
    const uint32_t *grp = group_at(t, g);
    uint32_t first = grp[0];
    if (first & EXT)
        return;
    for (uint32_t i = 1; i < GROUP; i++)
        if (grp[i] != first)
            return;
    *slot = first;
    give_group(t, g);
}

static void replace_range(vs_lpm4 *t, uint32_t *tbl, uint32_t start, uint32_t count,
                          uint32_t old_entry, uint32_t new_entry)
{
    for (uint32_t i = start; i < start + count; i++) {
        uint32_t e = tbl[i];
        if (e & EXT) {
            replace_range(t, group_at(t, e & ~EXT), 0, GROUP, old_entry, new_entry);
            collapse(t, &tbl[i]);
        } else if (e == old_entry) {
            tbl[i] = new_entry;
        }
    }
}

int vs_lpm4_add(vs_lpm4 *t, uint32_t prefix, unsigned length, uint32_t value)
{
    if (length > 32 || value > VS_LPM_MAX_VALUE)
        return VS_LPM_BADARG;
    prefix &= mask_of(length);
    uint8_t key[RULE_KEY];
    rule_key(key, prefix, length);
    int64_t existing;
    if (vs_exact_lookup(t->index, key, &existing)) {
        t->rule_value[existing] = value;
        return VS_LPM_OK;
    }
    if (t->count >= t->max_routes)
        return VS_LPM_FULL;
    if (length > 16 && reserve_groups(t, length > 24 ? 2 : 1) != 0)
        return VS_LPM_NOMEM;

    uint32_t r = t->rule_free[--t->rule_free_top];
    t->rule_prefix[r] = prefix;
    t->rule_len[r] = (uint8_t)length;
    t->rule_value[r] = value;
    vs_exact_insert(t->index, key, r); /* cannot be full: it holds at most max_routes keys */
    t->count++;

    uint32_t entry = r + 1;
    int depth = (int)length;
    if (length <= 16) {
        set_range(t, t->l1, prefix >> 16, 1u << (16 - length), entry, depth);
        return VS_LPM_OK;
    }
    uint32_t g = descend(t, &t->l1[prefix >> 16]);
    if (length <= 24) {
        set_range(t, group_at(t, g), (prefix >> 8) & 0xffu, 1u << (24 - length), entry, depth);
        return VS_LPM_OK;
    }
    uint32_t g2 = descend(t, &group_at(t, g)[(prefix >> 8) & 0xffu]);
    set_range(t, group_at(t, g2), prefix & 0xffu, 1u << (32 - length), entry, depth);
    return VS_LPM_OK;
}

int vs_lpm4_delete(vs_lpm4 *t, uint32_t prefix, unsigned length)
{
    if (length > 32)
        return 0;
    prefix &= mask_of(length);
    uint8_t key[RULE_KEY];
    rule_key(key, prefix, length);
    int64_t found;
    if (!vs_exact_lookup(t->index, key, &found))
        return 0;
    uint32_t r = (uint32_t)found;

    uint32_t replacement = 0;
    for (int l = (int)length - 1; l >= 0; l--) {
        uint8_t k[RULE_KEY];
        int64_t cover;
        rule_key(k, prefix & mask_of((unsigned)l), (unsigned)l);
        if (vs_exact_lookup(t->index, k, &cover)) {
            replacement = (uint32_t)cover + 1;
            break;
        }
    }

    uint32_t entry = r + 1;
    if (length <= 16) {
        replace_range(t, t->l1, prefix >> 16, 1u << (16 - length), entry, replacement);
    } else {
        uint32_t *slot1 = &t->l1[prefix >> 16];
        /* A rule longer than /16 always owns an entry inside a group (a group is collapsed only
         * when uniform, and no single rule can fill one), so these tests only guard the
         * invariant. */
        if (!(*slot1 & EXT))
            goto unlink;
        uint32_t *grp = group_at(t, *slot1 & ~EXT);
        if (length <= 24) {
            replace_range(t, grp, (prefix >> 8) & 0xffu, 1u << (24 - length), entry, replacement);
        } else {
            uint32_t *slot2 = &grp[(prefix >> 8) & 0xffu];
            if (!(*slot2 & EXT))
                goto unlink;
            replace_range(t, group_at(t, *slot2 & ~EXT), prefix & 0xffu, 1u << (32 - length),
                          entry, replacement);
            collapse(t, slot2);
        }
        collapse(t, slot1);
    }

unlink:
    vs_exact_delete(t->index, key);
    t->rule_free[t->rule_free_top++] = r;
    t->count--;
    return 1;
}

static uint32_t lookup_entry(const vs_lpm4 *t, uint32_t addr)
{
    uint32_t e = t->l1[addr >> 16];
    if (e & EXT) {
        e = group_at(t, e & ~EXT)[(addr >> 8) & 0xffu];
        if (e & EXT)
            e = group_at(t, e & ~EXT)[addr & 0xffu];
    }
    return e;
}

int vs_lpm4_lookup(const vs_lpm4 *t, uint32_t addr, uint32_t *value)
{
    uint32_t e = lookup_entry(t, addr);
    if (e == 0)
        return 0;
    *value = t->rule_value[e - 1];
    return 1;
}

size_t vs_lpm4_lookup_batch(const vs_lpm4 *t, const uint32_t *addrs, size_t n, int32_t *out)
{
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t e = lookup_entry(t, addrs[i]);
        if (e == 0) {
            out[i] = -1;
        } else {
            out[i] = (int32_t)t->rule_value[e - 1];
            hits++;
        }
    }
    return hits;
}

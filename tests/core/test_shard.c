/*
 * Tests for core/shard: entries, the keyed operations, incremental resizing (grow, same-size
 * rebuild, shrink) seen only through the API, expiry, foreach, random and the counters (SCAN
 * and the snapshot walk are in test_shard_scan.c; the helpers in shard_util.h).
 * shard_rehash_step(s, 0) moves nothing and tells whether a resize is in progress, which is how the
 * tests know they are checking mid-resize.
 *
 * put_i makes key i's entry with shard_entry_new (a slab chunk) for even i and kv_entry_new
 * (a malloc block, reached through a table's heap directory) for odd i, so every test runs
 * both kinds through resizes, SCAN and expiry.  Tests that reckon table bytes as shard_mem
 * minus the entries' kv_entry_mem use put_heap_i: slab memory is counted by the page.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/shard.h"
#include "core/slab.h"

#include "tests/core/shard_util.h"

/* ---------------------------------------------------------------------------------------- */

Test(shard, entry_accessors)
{
    struct kv_entry *e = kv_entry_new("foo", 3, "barbaz", 6, KV_NO_EXPIRE);
    size_t kl, vl;
    cr_assert(memcmp(kv_entry_key(e, &kl), "foo", 3) == 0);
    cr_assert_eq(kl, 3);
    cr_assert(memcmp(kv_entry_val(e, &vl), "barbaz", 6) == 0);
    cr_assert_eq(vl, 6);
    cr_assert_eq(kv_entry_expire(e), KV_NO_EXPIRE);
    cr_assert_geq(kv_entry_mem(e), 1 + 3 + 6);
    kv_entry_free(e);

    e = kv_entry_new("k", 1, "v", 1, 1234567890123LL);
    cr_assert_eq(kv_entry_expire(e), 1234567890123LL);
    cr_assert(memcmp(kv_entry_key(e, &kl), "k", 1) == 0 && kl == 1);
    cr_assert(memcmp(kv_entry_val(e, &vl), "v", 1) == 0 && vl == 1);
    kv_entry_free(e);

    e = kv_entry_new("k", 1, "v", 1, 0); /* 0 is a deadline, not "none" */
    cr_assert_eq(kv_entry_expire(e), 0);
    kv_entry_free(e);

    e = kv_entry_new(NULL, 0, NULL, 0, KV_NO_EXPIRE);
    kv_entry_key(e, &kl);
    kv_entry_val(e, &vl);
    cr_assert_eq(kl, 0);
    cr_assert_eq(vl, 0);
    kv_entry_free(e);

    e = kv_entry_new("", 0, "x", 1, 42);
    cr_assert_eq(kv_entry_expire(e), 42);
    cr_assert_eq(*kv_entry_val(e, &vl), 'x');
    cr_assert_eq(vl, 1);
    kv_entry_free(e);

    /* Multi-byte length varints: a 300-byte key and a 1 MiB value. */
    size_t big = 1u << 20;
    char *v = malloc(big);
    char key[300];
    for (size_t i = 0; i < big; i++)
        v[i] = (char)(i * 131 + 7);
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (char)('a' + i % 26);
    e = kv_entry_new(key, sizeof(key), v, big, 99);
    const char *ek = kv_entry_key(e, &kl);
    const char *ev = kv_entry_val(e, &vl);
    cr_assert_eq(kl, sizeof(key));
    cr_assert(memcmp(ek, key, kl) == 0);
    cr_assert_eq(vl, big);
    cr_assert(memcmp(ev, v, big) == 0);
    cr_assert_eq(kv_entry_expire(e), 99);
    cr_assert_geq(kv_entry_mem(e), big + sizeof(key));

    struct shard *s = shard_new();
    shard_put(s, kv_hash(key, sizeof(key)), e);
    struct kv_entry *g = shard_get(s, kv_hash(key, sizeof(key)), key, sizeof(key));
    cr_assert_eq(g, e);
    cr_assert_geq(shard_mem(s), big);
    shard_free(s);
    free(v);
}

Test(shard, put_get_replace_del)
{
    struct shard *s = shard_new();
    cr_assert_eq(shard_count(s), 0);
    cr_assert_null(shard_get(s, kv_hash("a", 1), "a", 1));
    cr_assert_eq(shard_del(s, kv_hash("a", 1), "a", 1), 0);

    shard_put(s, kv_hash("a", 1), kv_entry_new("a", 1, "1", 1, KV_NO_EXPIRE));
    shard_put(s, kv_hash("b", 1), kv_entry_new("b", 1, "2", 1, KV_NO_EXPIRE));
    shard_put(s, kv_hash("", 0), kv_entry_new("", 0, "", 0, KV_NO_EXPIRE));
    cr_assert_eq(shard_count(s), 3);

    size_t vl;
    struct kv_entry *e = shard_get(s, kv_hash("a", 1), "a", 1);
    cr_assert_not_null(e);
    cr_assert_eq(*kv_entry_val(e, &vl), '1');
    e = shard_get(s, kv_hash("", 0), "", 0);
    cr_assert_not_null(e);
    kv_entry_val(e, &vl);
    cr_assert_eq(vl, 0);
    /* Same hash, different key: must not match. */
    cr_assert_null(shard_get(s, kv_hash("a", 1), "ab", 2));
    cr_assert_null(shard_get(s, kv_hash("a", 1), "b", 1));

    /* Replace: count unchanged, new value visible. */
    shard_put(s, kv_hash("a", 1), kv_entry_new("a", 1, "one", 3, KV_NO_EXPIRE));
    cr_assert_eq(shard_count(s), 3);
    e = shard_get(s, kv_hash("a", 1), "a", 1);
    cr_assert(memcmp(kv_entry_val(e, &vl), "one", 3) == 0 && vl == 3);

    cr_assert_eq(shard_del(s, kv_hash("a", 1), "a", 1), 1);
    cr_assert_eq(shard_del(s, kv_hash("a", 1), "a", 1), 0);
    cr_assert_null(shard_get(s, kv_hash("a", 1), "a", 1));
    cr_assert_not_null(shard_get(s, kv_hash("b", 1), "b", 1));
    cr_assert_eq(shard_count(s), 2);
    cr_assert_eq(shard_del(s, kv_hash("", 0), "", 0), 1);
    cr_assert_eq(shard_count(s), 1);
    shard_free(s);
}

static void assert_val(struct shard *s, const char *k, const char *v, int64_t expire)
{
    size_t kl = strlen(k), vl;
    struct kv_entry *e = shard_get(s, kv_hash(k, kl), k, kl);
    cr_assert_not_null(e, "%s missing", k);
    const char *ev = kv_entry_val(e, &vl);
    cr_assert(vl == strlen(v) && memcmp(ev, v, vl) == 0, "%s: %.*s, not %s", k, (int)vl, ev, v);
    cr_assert_eq(kv_entry_expire(e), expire);
}

Test(shard, set_overwrites_in_place_only_when_the_shape_is_the_same)
{
    struct shard *s = shard_new();
    uint64_t h = kv_hash("k", 1);
    struct kv_entry *e1 = shard_set(s, h, "k", 1, "aaaa", 4, KV_NO_EXPIRE);
    size_t mem = shard_mem(s);
    /* Same length, no deadline either way: the same entry, the new value, no memory moved. */
    struct kv_entry *e2 = shard_set(s, h, "k", 1, "bbbb", 4, KV_NO_EXPIRE);
    cr_assert_eq(e2, e1);
    cr_assert_eq(shard_mem(s), mem);
    assert_val(s, "k", "bbbb", KV_NO_EXPIRE);
    /* Its own value as the new one (val points into the entry). */
    size_t vl;
    const char *own = kv_entry_val(e2, &vl);
    cr_assert_eq(shard_set(s, h, "k", 1, own, vl, KV_NO_EXPIRE), e1);
    assert_val(s, "k", "bbbb", KV_NO_EXPIRE);
    /* A deadline where there was none: a new entry; counted among expires. */
    struct kv_entry *e3 = shard_set(s, h, "k", 1, "cccc", 4, 5000);
    cr_assert_neq(e3, e1);
    cr_assert_eq(shard_expires(s), 1);
    assert_val(s, "k", "cccc", 5000);
    /* Deadline to deadline, same length: in place, the deadline too. */
    cr_assert_eq(shard_set(s, h, "k", 1, "dddd", 4, 7000), e3);
    cr_assert_eq(shard_expires(s), 1);
    assert_val(s, "k", "dddd", 7000);
    /* No deadline again, then another length: new entries each time, and the part of the
     * old value the new one is made of survives the old one's freeing. */
    struct kv_entry *e4 = shard_set(s, h, "k", 1, "dddd", 4, KV_NO_EXPIRE);
    cr_assert_neq(e4, e3);
    cr_assert_eq(shard_expires(s), 0);
    own = kv_entry_val(e4, &vl);
    struct kv_entry *e5 = shard_set(s, h, "k", 1, own, 2, KV_NO_EXPIRE);
    assert_val(s, "k", "dd", KV_NO_EXPIRE);
    cr_assert_eq(shard_count(s), 1);
    /* A key not there: inserted. */
    shard_set(s, kv_hash("other", 5), "other", 5, "x", 1, KV_NO_EXPIRE);
    cr_assert_eq(shard_count(s), 2);
    assert_val(s, "k", "dd", KV_NO_EXPIRE);
    (void)e5;
    shard_free(s);
}

/* Key i's overwritten value (NUL-terminated; returns its length): one byte longer than
 * val_of's for every third key, the same length with another first byte otherwise. */
static size_t new_val_of(char *v, unsigned i)
{
    size_t vl = val_of(v, i);
    if (i % 3 == 0)
        v[vl++] = '+';
    else
        v[0] = 'V';
    v[vl] = 0;
    return vl;
}

Test(shard, set_during_resize_reaches_keys_in_either_table)
{
    struct shard *s = shard_new();
    unsigned n = fill_into_resize(s, 3000);
    /* Overwrite every key (same length: in place wherever it is; a longer value for every
     * third: a new entry in the new table), while the resize goes on. */
    for (unsigned i = 0; i < n; i++) {
        char k[32], v[48];
        size_t kl = key_of(k, i), vl = new_val_of(v, i);
        shard_set(s, kv_hash(k, kl), k, kl, v, vl, KV_NO_EXPIRE);
    }
    cr_assert_eq(shard_count(s), n);
    for (unsigned i = 0; i < n; i++) {
        char k[32], v[48];
        size_t kl = key_of(k, i);
        new_val_of(v, i);
        k[kl] = 0;
        assert_val(s, k, v, KV_NO_EXPIRE);
    }
    while (shard_rehash_step(s, 1000))
        ;
    cr_assert_eq(shard_count(s), n);
    shard_free(s);
}

Test(shard, counters)
{
    struct shard *s = shard_new();
    size_t base = shard_mem(s);
    cr_assert_gt(base, 0);

    put_heap_i(s, 1, KV_NO_EXPIRE);
    put_heap_i(s, 2, 5000);
    cr_assert_eq(shard_count(s), 2);
    cr_assert_eq(shard_expires(s), 1);
    size_t m2 = shard_mem(s);
    cr_assert_gt(m2, base);
    struct kv_entry *e1 = get_i(s, 1), *e2 = get_i(s, 2);
    cr_assert_eq(m2, base + kv_entry_mem(e1) + kv_entry_mem(e2));

    put_heap_i(s, 2, KV_NO_EXPIRE); /* replacing drops the deadline */
    cr_assert_eq(shard_expires(s), 0);
    put_heap_i(s, 1, 7000); /* and this adds one */
    cr_assert_eq(shard_expires(s), 1);
    cr_assert_eq(shard_count(s), 2);

    cr_assert_eq(del_i(s, 1), 1);
    cr_assert_eq(shard_expires(s), 0);
    cr_assert_eq(shard_count(s), 1);
    cr_assert_eq(del_i(s, 2), 1);
    cr_assert_eq(shard_count(s), 0);
    cr_assert_eq(shard_mem(s), base);

    for (unsigned i = 0; i < 5000; i++)
        put_heap_i(s, i, i % 2 ? 100 : KV_NO_EXPIRE);
    cr_assert_eq(shard_count(s), 5000);
    cr_assert_eq(shard_expires(s), 2500);
    cr_assert_gt(shard_mem(s), base + 5000 * 24);
    shard_flush(s);
    cr_assert_eq(shard_count(s), 0);
    cr_assert_eq(shard_expires(s), 0);
    cr_assert_eq(shard_mem(s), base);
    shard_free(s);
}

Test(shard, many_keys_lookups_during_resize)
{
    enum { N = 200000 };
    struct shard *s = shard_new();
    unsigned resizes = 0, puts_in_resize = 0;
    bool was = false;

    for (unsigned i = 0; i < N; i++) {
        put_i(s, i, KV_NO_EXPIRE);
        bool now = in_resize(s);
        if (now) {
            puts_in_resize++;
            cr_assert(has_i(s, i));
            cr_assert(has_i(s, (unsigned)(rng() % (i + 1))));
            cr_assert(!has_i(s, N + i)); /* a miss checks both tables */
        }
        if (now && !was) {
            /* A resize just began: every key must still be found, and these lookups drive
             * the migration along while we check. */
            resizes++;
            for (unsigned j = 0; j <= i; j++)
                cr_assert(has_i(s, j), "key %u lost at resize %u (n=%u)", j, resizes, i + 1);
        }
        was = now;
        cr_assert_eq(shard_count(s), i + 1);
    }
    cr_assert_geq(resizes, 10, "only %u resizes for %u keys", resizes, N);
    cr_assert_gt(puts_in_resize, 0);
    while (shard_rehash_step(s, 1000))
        ;
    for (unsigned j = 0; j < N; j++)
        cr_assert(has_i(s, j));
    shard_free(s);
}

Test(shard, deletes_and_replaces_during_resize)
{
    struct shard *s = shard_new();
    /* Grow past a few resizes, then stop right after one begins. */
    unsigned n = fill_into_resize(s, 3000);
    cr_assert(in_resize(s));

    /* Replace some keys (most still in the old table) and delete others, mid-resize. */
    unsigned mid_ops = 0;
    for (unsigned i = 0; i < n; i += 3) {
        if (in_resize(s))
            mid_ops++;
        cr_assert_eq(del_i(s, i), 1);
        cr_assert_eq(del_i(s, i), 0);
    }
    cr_assert_gt(mid_ops, 10);
    for (unsigned i = 1; i < n; i += 3) {
        char k[32];
        size_t kl = key_of(k, i);
        shard_put(s, kv_hash(k, kl), kv_entry_new(k, kl, "new", 3, KV_NO_EXPIRE));
    }
    unsigned live = n - (n + 2) / 3;
    cr_assert_eq(shard_count(s), live);
    for (unsigned i = 0; i < n; i++) {
        struct kv_entry *e = get_i(s, i);
        if (i % 3 == 0) {
            cr_assert_null(e);
        } else if (i % 3 == 1) {
            size_t vl;
            cr_assert_not_null(e);
            cr_assert(memcmp(kv_entry_val(e, &vl), "new", 3) == 0 && vl == 3);
        } else {
            cr_assert(has_i(s, i));
        }
    }
    while (shard_rehash_step(s, 7))
        ;
    cr_assert_eq(shard_count(s), live);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(get_i(s, i) != NULL, i % 3 != 0);
    shard_free(s);
}

Test(shard, tombstone_churn_stays_bounded)
{
    enum { WIN = 100, ROUNDS = 120000 };
    struct shard *s = shard_new();
    size_t peak = 0;
    for (unsigned i = 0; i < ROUNDS; i++) {
        put_i(s, i, KV_NO_EXPIRE);
        if (i >= WIN) {
            /* Delete a random key of the window, so deletes land mid-run and leave
             * tombstones, then the oldest one. */
            unsigned lo = i - WIN, r = lo + (unsigned)(rng() % WIN);
            del_i(s, r);
            del_i(s, lo);
        }
        if (i > 10000 && shard_mem(s) > peak)
            peak = shard_mem(s);
        if (i % 997 == 0) {
            cr_assert(has_i(s, i));
            cr_assert_null(get_i(s, i - (i >= WIN ? WIN : 0) - 1));
        }
    }
    cr_assert_leq(shard_count(s), WIN);
    cr_assert_gt(shard_count(s), WIN / 3);
    /* About 100 entries of ~48 bytes; the table must not have grown with the churn. */
    cr_assert_lt(peak, 64 * 1024, "memory grew with churn: %zu bytes", peak);
    for (unsigned i = ROUNDS - WIN; i < ROUNDS; i++) {
        struct kv_entry *e = get_i(s, i);
        if (e)
            cr_assert(has_i(s, i));
    }
    shard_free(s);
}

/* Sum of kv_entry_mem over the live entries, to tell table bytes apart in shard_mem. */
static void sum_mem(void *arg, const struct kv_entry *e)
{
    *(size_t *)arg += kv_entry_mem(e);
}

static size_t table_bytes(struct shard *s)
{
    size_t ent = 0;
    shard_foreach(s, sum_mem, &ent);
    return shard_mem(s) - ent;
}

/*
 * Tombstones that dominate must lead to a rebuild at the same size, never to growth.  Keys
 * are picked by their low hash bits so that small groups share a home bucket in a small
 * table; in each group all but the last key is deleted, which leaves tombstones inside the
 * group's run.  At most a handful of keys are live at any time, so the table must never
 * hold more than two tables of its initial size (old and new during a rebuild).
 */
Test(shard, tombstones_rebuild_at_same_size)
{
    enum { POOL = 40000, ROUNDS = 4000 };
    struct shard *s = shard_new();
    size_t base = table_bytes(s), peak = 0;
    /* Key indices sorted by bucket (hash & 15); 16 is a bound on any small table. */
    unsigned *by_b[16], nb[16] = {0}, used[16] = {0};
    for (int b = 0; b < 16; b++)
        by_b[b] = malloc(POOL * sizeof(unsigned));
    for (unsigned i = 0; i < POOL; i++) {
        char k[32];
        size_t kl = key_of(k, i);
        unsigned b = kv_hash(k, kl) & 15;
        by_b[b][nb[b]++] = i;
    }
    unsigned keep[3] = {~0u, ~0u, ~0u};
    bool rebuilt = false;
/* Sample after every operation: a rebuild of a small table finishes within the next one. */
#define OBSERVE()                                                                                  \
    do {                                                                                           \
        size_t tb_ = table_bytes(s);                                                               \
        rebuilt |= tb_ > base;                                                                     \
        peak = tb_ > peak ? tb_ : peak;                                                            \
    } while (0)
    for (unsigned r = 0; r < ROUNDS; r++) {
        unsigned b = (unsigned)(rng() % 16), g[3];
        cr_assert_lt(used[b] + 3, nb[b]);
        for (int j = 0; j < 3; j++) {
            g[j] = by_b[b][used[b]++];
            put_heap_i(s, g[j], KV_NO_EXPIRE);
            OBSERVE();
        }
        cr_assert_eq(del_i(s, g[0]), 1);
        cr_assert_eq(del_i(s, g[1]), 1);
        if (keep[r % 3] != ~0u)
            cr_assert_eq(del_i(s, keep[r % 3]), 1);
        OBSERVE();
        keep[r % 3] = g[2];
        for (int j = 0; j < 3; j++)
            if (keep[j] != ~0u)
                cr_assert(has_i(s, keep[j]));
        cr_assert_leq(shard_count(s), 3);
    }
#undef OBSERVE
    cr_assert(rebuilt, "tombstones never caused a rebuild");
    cr_assert_leq(peak, 2 * base, "table grew to %zu bytes (initial %zu)", peak, base);
    for (int b = 0; b < 16; b++)
        free(by_b[b]);
    shard_free(s);
}

/*
 * Move one slot at a time and, after each move, check with a full SCAN (which moves nothing)
 * that every key is still reachable in whichever table holds it.  This catches a move that
 * breaks the probe runs of keys still waiting in the old table.
 */
Test(shard, every_single_slot_move_keeps_keys_reachable)
{
    struct shard *s = shard_new();
    unsigned n = 0, resizes = 0;
    while (resizes < 5) {
        put_i(s, n++, KV_NO_EXPIRE);
        if (!in_resize(s))
            continue;
        resizes++;
        unsigned *hits = calloc(n, sizeof(unsigned));
        int steps = 0;
        do {
            struct seen sn = {.hits = hits, .n = n};
            memset(hits, 0, n * sizeof(unsigned));
            uint64_t c = 0;
            int calls = 0;
            do {
                c = shard_scan(s, c, 100, count_visit, &sn);
                cr_assert_lt(++calls, 100000);
            } while (c);
            for (unsigned i = 0; i < n; i++)
                cr_assert_geq(hits[i], 1, "key %u unreachable after %d moves", i, steps);
            steps++;
        } while (shard_rehash_step(s, 1));
        cr_assert_gt(steps, 8);
        free(hits);
        for (unsigned i = 0; i < n; i++)
            cr_assert(has_i(s, i));
    }
    shard_free(s);
}

Test(shard, shrinks_after_mass_delete)
{
    enum { N = 50000 };
    struct shard *s = shard_new();
    for (unsigned i = 0; i < N; i++)
        put_heap_i(s, i, KV_NO_EXPIRE);
    while (shard_rehash_step(s, 1000))
        ;
    size_t full = shard_mem(s);
    bool shrink_seen = false;
    for (unsigned i = 0; i < N; i++) {
        if (i % 100 == 0)
            continue;
        cr_assert_eq(del_i(s, i), 1);
        if (in_resize(s)) {
            shrink_seen = true;
            if (i % 7 == 0)
                cr_assert(has_i(s, (i / 100) * 100));
        }
    }
    while (shard_rehash_step(s, 1000))
        ;
    cr_assert(shrink_seen);
    cr_assert_eq(shard_count(s), N / 100);
    for (unsigned i = 0; i < N; i += 100)
        cr_assert(has_i(s, i));
    /* 500 entries left: the table part must be far below that of 50k. */
    cr_assert_lt(shard_mem(s), full / 20, "mem %zu of %zu", shard_mem(s), full);
    shard_free(s);
}

struct expctx {
    int64_t now;
    size_t calls;
    unsigned *hits;
};

static void on_exp(void *arg, const struct kv_entry *e)
{
    struct expctx *c = arg;
    cr_assert_neq(kv_entry_expire(e), KV_NO_EXPIRE);
    cr_assert_leq(kv_entry_expire(e), c->now);
    c->hits[idx_of(e)]++;
    c->calls++;
}

/* Keys i%3==0 have no deadline, i%3==1 are due at 1000 + i, i%3==2 at 10^9. */
static int64_t dl_of(unsigned i)
{
    if (i % 3 == 0)
        return KV_NO_EXPIRE;
    return i % 3 == 1 ? 1000 + (int64_t)i : 1000000000;
}

static void check_expiry(struct shard *s, unsigned n, size_t budget)
{
    struct expctx c = {.now = 1000 + n, .hits = calloc(n, sizeof(unsigned))};
    size_t due = n / 3 + (n % 3 > 1), removed = 0;
    for (int round = 0; round < 100000 && removed < due; round++) {
        size_t r = shard_expire_step(s, c.now, budget, on_exp, &c);
        cr_assert_leq(r, budget);
        removed += r;
    }
    cr_assert_eq(removed, due);
    cr_assert_eq(c.calls, due);
    /* More steps find nothing more. */
    for (int round = 0; round < 100; round++)
        cr_assert_eq(shard_expire_step(s, c.now, budget, on_exp, &c), 0);
    for (unsigned i = 0; i < n; i++) {
        cr_assert_eq(c.hits[i], i % 3 == 1 ? 1u : 0u, "key %u expired %u times", i, c.hits[i]);
        cr_assert_eq(has_i(s, i), i % 3 != 1);
    }
    cr_assert_eq(shard_count(s), n - due);
    cr_assert_eq(shard_expires(s), n / 3 + (n % 3 > 2));
    free(c.hits);
}

Test(shard, expire_step_removes_only_expired)
{
    struct shard *s = shard_new();
    cr_assert_eq(shard_expire_step(s, 1 << 30, 100, NULL, NULL), 0);
    unsigned n = 3000;
    for (unsigned i = 0; i < n; i++)
        put_i(s, i, dl_of(i));
    while (shard_rehash_step(s, 1000))
        ;
    /* Nothing due yet at time 0. */
    for (int round = 0; round < 500; round++)
        cr_assert_eq(shard_expire_step(s, 0, 64, NULL, NULL), 0);
    cr_assert_eq(shard_count(s), n);
    check_expiry(s, n, 16);
    shard_free(s);
}

Test(shard, expire_deadline_boundary)
{
    struct shard *s = shard_new();
    put_i(s, 1, 5000);
    put_i(s, 2, 5001);
    put_i(s, 3, KV_NO_EXPIRE);
    cr_assert_eq(shard_expire_step(s, 4999, 1000, NULL, NULL), 0);
    cr_assert_eq(shard_expire_step(s, 5000, 1000, NULL, NULL), 1); /* due at its deadline */
    cr_assert_null(get_i(s, 1));
    cr_assert(has_i(s, 2));
    cr_assert_eq(shard_expire_step(s, 5001, 1000, NULL, NULL), 1);
    cr_assert_null(get_i(s, 2));
    cr_assert_eq(shard_expire_step(s, INT64_MAX, 1000, NULL, NULL), 0);
    cr_assert(has_i(s, 3));
    cr_assert_eq(shard_expires(s), 0);
    cr_assert_eq(shard_count(s), 1);
    shard_free(s);
}

Test(shard, expire_step_during_resize)
{
    struct shard *s = shard_new();
    unsigned n = 0;
    while (n < 2000 || !in_resize(s)) {
        put_i(s, n, dl_of(n));
        n++;
    }
    /* Nothing but expiry steps from here: almost every key is still in the old table, so
     * the sweep must find them there (check_expiry calls only shard_expire_step before it
     * has removed them all). */
    cr_assert_eq(shard_expire_step(s, 0, 8, NULL, NULL), 0);
    cr_assert(in_resize(s));
    check_expiry(s, n, 8);
    cr_assert_eq(shard_rehash_step(s, 0), 0);
    shard_free(s);
}

/* ---------------------------------------------------------------------------------------- */

Test(shard, foreach_visits_all_even_mid_resize)
{
    struct shard *s = shard_new();
    unsigned n = fill_into_resize(s, 5000);
    cr_assert(in_resize(s));
    struct seen sn = {.hits = calloc(n, sizeof(unsigned)), .n = n};
    shard_foreach(s, count_visit, &sn);
    cr_assert_eq(sn.calls, n);
    for (unsigned i = 0; i < n; i++)
        cr_assert_eq(sn.hits[i], 1, "key %u visited %u times", i, sn.hits[i]);
    free(sn.hits);
    shard_free(s);
}

Test(shard, flush_resets)
{
    struct shard *s = shard_new();
    size_t base = shard_mem(s);
    for (unsigned i = 0; i < 20000; i++)
        put_i(s, i, i % 2 ? 5 : KV_NO_EXPIRE);
    cr_assert(shard_mem(s) > base);
    shard_flush(s);
    cr_assert_eq(shard_count(s), 0);
    cr_assert_eq(shard_expires(s), 0);
    cr_assert_eq(shard_mem(s), base);
    cr_assert_null(get_i(s, 5));
    cr_assert_null(shard_random(s, 12345));
    cr_assert_eq(shard_rehash_step(s, 0), 0);
    struct seen sn = {.hits = NULL, .n = 0};
    shard_foreach(s, count_visit, &sn);
    cr_assert_eq(sn.calls, 0);
    /* Still usable, and flushing mid-resize works too. */
    fill_into_resize(s, 100);
    cr_assert(has_i(s, 0));
    shard_flush(s);
    cr_assert_eq(shard_count(s), 0);
    cr_assert_eq(shard_mem(s), base);
    cr_assert_eq(shard_rehash_step(s, 0), 0);
    put_i(s, 1, KV_NO_EXPIRE);
    cr_assert(has_i(s, 1));
    shard_free(s);
}

Test(shard, random_entry)
{
    struct shard *s = shard_new();
    cr_assert_null(shard_random(s, 0));
    cr_assert_null(shard_random(s, ~0ULL));
    for (unsigned i = 0; i < 5; i++)
        put_i(s, i, KV_NO_EXPIRE);
    unsigned hits[5] = {0};
    for (int k = 0; k < 2000; k++) {
        struct kv_entry *e = shard_random(s, rng());
        cr_assert_not_null(e);
        unsigned i = idx_of(e);
        cr_assert_lt(i, 5);
        hits[i]++;
    }
    for (unsigned i = 0; i < 5; i++)
        cr_assert_gt(hits[i], 0, "key %u never chosen", i);
    for (unsigned i = 0; i < 5; i++)
        del_i(s, i);
    cr_assert_null(shard_random(s, rng()));

    /* Mid-resize: only live entries come back, from both tables.  Right after a resize
     * begins nearly every key is still in the old table, and random moves nothing. */
    unsigned n = fill_into_resize(s, 1000);
    unsigned *seen = calloc(n, sizeof(unsigned)), distinct = 0;
    for (int k = 0; k < 500; k++) {
        struct kv_entry *e = shard_random(s, rng());
        cr_assert_not_null(e);
        unsigned i = idx_of(e);
        cr_assert_lt(i, n);
        distinct += seen[i]++ == 0;
    }
    cr_assert(in_resize(s));
    cr_assert_gt(distinct, 100, "only %u distinct keys from %u", distinct, n);
    free(seen);
    for (unsigned i = 0; i < n; i += 2)
        del_i(s, i);
    for (int k = 0; k < 2000; k++) {
        struct kv_entry *e = shard_random(s, rng());
        cr_assert_not_null(e);
        unsigned i = idx_of(e);
        cr_assert(i < n && i % 2 == 1);
        cr_assert_eq(get_i(s, i), e);
    }
    shard_free(s);
}

/* A long random sequence of operations checked against a plain array model. */
struct model {
    signed char *state; /* 0 absent, 1 present, 2 present with deadline */
    int64_t *dl;
    size_t live;
    int64_t now;
};

static void model_expired(void *arg, const struct kv_entry *e)
{
    struct model *m = arg;
    unsigned i = idx_of(e);
    cr_assert_eq(m->state[i], 2, "key %u expired but has no deadline", i);
    cr_assert_leq(m->dl[i], m->now);
    cr_assert_eq(kv_entry_expire(e), m->dl[i]);
    m->state[i] = 0;
    m->live--;
}

Test(shard, random_ops_match_model)
{
    enum { KEYS = 3000, OPS = 300000 };
    struct shard *s = shard_new();
    struct model m = {.state = calloc(KEYS, 1), .dl = calloc(KEYS, sizeof(int64_t))};
    size_t expired = 0;
    for (unsigned op = 0; op < OPS; op++) {
        unsigned r = (unsigned)rng(), i = (r >> 8) % KEYS;
        /* Phases that favour puts, then deletes, so the table grows and shrinks. */
        bool growing = (op / 40000) % 2 == 0;
        switch (r % 8) {
        case 0:
        case 1:
        case 2:
            if (growing || r % 3 == 0) {
                bool dl = (r >> 4) % 5 == 0;
                m.dl[i] = m.now + 1 + (r >> 20) % 50;
                put_i(s, i, dl ? m.dl[i] : KV_NO_EXPIRE);
                m.live += m.state[i] == 0;
                m.state[i] = dl ? 2 : 1;
            }
            break;
        case 3:
        case 4:
            if (!growing || r % 3 == 0) {
                cr_assert_eq(del_i(s, i), m.state[i] != 0);
                m.live -= m.state[i] != 0;
                m.state[i] = 0;
            }
            break;
        case 5:
            m.now++;
            expired += shard_expire_step(s, m.now, r % 64, model_expired, &m);
            break;
        case 6:
            shard_rehash_step(s, r % 64);
            break;
        default:
            cr_assert_eq(has_i(s, i), m.state[i] != 0, "op %u key %u", op, i);
            break;
        }
        cr_assert_eq(shard_count(s), m.live);
    }
    cr_assert_gt(expired, 100);
    size_t dl = 0;
    for (unsigned i = 0; i < KEYS; i++) {
        cr_assert_eq(get_i(s, i) != NULL, m.state[i] != 0);
        dl += m.state[i] == 2;
    }
    cr_assert_eq(shard_expires(s), dl);
    free(m.state);
    free(m.dl);
    shard_free(s);
}

/* Another thread reads the counters while the owner writes (INFO does this); run under
 * ThreadSanitizer this shows the counters are race-free.  Inserts only, so each counter on
 * its own never drops (relaxed loads of one location are coherent; nothing is assumed about
 * the order between different counters).  The reader only records; asserts run on the
 * main thread. */
struct watcher {
    struct shard *s;
    int stop;
    size_t reads, last_count, last_exp, bad;
};

static void *watch(void *arg)
{
    struct watcher *w = arg;
    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        size_t c = shard_count(w->s), x = shard_expires(w->s);
        if (c < w->last_count || x < w->last_exp || shard_mem(w->s) == 0)
            w->bad++;
        w->last_count = c;
        w->last_exp = x;
        w->reads++;
    }
    return NULL;
}

Test(shard, counters_read_from_another_thread)
{
    struct watcher w = {.s = shard_new()};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, watch, &w), 0);
    for (unsigned i = 0; i < 20000; i++)
        put_i(w.s, i, i % 2 ? 100 : KV_NO_EXPIRE);
    __atomic_store_n(&w.stop, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    cr_assert_gt(w.reads, 0);
    cr_assert_eq(w.bad, 0);
    cr_assert_eq(shard_count(w.s), 20000);
    cr_assert_eq(shard_expires(w.s), 10000);
    shard_free(w.s);
}

/* ---------------------------------------------------------------------------------------- */
/* Slab entries (shard_entry_new)                                                           */

Test(shard, slab_entry_accessors_and_sizes)
{
    struct shard *s = shard_new();
    size_t base = shard_mem(s);
    struct kv_entry *e = shard_entry_new(s, "foo", 3, "barbaz", 6, KV_NO_EXPIRE);
    size_t kl, vl;
    cr_assert(memcmp(kv_entry_key(e, &kl), "foo", 3) == 0 && kl == 3);
    cr_assert(memcmp(kv_entry_val(e, &vl), "barbaz", 6) == 0 && vl == 6);
    cr_assert_eq(kv_entry_expire(e), KV_NO_EXPIRE);
    cr_assert_eq(kv_entry_mem(e), slab_chunk_bytes(3 + 3 + 6));
    cr_assert_gt(shard_mem(s), base, "a slab entry is counted from its allocation");
    size_t with_one = shard_mem(s);
    kv_entry_free(e); /* never put */
    cr_assert_eq(shard_mem(s), with_one, "the emptied slab is kept for reuse");

    e = shard_entry_new(s, NULL, 0, NULL, 0, 0);
    cr_assert_eq(kv_entry_expire(e), 0);
    kv_entry_key(e, &kl);
    kv_entry_val(e, &vl);
    cr_assert(kl == 0 && vl == 0);
    kv_entry_free(e);

    /* The largest slab entry is SLAB_MAX bytes: flags, a 1-byte and a 2-byte varint, a
     * deadline, key and value.  One byte more is a malloc block. */
    char key[40], val[SLAB_MAX];
    memset(key, 'k', sizeof(key));
    memset(val, 'v', sizeof(val));
    size_t vmax = SLAB_MAX - 1 - 1 - 2 - 8 - sizeof(key);
    e = shard_entry_new(s, key, sizeof(key), val, vmax, 77);
    cr_assert_eq(kv_entry_mem(e), SLAB_MAX);
    shard_put(s, kv_hash(key, sizeof(key)), e);
    e = shard_entry_new(s, key, sizeof(key) - 1, val, vmax + 2, 77);
    cr_assert_geq(kv_entry_mem(e), SLAB_MAX + 1 + sizeof(size_t));
    shard_put(s, kv_hash(key, sizeof(key) - 1), e);
    struct kv_entry *g = shard_get(s, kv_hash(key, sizeof(key)), key, sizeof(key));
    cr_assert(g && kv_entry_expire(g) == 77);
    cr_assert(memcmp(kv_entry_val(g, &vl), val, vmax) == 0 && vl == vmax);
    g = shard_get(s, kv_hash(key, sizeof(key) - 1), key, sizeof(key) - 1);
    cr_assert(g && kv_entry_expire(g) == 77);
    cr_assert(memcmp(kv_entry_val(g, &vl), val, vmax + 2) == 0 && vl == vmax + 2);

    /* A 1 MiB value goes to malloc and is found again. */
    size_t big = 1u << 20;
    char *v = malloc(big);
    for (size_t i = 0; i < big; i++)
        v[i] = (char)(i * 13);
    e = shard_entry_new(s, "big", 3, v, big, KV_NO_EXPIRE);
    cr_assert_geq(kv_entry_mem(e), big);
    size_t before = shard_mem(s);
    shard_put(s, kv_hash("big", 3), e);
    cr_assert_geq(shard_mem(s), before + big);
    before = shard_mem(s);
    g = shard_get(s, kv_hash("big", 3), "big", 3);
    cr_assert(memcmp(kv_entry_val(g, &vl), v, big) == 0 && vl == big);
    /* Replace the big one by a small one and back: each kind frees the other. */
    shard_put(s, kv_hash("big", 3), shard_entry_new(s, "big", 3, "small", 5, KV_NO_EXPIRE));
    cr_assert_lt(shard_mem(s), before - big / 2);
    shard_put(s, kv_hash("big", 3), shard_entry_new(s, "big", 3, v, big, KV_NO_EXPIRE));
    cr_assert_eq(shard_count(s), 3);
    cr_assert_eq(shard_del(s, kv_hash("big", 3), "big", 3), 1);
    free(v);
    shard_flush(s);
    cr_assert_eq(shard_mem(s), base);
    shard_free(s);
}

/* The point of the slabs: a 16-byte key with a 32-byte value, as in the memory target, costs
 * its 52-byte chunk plus a few bytes of table, far below a malloc'd entry. */
static size_t mem_per_key(bool slab, unsigned n)
{
    struct shard *s = shard_new();
    size_t base = shard_mem(s);
    char v[32];
    memset(v, 'x', sizeof(v));
    for (unsigned i = 0; i < n; i++) {
        char k[32];
        size_t kl = (size_t)sprintf(k, "key:%012u", i);
        cr_assert_eq(kl, 16);
        struct kv_entry *e = slab ? shard_entry_new(s, k, kl, v, sizeof(v), KV_NO_EXPIRE)
                                  : kv_entry_new(k, kl, v, sizeof(v), KV_NO_EXPIRE);
        shard_put(s, kv_hash(k, kl), e);
    }
    while (shard_rehash_step(s, 1000))
        ;
    size_t per = (shard_mem(s) - base) / n;
    shard_free(s);
    return per;
}

Test(shard, memory_per_small_key)
{
    enum { N = 100000 }; /* 131072 slots: 1.3 slots a key */
    size_t slab = mem_per_key(true, N), heap = mem_per_key(false, N);
    size_t chunk = slab_chunk_bytes(1 + 1 + 1 + 16 + 32);
    cr_assert_leq(slab, chunk + 8, "%zu bytes a key (chunk %zu)", slab, chunk);
    cr_assert_lt(slab * 100, heap * 85, "slab %zu vs malloc %zu bytes a key", slab, heap);
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

Test(shard, flush_returns_slab_memory)
{
    enum { N = 300000 }; /* about 9 MB of slab entries */
    struct shard *s = shard_new();
    size_t base = shard_mem(s);
    for (unsigned r = 0; r < 3; r++) {
        for (unsigned i = 0; i < N; i++) {
            char k[32], v[32];
            size_t kl = key_of(k, i), vl = val_of(v, i);
            shard_put(s, kv_hash(k, kl), shard_entry_new(s, k, kl, v, vl, KV_NO_EXPIRE));
        }
        size_t loaded = shard_mem(s);
        long before = rss_kb();
        cr_assert(has_i(s, N - 1));
        shard_flush(s);
        long after = rss_kb();
        cr_assert_eq(shard_mem(s), base);
        cr_assert_eq(shard_count(s), 0);
        cr_assert_null(get_i(s, 7));
        /* Most of what was loaded left the process (tables included). */
        cr_assert_gt((before - after) * 1024, (long)(loaded - base) * 3 / 4,
                     "round %u: RSS fell by %ld kB of %zu loaded", r, before - after,
                     (loaded - base) / 1024);
    }
    shard_free(s);
}

/* Deleted slab entries' chunks (and emptied slabs) serve later puts: churn with a bounded
 * number of live keys must not grow the memory.  The bound allows each size class one slab
 * more than the first round touched: an emptied slab goes to whichever class asks first, so
 * the part-used last slab of each class may be a different one each round. */
Test(shard, slab_memory_reused_under_churn)
{
    enum { LIVE = 20000, ROUNDS = 10 };
    struct shard *s = shard_new();
    size_t peak_first = 0;
    size_t classes = 0;
    for (size_t n = 3 + 7; n <= 3 + 9 + 49; n += SLAB_ALIGN) /* entry sizes used below */
        classes++;
    for (unsigned r = 0; r < ROUNDS; r++) {
        unsigned lo = r * LIVE;
        if (r > 0)
            for (unsigned i = lo - LIVE; i < lo; i++)
                cr_assert_eq(del_i(s, i), 1);
        for (unsigned i = lo; i < lo + LIVE; i++) {
            char k[32], v[64];
            size_t kl = key_of(k, i), vl = (size_t)sprintf(v, "%0*u", 10 + (int)(i % 40), i);
            shard_put(s, kv_hash(k, kl), shard_entry_new(s, k, kl, v, vl, KV_NO_EXPIRE));
        }
        while (shard_rehash_step(s, 1000))
            ;
        if (r == 0)
            peak_first = shard_mem(s);
        else
            cr_assert_leq(shard_mem(s), peak_first + classes * SLAB_BYTES, "round %u: %zu vs %zu",
                          r, shard_mem(s), peak_first);
        cr_assert_eq(shard_count(s), LIVE);
        for (unsigned i = lo; i < lo + LIVE; i += 997) {
            struct kv_entry *e = get_i(s, i);
            char v[64];
            size_t vl;
            cr_assert_not_null(e);
            const char *ev = kv_entry_val(e, &vl);
            cr_assert_eq(vl, (size_t)sprintf(v, "%0*u", 10 + (int)(i % 40), i));
            cr_assert(memcmp(ev, v, vl) == 0);
        }
    }
    shard_free(s);
}

/* An entry made for one shard cannot be put into another: its reference is meaningless there
 * (the assert fires; nothing is corrupted). */
Test(shard, slab_entry_of_another_shard_is_refused, .signal = SIGABRT)
{
    struct shard *a = shard_new(), *b = shard_new();
    struct kv_entry *e = shard_entry_new(a, "k", 1, "v", 1, KV_NO_EXPIRE);
    shard_put(b, kv_hash("k", 1), e);
}

static void prefetch_i(struct shard *s, unsigned i)
{
    char k[32];
    uint64_t h = kv_hash(k, key_of(k, i));
    shard_prefetch(s, h);
    shard_prefetch_entry(s, h);
}

/* The prefetch hints read the table (tags, slots, the heap directory) in every state it can
 * be in: empty, mid-resize, full of tombstones, flushed; under ASan an out-of-bounds read
 * there is a failure.  They must change nothing. */
Test(shard, prefetch_hints_read_safely_and_change_nothing)
{
    enum { N = 50000 };
    struct shard *s = shard_new();
    for (unsigned i = 0; i < 64; i++)
        prefetch_i(s, i); /* empty table */
    unsigned mid = 0;
    for (unsigned i = 0; i < N; i++) {
        prefetch_i(s, i);     /* absent */
        prefetch_i(s, i / 2); /* present, slab or heap entry */
        put_i(s, i, KV_NO_EXPIRE);
        mid += in_resize(s);
    }
    cr_assert_gt(mid, 0, "no prefetch ran during a resize");
    for (unsigned i = 0; i < N; i += 2)
        cr_assert_eq(del_i(s, i), 1);
    size_t count = shard_count(s);
    for (unsigned i = 0; i < 2 * N; i++)
        prefetch_i(s, i); /* tombstones where the even keys were */
    cr_assert_eq(shard_count(s), count);
    for (unsigned i = 0; i < N; i++)
        cr_assert_eq(has_i(s, i), i % 2 == 1, "key %u", i);
    shard_flush(s);
    for (unsigned i = 0; i < 256; i++)
        prefetch_i(s, i);
    cr_assert_eq(shard_count(s), 0);
    shard_free(s);
}

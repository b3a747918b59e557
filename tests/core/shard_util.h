/*
 * Helpers shared by the shard tests (test_shard.c, test_shard_scan.c): keys key:<i> with
 * values that depend on i, made as slab entries for even i and malloc'd entries for odd i,
 * and a visit callback that counts how often each key was seen.
 */
#ifndef RINGKV_TESTS_SHARD_UTIL_H
#define RINGKV_TESTS_SHARD_UTIL_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/shard.h"

static __attribute__((unused)) uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static inline uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static inline size_t key_of(char *buf, unsigned i)
{
    return (size_t)sprintf(buf, "key:%u", i);
}

static inline size_t val_of(char *buf, unsigned i)
{
    return (size_t)sprintf(buf, "value-%u-xyz", i * 7u);
}

static inline void put_i(struct shard *s, unsigned i, int64_t expire)
{
    char k[32], v[32];
    size_t kl = key_of(k, i), vl = val_of(v, i);
    struct kv_entry *e =
        i % 2 ? kv_entry_new(k, kl, v, vl, expire) : shard_entry_new(s, k, kl, v, vl, expire);
    shard_put(s, kv_hash(k, kl), e);
}

static inline void put_heap_i(struct shard *s, unsigned i, int64_t expire)
{
    char k[32], v[32];
    size_t kl = key_of(k, i), vl = val_of(v, i);
    shard_put(s, kv_hash(k, kl), kv_entry_new(k, kl, v, vl, expire));
}

static inline struct kv_entry *get_i(struct shard *s, unsigned i)
{
    char k[32];
    size_t kl = key_of(k, i);
    return shard_get(s, kv_hash(k, kl), k, kl);
}

static inline int del_i(struct shard *s, unsigned i)
{
    char k[32];
    size_t kl = key_of(k, i);
    return shard_del(s, kv_hash(k, kl), k, kl);
}

/* get_i, and check that the entry is key i with i's value. */
static inline bool has_i(struct shard *s, unsigned i)
{
    struct kv_entry *e = get_i(s, i);
    if (!e)
        return false;
    char k[32], v[32];
    size_t kl = key_of(k, i), vl = val_of(v, i), ekl, evl;
    const char *ek = kv_entry_key(e, &ekl);
    const char *ev = kv_entry_val(e, &evl);
    cr_assert_eq(ekl, kl);
    cr_assert(memcmp(ek, k, kl) == 0);
    cr_assert_eq(evl, vl);
    cr_assert(memcmp(ev, v, vl) == 0);
    return true;
}

/* Key index of an entry made by put_i. */
static inline unsigned idx_of(const struct kv_entry *e)
{
    size_t kl;
    const char *k = kv_entry_key(e, &kl);
    char buf[32];
    cr_assert(kl > 4 && kl < sizeof(buf) && memcmp(k, "key:", 4) == 0);
    memcpy(buf, k, kl);
    buf[kl] = 0;
    return (unsigned)strtoul(buf + 4, NULL, 10);
}

static inline bool in_resize(struct shard *s)
{
    return shard_rehash_step(s, 0) == 1;
}

/* Put keys 0, 1, ... (no deadline) until there are at least `at_least` and a resize has just
 * begun; returns how many were put. */
static inline unsigned fill_into_resize(struct shard *s, unsigned at_least)
{
    unsigned n = 0;
    while (n < at_least || !in_resize(s))
        put_i(s, n++, KV_NO_EXPIRE);
    return n;
}

/* A visit callback counting how often each key index was seen. */
struct seen {
    unsigned *hits;
    unsigned n;
    size_t calls;
};

static inline void count_visit(void *arg, const struct kv_entry *e)
{
    struct seen *sn = arg;
    unsigned i = idx_of(e);
    cr_assert_lt(i, sn->n);
    sn->hits[i]++;
    sn->calls++;
}

#endif

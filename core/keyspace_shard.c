/*
 * keyspace_shard: the whole-shard commands.  The dispatcher runs each on every shard (SCAN on
 * the one its cursor names) and combines the parts: it sums DBSIZE, concatenates KEYS, picks
 * one RANDOMKEY answer, XORs the DEBUG DIGEST parts.
 *
 * KEYS, RANDOMKEY, DEBUG DIGEST and SCAN skip keys whose deadline has passed, so they show
 * the same dataset GET would; they do not remove them while walking the table (the shard may
 * not change under shard_foreach/shard_scan), except RANDOMKEY, which looks at one entry at a
 * time and removes the expired ones it meets, as Redis does, for a bounded number of tries.
 *
 * DEBUG DIGEST.  Each live key contributes 20 bytes computed over a canonical encoding of
 * the key:
 *     klen (8 bytes LE) | key | vlen (8 bytes LE) | value | deadline (8 bytes LE, -1 if none)
 * bytes 0..15 are XXH3-128 of it (canonical big-endian form), bytes 16..19 XXH32 of it
 * (seed "rkv1", canonical form).  XXH32 is a different function from XXH3, so two keys that
 * collide in one are not expected to collide in the other and cancel out of the XOR.  The
 * lengths make the encoding unambiguous (no key/value boundary can shift).  A shard's digest
 * is the XOR of its keys', the dataset's the XOR of its shards', so the result depends only
 * on the data: not on insertion order, table layout, shard count or thread count.  An empty
 * dataset gives twenty zero bytes.
 *
 * SCAN cursors carry the shard in their low shard_bits bits and the shard_scan position
 * above them.  When a shard's scan completes, the cursor moves to the next shard at position
 * 0 (cursor value = its index), and after the last shard it is "0", so a client iterates
 * every shard in turn with SCAN's usual guarantee within each.
 */
#include "core/keyspace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "core/keyspace_int.h"
#include "core/util.h"

void ks_dbsize_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    reply_int(ctx->r, (long long)shard_count(ctx->shard));
}

void ks_flush_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    shard_flush(ctx->shard);
    if (ctx->on_change)
        ctx->on_change(ctx->on_change_arg, KS_CHANGE_FLUSH, NULL, NULL, 0);
}

/* ---- KEYS ---- */

struct keys_walk {
    struct ks_ctx *ctx;
    const struct arg *pat;
    bool all; /* the pattern is "*" */
    long n;
};

static void keys_visit(void *arg, const struct kv_entry *e)
{
    struct keys_walk *w = arg;
    if (ks_expired(w->ctx, e))
        return;
    size_t klen;
    const char *k = kv_entry_key(e, &klen);
    if (!w->all && !rk_glob_match(w->pat->p, w->pat->len, k, klen, false))
        return;
    reply_bulk(w->ctx->r, k, klen);
    w->n++;
}

void ks_keys_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct keys_walk w = {
        .ctx = ctx,
        .pat = &argv[1],
        .all = argv[1].len == 1 && argv[1].p[0] == '*',
    };
    shard_foreach(ctx->shard, keys_visit, &w);
    ctx->r->nelem += w.n;
}

/* ---- RANDOMKEY ---- */

#define RANDOMKEY_TRIES 64

static uint64_t mix64(uint64_t x) /* splitmix64's finaliser: a new draw from the last one */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Remove an expired entry met outside a key command (hash not in ctx): lazy expiry. */
static void expire_entry(struct ks_ctx *ctx, const struct kv_entry *e)
{
    size_t klen;
    const char *k = kv_entry_key(e, &klen);
    char *key = rk_malloc(klen ? klen : 1); /* the entry, and k with it, is freed by the del */
    memcpy(key, k, klen);
    shard_del(ctx->shard, kv_hash(key, klen), key, klen);
    if (ctx->stats)
        KS_STAT_INC(ctx->stats, expired_keys);
    ks_notify_del(ctx, key, klen);
    rk_free(key);
}

/* One live key at random, or nil when the shard is empty or only expired keys turned up in
 * RANDOMKEY_TRIES draws (each expired one drawn is removed, so a retry does better). */
void ks_randomkey_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    unsigned long long rnd;
    if (argc < 2 || rk_str2ull(argv[1].p, argv[1].len, &rnd) < 0)
        rnd = argc < 2 ? 0 : XXH3_64bits(argv[1].p, argv[1].len);
    for (int i = 0; i < RANDOMKEY_TRIES; i++) {
        struct kv_entry *e = shard_random(ctx->shard, rnd);
        if (!e)
            break;
        if (!ks_expired(ctx, e)) {
            size_t klen;
            const char *k = kv_entry_key(e, &klen);
            reply_bulk(ctx->r, k, klen);
            return;
        }
        expire_entry(ctx, e);
        rnd = mix64(rnd);
    }
    reply_nil(ctx->r);
}

/* ---- DEBUG DIGEST ---- */

struct digest_walk {
    struct ks_ctx *ctx;
    uint8_t acc[KS_DIGEST_LEN];
};

#define DIGEST_XXH32_SEED 0x726b7631u /* "rkv1" */

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void digest_visit(void *arg, const struct kv_entry *e)
{
    struct digest_walk *w = arg;
    if (ks_expired(w->ctx, e))
        return;
    size_t klen, vlen;
    const char *k = kv_entry_key(e, &klen);
    const char *v = kv_entry_val(e, &vlen);
    uint8_t kl[8], vl[8], dl[8];
    put_le64(kl, klen);
    put_le64(vl, vlen);
    put_le64(dl, (uint64_t)kv_entry_expire(e));

    XXH3_state_t h128;
    XXH32_state_t h32;
    XXH3_128bits_reset(&h128);
    XXH32_reset(&h32, DIGEST_XXH32_SEED);
    const struct {
        const void *p;
        size_t n;
    } parts[] = {{kl, 8}, {k, klen}, {vl, 8}, {v, vlen}, {dl, 8}};
    for (size_t i = 0; i < RK_ARRAY_LEN(parts); i++) {
        XXH3_128bits_update(&h128, parts[i].p, parts[i].n);
        XXH32_update(&h32, parts[i].p, parts[i].n);
    }
    uint8_t d[KS_DIGEST_LEN];
    XXH128_canonical_t c128;
    XXH32_canonical_t c32;
    XXH128_canonicalFromHash(&c128, XXH3_128bits_digest(&h128));
    XXH32_canonicalFromHash(&c32, XXH32_digest(&h32));
    memcpy(d, c128.digest, 16);
    memcpy(d + 16, c32.digest, 4);
    ks_digest_combine(w->acc, d);
}

void ks_digest_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct digest_walk w = {.ctx = ctx};
    shard_foreach(ctx->shard, digest_visit, &w);
    buf_append(ctx->r->b, w.acc, KS_DIGEST_LEN);
}

void ks_digest_combine(uint8_t acc[KS_DIGEST_LEN], const uint8_t part[KS_DIGEST_LEN])
{
    for (int i = 0; i < KS_DIGEST_LEN; i++)
        acc[i] ^= part[i];
}

/* ---- SCAN ---- */

#define SCAN_DEFAULT_COUNT 10

struct scan_walk {
    struct ks_ctx *ctx;
    const struct arg *pat; /* NULL: every key */
    bool type_ok;          /* TYPE absent or "string": the only type there is */
    struct arg *keys;      /* point into the entries: valid while the shard is unchanged */
    size_t n, cap;
};

static void scan_visit(void *arg, const struct kv_entry *e)
{
    struct scan_walk *w = arg;
    if (!w->type_ok || ks_expired(w->ctx, e))
        return;
    size_t klen;
    const char *k = kv_entry_key(e, &klen);
    if (w->pat && !rk_glob_match(w->pat->p, w->pat->len, k, klen, false))
        return;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->keys = rk_realloc(w->keys, w->cap * sizeof(*w->keys));
    }
    w->keys[w->n++] = (struct arg){.p = k, .len = klen};
}

/*
 * SCAN cursor [MATCH pattern] [COUNT n] [TYPE type].  The dispatcher has routed the cursor
 * here; its arguments are still checked with Redis's texts, in Redis's order (cursor first),
 * so the handler is safe to call on raw input.  A cursor that names another shard is an
 * invalid cursor.
 */
void ks_scan_shard(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    unsigned long long cursor;
    if (rk_str2ull(argv[1].p, argv[1].len, &cursor) < 0) {
        reply_error(ctx->r, "ERR invalid cursor");
        return;
    }
    struct scan_walk w = {.ctx = ctx, .type_ok = true};
    long long count = SCAN_DEFAULT_COUNT;
    for (int i = 2; i < argc; i += 2) {
        bool has_val = i + 1 < argc;
        if (ks_arg_is(&argv[i], "count") && has_val) {
            if (rk_str2ll(argv[i + 1].p, argv[i + 1].len, &count) < 0) {
                reply_error(ctx->r, RK_ERR_NOTINT);
                return;
            }
            if (count < 1) {
                reply_error(ctx->r, RK_ERR_SYNTAX);
                return;
            }
        } else if (ks_arg_is(&argv[i], "match") && has_val) {
            const struct arg *p = &argv[i + 1];
            w.pat = (p->len == 1 && p->p[0] == '*') ? NULL : p;
        } else if (ks_arg_is(&argv[i], "type") && has_val) {
            w.type_ok = ks_arg_is(&argv[i + 1], "string");
        } else {
            reply_error(ctx->r, RK_ERR_SYNTAX);
            return;
        }
    }

    unsigned bits = ctx->shard_bits;
    rk_assert(bits < 48); /* shard_scan positions use the 48 bits above the shard's */
    uint64_t mask = (1ull << bits) - 1;
    if ((cursor & mask) != ctx->shard_idx) {
        reply_error(ctx->r, "ERR invalid cursor");
        return;
    }
    uint64_t next = shard_scan(ctx->shard, cursor >> bits, (size_t)count, scan_visit, &w);
    if (next)
        next = (next << bits) | ctx->shard_idx;
    else if ((uint64_t)ctx->shard_idx + 1 <= mask)
        next = (uint64_t)ctx->shard_idx + 1; /* the next shard, from its start */

    char num[32]; /* cursors use all 64 bits: printed unsigned */
    int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)next);
    reply_array(ctx->r, 2);
    reply_bulk(ctx->r, num, (size_t)n);
    reply_array(ctx->r, (long)w.n);
    for (size_t i = 0; i < w.n; i++)
        reply_bulk(ctx->r, w.keys[i].p, w.keys[i].len);
    rk_free(w.keys);
}

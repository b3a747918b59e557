/*
 * keyspace_int: what the files of the keyspace module share (keyspace.c, keyspace_str.c,
 * keyspace_expire.c, keyspace_shard.c).  Not an API: nothing outside core/keyspace*.c
 * includes it.
 *
 * Every write in the module goes through ks_store() or ks_remove(), so the on_change report
 * cannot be forgotten: they change the shard and then tell ctx->on_change.
 */
#ifndef RK_KEYSPACE_INT_H
#define RK_KEYSPACE_INT_H

#include <stdbool.h>
#include "core/keyspace.h"
#include "core/util.h"

/* proto-max-bulk-len's default: the largest string APPEND and SETRANGE may build. */
#define KS_MAX_STRING_DEFAULT (512ull * 1024 * 1024)

static inline uint64_t ks_max_string(const struct ks_ctx *ctx)
{
    return ctx->max_string ? ctx->max_string : KS_MAX_STRING_DEFAULT;
}

/* An entry is expired once its deadline is <= now: a deadline of now is already past. */
static inline bool ks_expired(const struct ks_ctx *ctx, const struct kv_entry *e)
{
    int64_t when = kv_entry_expire(e);
    return when != KV_NO_EXPIRE && when <= ctx->now_ms;
}

/* ks_lookup() that also counts keyspace_hits / keyspace_misses, as Redis's lookupKeyRead:
 * for GET, EXISTS, TYPE, TTL, STRLEN, GETRANGE, TOUCH and the GET part of SET/GETSET/GETDEL/
 * GETEX.  Write lookups (INCR, APPEND, EXPIRE, ...) use ks_lookup() and count nothing. */
struct kv_entry *ks_lookup_read(struct ks_ctx *ctx, const char *key, size_t klen);

/* Store key = val with the absolute deadline expire_ms (or KV_NO_EXPIRE), replacing any entry,
 * and report KS_CHANGE_SET with the new entry.  key must be argv[1] (hash ctx->hash).  val may
 * point into the entry being replaced: it is copied before the old one is freed.  Returns the
 * stored entry, valid until the next change to the shard. */
struct kv_entry *ks_store(struct ks_ctx *ctx, const char *key, size_t klen, const char *val,
                          size_t vlen, int64_t expire_ms);

/* Remove key (argv[1]) and report KS_CHANGE_DEL if it was there.  Returns 1 or 0. */
int ks_remove(struct ks_ctx *ctx, const char *key, size_t klen);

/* Report a deletion (key names the deleted key; it need not be in the shard any more). */
void ks_notify_del(struct ks_ctx *ctx, const char *key, size_t klen);

/* Case-insensitive compare of an argument with an option name. */
static inline bool ks_arg_is(const struct arg *a, const char *name)
{
    return rk_eqi(a->p, a->len, name);
}

#endif

/*
 * keyspace_expire: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with Redis 7's NX XX GT LT), TTL,
 * PTTL and PERSIST.
 *
 * Every form is turned into one absolute deadline in ms first (relative forms add
 * ctx->now_ms), with Redis's overflow checks: seconds that would overflow when multiplied by
 * 1000, or a sum past LLONG_MAX, are "invalid expire time in '<cmd>' command".  Negative
 * values are allowed, as in Redis: they are simply in the past.
 *
 * Setting a deadline builds a new entry with the same value (entries are immutable, see
 * keyspace.c) and reports it as a SET with that deadline.  A deadline that is already past
 * deletes the key and replies 1, reported as a DEL, so a replica never has to judge expiry.
 *
 * The options compare against the current deadline, no deadline counting as infinite:
 *   NX  only if the key has no deadline      XX  only if it has one
 *   GT  only if the new one is later (never when there is none)
 *   LT  only if the new one is earlier (always when there is none)
 * NX cannot go with XX, GT or LT; GT cannot go with LT.
 */
#include "core/keyspace.h"

#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "core/keyspace_int.h"
#include "core/util.h"

enum { EXP_NX = 1, EXP_XX = 2, EXP_GT = 4, EXP_LT = 8 };

/* "ERR Unsupported option <opt>": Redis prints the option as a C string, so up to a NUL byte
 * (reply_errorf turns CR and LF into spaces, as Redis does). */
static void reply_unsupported(struct reply *r, const struct arg *a)
{
    const char *nul = memchr(a->p, '\0', a->len);
    size_t n = nul ? (size_t)(nul - a->p) : a->len;
    reply_errorf(r, "ERR Unsupported option %.*s", (int)n, a->p);
}

/* Parse the options after key and time.  Returns the EXP_ flags, or -1 after replying. */
static int parse_expire_options(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    int flags = 0;
    for (int j = 3; j < argc; j++) {
        if (ks_arg_is(&argv[j], "nx")) {
            flags |= EXP_NX;
        } else if (ks_arg_is(&argv[j], "xx")) {
            flags |= EXP_XX;
        } else if (ks_arg_is(&argv[j], "gt")) {
            flags |= EXP_GT;
        } else if (ks_arg_is(&argv[j], "lt")) {
            flags |= EXP_LT;
        } else {
            reply_unsupported(ctx->r, &argv[j]);
            return -1;
        }
    }
    if ((flags & EXP_NX) && (flags & (EXP_XX | EXP_GT | EXP_LT))) {
        reply_error(ctx->r, "ERR NX and XX, GT or LT options at the same time are not compatible");
        return -1;
    }
    if ((flags & EXP_GT) && (flags & EXP_LT)) {
        reply_error(ctx->r, "ERR GT and LT options at the same time are not compatible");
        return -1;
    }
    return flags;
}

/* Whether the options allow replacing deadline cur (KV_NO_EXPIRE = none) with when. */
static bool expire_allowed(int flags, int64_t cur, int64_t when)
{
    bool has = cur != KV_NO_EXPIRE;
    if ((flags & EXP_NX) && has)
        return false;
    if ((flags & EXP_XX) && !has)
        return false;
    if ((flags & EXP_GT) && (!has || when <= cur))
        return false;
    if ((flags & EXP_LT) && has && when >= cur)
        return false;
    return true;
}

/* The whole family: KEY TIME [NX|XX|GT|LT ...].  basetime is 0 for the AT forms and now for
 * the relative ones; cmd names the command in the expire-time error. */
static void expire_generic(struct ks_ctx *ctx, int argc, const struct arg *argv, int64_t basetime,
                           bool seconds, const char *cmd)
{
    const struct arg *key = &argv[1];
    int flags = parse_expire_options(ctx, argc, argv);
    if (flags < 0)
        return;

    long long when;
    if (rk_str2ll(argv[2].p, argv[2].len, &when) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return;
    }
    if (seconds) {
        if (when > LLONG_MAX / 1000 || when < LLONG_MIN / 1000)
            goto bad;
        when *= 1000;
    }
    if (__builtin_add_overflow(when, basetime, &when))
        goto bad;

    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    if (!e || !expire_allowed(flags, kv_entry_expire(e), when)) {
        reply_int(ctx->r, 0);
        return;
    }
    if (when <= ctx->now_ms) {
        ks_remove(ctx, key->p, key->len);
    } else {
        size_t vlen;
        const char *v = kv_entry_val(e, &vlen);
        ks_store(ctx, key->p, key->len, v, vlen, when);
    }
    reply_int(ctx->r, 1);
    return;
bad:
    reply_errorf(ctx->r, "ERR invalid expire time in '%s' command", cmd);
}

void ks_expire(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    expire_generic(ctx, argc, argv, ctx->now_ms, true, "expire");
}

void ks_pexpire(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    expire_generic(ctx, argc, argv, ctx->now_ms, false, "pexpire");
}

void ks_expireat(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    expire_generic(ctx, argc, argv, 0, true, "expireat");
}

void ks_pexpireat(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    expire_generic(ctx, argc, argv, 0, false, "pexpireat");
}

/* TTL/PTTL: -2 when the key is missing, -1 when it has no deadline, else the time left
 * (never negative); TTL rounds to the nearest second as Redis does. */
static void ttl_generic(struct ks_ctx *ctx, const struct arg *key, bool ms)
{
    struct kv_entry *e = ks_lookup_read(ctx, key->p, key->len);
    if (!e) {
        reply_int(ctx->r, -2);
        return;
    }
    int64_t when = kv_entry_expire(e);
    if (when == KV_NO_EXPIRE) {
        reply_int(ctx->r, -1);
        return;
    }
    long long ttl = when - ctx->now_ms; /* > 0: ks_lookup removed expired keys */
    if (ttl < 0)
        ttl = 0;
    /* (ttl + 500) / 1000 without overflowing for a deadline near LLONG_MAX */
    reply_int(ctx->r, ms ? ttl : ttl / 1000 + (ttl % 1000 >= 500));
}

void ks_ttl(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    ttl_generic(ctx, &argv[1], false);
}

void ks_pttl(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    ttl_generic(ctx, &argv[1], true);
}

void ks_persist(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    const struct arg *key = &argv[1];
    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    if (!e || kv_entry_expire(e) == KV_NO_EXPIRE) {
        reply_int(ctx->r, 0);
        return;
    }
    size_t vlen;
    const char *v = kv_entry_val(e, &vlen);
    ks_store(ctx, key->p, key->len, v, vlen, KV_NO_EXPIRE);
    reply_int(ctx->r, 1);
}

/*
 * keyspace_str: the commands that compute a new value from the old one (INCR, DECR, INCRBY,
 * DECRBY, INCRBYFLOAT, APPEND, SETRANGE) and the read-only length/range commands (STRLEN,
 * GETRANGE).
 *
 * Each write reads the old entry, builds the whole new value, and stores it as a new entry
 * (ks_store), which reports it to on_change: INCR is logged as the SET of its result, with
 * the key's absolute deadline.  These commands keep the key's deadline, as Redis does; only
 * SET-like commands clear it.
 *
 * Sizes are size_t and every size computation is checked before it is done: APPEND and
 * SETRANGE refuse a result longer than proto-max-bulk-len (ctx->max_string, 512 MiB by
 * default) with Redis's text, and an offset plus a length never wraps.  Numbers parse with
 * Redis's strictness (core/util.h), so " 1" or "01" are not integers here either.
 */
#include "core/keyspace.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/keyspace_int.h"
#include "core/util.h"

#define ERR_TOO_BIG "ERR string exceeds maximum allowed size (proto-max-bulk-len)"

/* ---- counters ---- */

/* Add incr to the integer at argv[1] (a missing key counts as 0), keeping its deadline. */
static void incr_decr(struct ks_ctx *ctx, const struct arg *key, long long incr)
{
    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    long long value = 0;
    int64_t deadline = KV_NO_EXPIRE;
    if (e) {
        size_t vlen;
        const char *v = kv_entry_val(e, &vlen);
        if (rk_str2ll(v, vlen, &value) < 0) {
            reply_error(ctx->r, RK_ERR_NOTINT);
            return;
        }
        deadline = kv_entry_expire(e);
    }
    if ((incr < 0 && value < 0 && incr < LLONG_MIN - value) ||
        (incr > 0 && value > 0 && incr > LLONG_MAX - value)) {
        reply_error(ctx->r, RK_ERR_OVERFLOW);
        return;
    }
    value += incr;
    char buf[32];
    int n = rk_ll2str(buf, value);
    ks_store(ctx, key->p, key->len, buf, (size_t)n, deadline);
    reply_int(ctx->r, value);
}

void ks_incr(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    incr_decr(ctx, &argv[1], 1);
}

void ks_decr(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    incr_decr(ctx, &argv[1], -1);
}

void ks_incrby(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    long long incr;
    if (rk_str2ll(argv[2].p, argv[2].len, &incr) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return;
    }
    incr_decr(ctx, &argv[1], incr);
}

void ks_decrby(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    long long decr;
    if (rk_str2ll(argv[2].p, argv[2].len, &decr) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return;
    }
    if (decr == LLONG_MIN) { /* -decr would overflow: Redis 7's own text */
        reply_error(ctx->r, "ERR decrement would overflow");
        return;
    }
    incr_decr(ctx, &argv[1], -decr);
}

/*
 * INCRBYFLOAT key increment.  Redis computes in long double and formats the result with 17
 * decimals, trailing zeros trimmed (rk_ld2str), so "10.5" + "0.1" is "10.6", not
 * "10.59999...".  The stored value is that text.  The old value is checked before the
 * increment, as in Redis; "inf" parses but any infinite or NaN result is refused.
 */
void ks_incrbyfloat(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    const struct arg *key = &argv[1];
    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    long double value = 0, incr;
    int64_t deadline = KV_NO_EXPIRE;
    if (e) {
        size_t vlen;
        const char *v = kv_entry_val(e, &vlen);
        if (rk_str2ld(v, vlen, &value) < 0) {
            reply_error(ctx->r, RK_ERR_NOTFLOAT);
            return;
        }
        deadline = kv_entry_expire(e);
    }
    if (rk_str2ld(argv[2].p, argv[2].len, &incr) < 0) {
        reply_error(ctx->r, RK_ERR_NOTFLOAT);
        return;
    }
    value += incr;
    if (isnan(value) || isinf(value)) {
        reply_error(ctx->r, "ERR increment would produce NaN or Infinity");
        return;
    }
    char buf[RK_LD_STR_MAX];
    int n = rk_ld2str(buf, sizeof(buf), value);
    rk_assert(n > 0); /* a finite long double needs under 5000 characters */
    ks_store(ctx, key->p, key->len, buf, (size_t)n, deadline);
    reply_bulk(ctx->r, buf, (size_t)n);
}

/* ---- APPEND and ranges ---- */

/* Whether a string of size + add bytes is allowed (and representable). */
static bool fits(struct ks_ctx *ctx, uint64_t size, uint64_t add)
{
    uint64_t max = ks_max_string(ctx);
    return size <= max && add <= max - size;
}

void ks_append(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    const struct arg *key = &argv[1], *add = &argv[2];
    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    if (!e) {
        ks_store(ctx, key->p, key->len, add->p, add->len, KV_NO_EXPIRE);
        reply_int(ctx->r, (long long)add->len);
        return;
    }
    size_t olen;
    const char *old = kv_entry_val(e, &olen);
    if (!fits(ctx, olen, add->len)) {
        reply_error(ctx->r, ERR_TOO_BIG);
        return;
    }
    if (add->len == 0) { /* nothing changes, nothing to report */
        reply_int(ctx->r, (long long)olen);
        return;
    }
    size_t nlen = olen + add->len;
    char *v = rk_malloc(nlen);
    memcpy(v, old, olen);
    memcpy(v + olen, add->p, add->len);
    ks_store(ctx, key->p, key->len, v, nlen, kv_entry_expire(e));
    rk_free(v);
    reply_int(ctx->r, (long long)nlen);
}

void ks_strlen(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct kv_entry *e = ks_lookup_read(ctx, argv[1].p, argv[1].len);
    size_t vlen = 0;
    if (e)
        kv_entry_val(e, &vlen);
    reply_int(ctx->r, (long long)vlen);
}

/*
 * GETRANGE key start end, both inclusive; negative indexes count from the end.  Redis's
 * quirk kept: when both are negative and start > end the answer is empty before any
 * clamping.  Out-of-range indexes clamp to the string; a missing key is the empty string.
 */
void ks_getrange(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    long long start, end;
    if (rk_str2ll(argv[2].p, argv[2].len, &start) < 0 ||
        rk_str2ll(argv[3].p, argv[3].len, &end) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return;
    }
    struct kv_entry *e = ks_lookup_read(ctx, argv[1].p, argv[1].len);
    if (!e) {
        reply_bulk(ctx->r, "", 0);
        return;
    }
    size_t len;
    const char *v = kv_entry_val(e, &len);
    if (start < 0 && end < 0 && start > end) {
        reply_bulk(ctx->r, "", 0);
        return;
    }
    /* len <= max string, far below LLONG_MAX, so the casts below are exact. */
    long long slen = (long long)len;
    if (start < 0)
        start = start < -slen ? 0 : slen + start;
    if (end < 0)
        end = end < -slen ? 0 : slen + end;
    if (end >= slen)
        end = slen - 1;
    if (len == 0 || start > end) {
        reply_bulk(ctx->r, "", 0);
        return;
    }
    reply_bulk(ctx->r, v + start, (size_t)(end - start + 1));
}

/*
 * SETRANGE key offset value: overwrite from offset, padding with zero bytes.  An empty value
 * changes nothing (and creates nothing: a missing key answers 0); otherwise the result may
 * not pass proto-max-bulk-len.
 */
void ks_setrange(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    const struct arg *key = &argv[1], *val = &argv[3];
    long long off;
    if (rk_str2ll(argv[2].p, argv[2].len, &off) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return;
    }
    if (off < 0) {
        reply_error(ctx->r, "ERR offset is out of range");
        return;
    }
    struct kv_entry *e = ks_lookup(ctx, key->p, key->len);
    size_t olen = 0;
    const char *old = NULL;
    if (e)
        old = kv_entry_val(e, &olen);
    if (val->len == 0) {
        reply_int(ctx->r, (long long)olen);
        return;
    }
    if (!fits(ctx, (uint64_t)off, val->len)) {
        reply_error(ctx->r, ERR_TOO_BIG);
        return;
    }
    size_t end = (size_t)off + val->len; /* checked just above */
    size_t nlen = end > olen ? end : olen;
    char *v = rk_malloc(nlen);
    if (olen)
        memcpy(v, old, olen);
    if ((size_t)off > olen)
        memset(v + olen, 0, (size_t)off - olen);
    memcpy(v + off, val->p, val->len);
    ks_store(ctx, key->p, key->len, v, nlen, e ? kv_entry_expire(e) : KV_NO_EXPIRE);
    rk_free(v);
    reply_int(ctx->r, (long long)nlen);
}

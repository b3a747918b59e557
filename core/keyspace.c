/*
 * keyspace: lookup with lazy expiry, the write helpers every command goes through, and the
 * GET/SET family and the key commands (DEL, EXISTS, TOUCH, TYPE, MSET parts).
 *
 * The module is split by theme: this file, keyspace_str.c (counters, APPEND, ranges),
 * keyspace_expire.c (EXPIRE family, TTL, PERSIST) and keyspace_shard.c (whole-shard commands:
 * DBSIZE, FLUSH, KEYS, RANDOMKEY, DEBUG DIGEST, SCAN).
 *
 * Every write, INCR and APPEND included, stores the whole new value and its deadline through
 * ks_store (shard_set): into the key's entry in place when the value keeps its length and
 * the deadline its presence, else into a new entry that replaces the old one.  So there is
 * always one complete entry that says exactly what a key is, and that entry is what the
 * replication log records.  A command that needs the old value (SET ... GET, APPEND,
 * SETRANGE) uses it or copies it before it stores: after ks_store the old entry may hold the
 * new value or be gone.  The cost, a copy of the value per write, only shows for
 * APPEND/SETRANGE on big strings; those are rare in a cache and bounded by
 * proto-max-bulk-len.
 *
 * Deadlines are absolute wall-clock milliseconds (KV_NO_EXPIRE when none), computed once from
 * ctx->now_ms when a command sets them, and compared with ctx->now_ms when a command reads
 * them.  A deadline equal to now is already past.  Absolute deadlines make every record
 * idempotent: replaying "SET k v deadline D" gives the same state whenever it is replayed.
 *
 * What on_change reports (ks_store/ks_remove/ks_notify_del, nothing else calls it):
 *   KS_CHANGE_SET  after each write, with the new entry: key, whole value, absolute deadline.
 *                  INCR reports the SET of its result, EXPIRE the SET of the same value with
 *                  the new deadline, PERSIST the SET with no deadline.
 *   KS_CHANGE_DEL  after a key is removed: DEL, GETDEL, lazy expiry, an EXPIRE / GETEX /
 *                  SET EXAT whose deadline is already past.
 *   KS_CHANGE_FLUSH after a shard is emptied.
 * A command that changes nothing (SET NX on a present key, PERSIST of a key with no deadline,
 * APPEND of "") reports nothing.
 *
 * A write whose deadline is already past (SET EXAT in the past, EXPIREAT in the past) removes
 * the key at once instead of storing an entry that is dead on arrival: Redis stores it and
 * lets it expire on the next access, which no client can tell apart, and a DEL in the log
 * is clearer for replicas than a SET they would have to judge expired.
 *
 * Hits and misses are counted where Redis's lookupKeyRead counts them (ks_lookup_read), not
 * for write lookups.
 */
#include "core/keyspace.h"

#include <limits.h>
#include <string.h>

#include "core/keyspace_int.h"
#include "core/util.h"

/* ---- lookup and the write helpers ---- */

void ks_notify_del(struct ks_ctx *ctx, const char *key, size_t klen)
{
    if (ctx->on_change)
        ctx->on_change(ctx->on_change_arg, KS_CHANGE_DEL, NULL, key, klen);
}

struct kv_entry *ks_lookup(struct ks_ctx *ctx, const char *key, size_t klen)
{
    struct kv_entry *e = shard_get(ctx->shard, ctx->hash, key, klen);
    if (!e || !ks_expired(ctx, e))
        return e;
    if (ctx->keep_expired)
        return NULL;
    shard_del(ctx->shard, ctx->hash, key, klen);
    if (ctx->stats)
        KS_STAT_INC(ctx->stats, expired_keys);
    ks_notify_del(ctx, key, klen);
    return NULL;
}

struct kv_entry *ks_lookup_read(struct ks_ctx *ctx, const char *key, size_t klen)
{
    struct kv_entry *e = ks_lookup(ctx, key, klen);
    if (ctx->stats) {
        if (e)
            KS_STAT_INC(ctx->stats, keyspace_hits);
        else
            KS_STAT_INC(ctx->stats, keyspace_misses);
    }
    return e;
}

struct kv_entry *ks_store(struct ks_ctx *ctx, const char *key, size_t klen, const char *val,
                          size_t vlen, int64_t expire_ms)
{
    /* val may point into the key's current entry: shard_set copies it before that entry is
     * freed, or moves it within the entry. */
    struct kv_entry *e = shard_set(ctx->shard, ctx->hash, key, klen, val, vlen, expire_ms);
    if (ctx->on_change)
        ctx->on_change(ctx->on_change_arg, KS_CHANGE_SET, e, key, klen);
    return e;
}

int ks_remove(struct ks_ctx *ctx, const char *key, size_t klen)
{
    if (!shard_del(ctx->shard, ctx->hash, key, klen))
        return 0;
    ks_notify_del(ctx, key, klen);
    return 1;
}

static void reply_entry_val(struct reply *r, const struct kv_entry *e)
{
    size_t vlen;
    const char *v = kv_entry_val(e, &vlen);
    reply_bulk(r, v, vlen);
}

/*
 * ---- SET and GETEX options ----
 *
 * One parser for both, as Redis has: SET takes NX XX GET KEEPTTL EX PX EXAT PXAT, GETEX takes
 * PERSIST EX PX EXAT PXAT.  An option is refused (syntax error) when it conflicts with one
 * already seen: NX with XX, KEEPTTL or PERSIST with any expiry, two different expiry units.
 * The same option twice is accepted and, for an expiry, the last value wins.
 */
enum {
    SETF_NX = 1 << 0,
    SETF_XX = 1 << 1,
    SETF_GET = 1 << 2,
    SETF_KEEPTTL = 1 << 3,
    SETF_PERSIST = 1 << 4,
    SETF_EX = 1 << 5,
    SETF_PX = 1 << 6,
    SETF_EXAT = 1 << 7,
    SETF_PXAT = 1 << 8,
};
#define SETF_EXPIRES (SETF_EX | SETF_PX | SETF_EXAT | SETF_PXAT)

/* Parse argv[from..argc) into *flags and *expire (the expiry's argument, or NULL).  for_set
 * selects SET's options, else GETEX's.  Returns 0, or -1 after replying the syntax error. */
static int parse_set_options(struct ks_ctx *ctx, int argc, const struct arg *argv, int from,
                             bool for_set, int *flags, const struct arg **expire)
{
    static const struct {
        const char *name;
        int flag;
    } units[] = {{"ex", SETF_EX}, {"px", SETF_PX}, {"exat", SETF_EXAT}, {"pxat", SETF_PXAT}};

    for (int j = from; j < argc; j++) {
        const struct arg *a = &argv[j];
        bool has_next = j + 1 < argc;
        int f = *flags;

        if (for_set && ks_arg_is(a, "nx") && !(f & SETF_XX)) {
            *flags |= SETF_NX;
            continue;
        }
        if (for_set && ks_arg_is(a, "xx") && !(f & SETF_NX)) {
            *flags |= SETF_XX;
            continue;
        }
        if (for_set && ks_arg_is(a, "get")) {
            *flags |= SETF_GET;
            continue;
        }
        if (for_set && ks_arg_is(a, "keepttl") && !(f & (SETF_PERSIST | SETF_EXPIRES))) {
            *flags |= SETF_KEEPTTL;
            continue;
        }
        if (!for_set && ks_arg_is(a, "persist") && !(f & (SETF_KEEPTTL | SETF_EXPIRES))) {
            *flags |= SETF_PERSIST;
            continue;
        }
        bool matched = false;
        for (size_t u = 0; u < RK_ARRAY_LEN(units); u++) {
            int others = SETF_EXPIRES & ~units[u].flag;
            if (ks_arg_is(a, units[u].name) && has_next &&
                !(f & (SETF_KEEPTTL | SETF_PERSIST | others))) {
                *flags |= units[u].flag;
                *expire = &argv[++j];
                matched = true;
                break;
            }
        }
        if (!matched) {
            reply_error(ctx->r, RK_ERR_SYNTAX);
            return -1;
        }
    }
    return 0;
}

/* The deadline an EX/PX/EXAT/PXAT argument asks for, as Redis's getExpireMillisecondsOrReply:
 * not an integer -> NOTINT; <= 0, or out of range once in ms and made absolute -> "invalid
 * expire time in '<cmd>' command".  Returns 0, or -1 after replying the error. */
static int parse_set_expire(struct ks_ctx *ctx, const struct arg *a, int flags, const char *cmd,
                            int64_t *deadline)
{
    long long v;
    if (rk_str2ll(a->p, a->len, &v) < 0) {
        reply_error(ctx->r, RK_ERR_NOTINT);
        return -1;
    }
    bool seconds = flags & (SETF_EX | SETF_EXAT);
    if (v <= 0 || (seconds && v > LLONG_MAX / 1000))
        goto bad;
    if (seconds)
        v *= 1000;
    if ((flags & (SETF_EX | SETF_PX)) && __builtin_add_overflow(v, ctx->now_ms, &v))
        goto bad;
    if (v <= 0)
        goto bad;
    *deadline = v;
    return 0;
bad:
    reply_errorf(ctx->r, "ERR invalid expire time in '%s' command", cmd);
    return -1;
}

/* How SET-like commands answer: SET/SETEX/PSETEX "+OK" or nil when NX/XX stops them, SETNX
 * ":1" or ":0". */
enum set_reply { SET_REPLY_OK, SET_REPLY_INT };

/* Redis's setGenericCommand.  expire is the expiry argument (or NULL), cmd the command's
 * name for the expire-time error. */
static void set_generic(struct ks_ctx *ctx, int flags, const struct arg *key, const struct arg *val,
                        const struct arg *expire, const char *cmd, enum set_reply how)
{
    int64_t deadline = KV_NO_EXPIRE;
    if (expire && parse_set_expire(ctx, expire, flags, cmd, &deadline) < 0)
        return;

    if (flags & SETF_GET) {
        struct kv_entry *old = ks_lookup_read(ctx, key->p, key->len);
        if (old)
            reply_entry_val(ctx->r, old);
        else
            reply_nil(ctx->r);
    }

    struct kv_entry *old = ks_lookup(ctx, key->p, key->len);
    if (((flags & SETF_NX) && old) || ((flags & SETF_XX) && !old)) {
        if (flags & SETF_GET)
            return;
        if (how == SET_REPLY_INT)
            reply_int(ctx->r, 0);
        else
            reply_nil(ctx->r);
        return;
    }

    if ((flags & SETF_KEEPTTL) && old)
        deadline = kv_entry_expire(old);
    if (deadline != KV_NO_EXPIRE && deadline <= ctx->now_ms)
        ks_remove(ctx, key->p, key->len); /* dead on arrival: see the essay above */
    else
        ks_store(ctx, key->p, key->len, val->p, val->len, deadline);

    if (flags & SETF_GET)
        return;
    if (how == SET_REPLY_INT)
        reply_int(ctx->r, 1);
    else
        reply_ok(ctx->r);
}

/* ---- the GET/SET family ---- */

void ks_get(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct kv_entry *e = ks_lookup_read(ctx, argv[1].p, argv[1].len);
    if (e)
        reply_entry_val(ctx->r, e);
    else
        reply_nil(ctx->r);
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ms-ts|KEEPTTL] */
void ks_set(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    int flags = 0;
    const struct arg *expire = NULL;
    if (parse_set_options(ctx, argc, argv, 3, true, &flags, &expire) < 0)
        return;
    set_generic(ctx, flags, &argv[1], &argv[2], expire, "set", SET_REPLY_OK);
}

void ks_setnx(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    set_generic(ctx, SETF_NX, &argv[1], &argv[2], NULL, "setnx", SET_REPLY_INT);
}

/* SETEX key seconds value */
void ks_setex(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    set_generic(ctx, SETF_EX, &argv[1], &argv[3], &argv[2], "setex", SET_REPLY_OK);
}

/* PSETEX key milliseconds value */
void ks_psetex(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    set_generic(ctx, SETF_PX, &argv[1], &argv[3], &argv[2], "psetex", SET_REPLY_OK);
}

/* GETSET key value: the old value (or nil); the new value has no deadline. */
void ks_getset(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct kv_entry *old = ks_lookup_read(ctx, argv[1].p, argv[1].len);
    if (old)
        reply_entry_val(ctx->r, old);
    else
        reply_nil(ctx->r);
    ks_store(ctx, argv[1].p, argv[1].len, argv[2].p, argv[2].len, KV_NO_EXPIRE);
}

void ks_getdel(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    struct kv_entry *e = ks_lookup_read(ctx, argv[1].p, argv[1].len);
    if (!e) {
        reply_nil(ctx->r);
        return;
    }
    reply_entry_val(ctx->r, e);
    ks_remove(ctx, argv[1].p, argv[1].len);
}

/*
 * GETEX key [EX s|PX ms|EXAT ts|PXAT ms-ts|PERSIST].  As in Redis the options are checked
 * first (syntax), then a missing key answers nil before the expire time is validated, so
 * "GETEX missing EX 0" is nil but "GETEX present EX 0" is an error.
 */
void ks_getex(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    const struct arg *key = &argv[1];
    int flags = 0;
    const struct arg *expire = NULL;
    if (parse_set_options(ctx, argc, argv, 2, false, &flags, &expire) < 0)
        return;

    struct kv_entry *e = ks_lookup_read(ctx, key->p, key->len);
    if (!e) {
        reply_nil(ctx->r);
        return;
    }
    int64_t deadline = KV_NO_EXPIRE;
    if (expire && parse_set_expire(ctx, expire, flags, "getex", &deadline) < 0)
        return;

    reply_entry_val(ctx->r, e); /* before e is replaced or freed */
    size_t vlen;
    const char *v = kv_entry_val(e, &vlen);
    if (expire) {
        if (deadline <= ctx->now_ms)
            ks_remove(ctx, key->p, key->len);
        else
            ks_store(ctx, key->p, key->len, v, vlen, deadline);
    } else if ((flags & SETF_PERSIST) && kv_entry_expire(e) != KV_NO_EXPIRE) {
        ks_store(ctx, key->p, key->len, v, vlen, KV_NO_EXPIRE);
    }
}

/* ---- key commands ---- */

void ks_del(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    int n = ks_lookup(ctx, argv[1].p, argv[1].len) ? ks_remove(ctx, argv[1].p, argv[1].len) : 0;
    reply_int(ctx->r, n);
}

void ks_exists(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    reply_int(ctx->r, ks_lookup_read(ctx, argv[1].p, argv[1].len) != NULL);
}

void ks_touch(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    reply_int(ctx->r, ks_lookup_read(ctx, argv[1].p, argv[1].len) != NULL);
}

void ks_type(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    reply_status(ctx->r, ks_lookup_read(ctx, argv[1].p, argv[1].len) ? "string" : "none");
}

/* MSET's part for one key: as SET without options (any deadline is cleared); no reply. */
void ks_mset_one(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    ks_store(ctx, argv[1].p, argv[1].len, argv[2].p, argv[2].len, KV_NO_EXPIRE);
}

void ks_msetnx_one(struct ks_ctx *ctx, int argc, const struct arg *argv)
{
    if (ks_lookup(ctx, argv[1].p, argv[1].len)) {
        reply_int(ctx->r, 0);
        return;
    }
    ks_store(ctx, argv[1].p, argv[1].len, argv[2].p, argv[2].len, KV_NO_EXPIRE);
    reply_int(ctx->r, 1);
}

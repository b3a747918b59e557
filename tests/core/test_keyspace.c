/*
 * Keyspace command tests: each handler runs against a real shard and writes a real reply into
 * a buf, and the test compares the exact bytes with what Redis 7.0 sends (checked against
 * redis-server 7.0.15).  Time is ctx.now_ms, moved by hand: nothing sleeps.  on_change is
 * recorded so each write's report (kind, key, value, absolute deadline) can be checked.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/keyspace.h"
#include "core/shard.h"
#include "net/reply.h"

#define NOW 1700000000000LL /* a fixed "wall clock" in ms */
#define MAX_ARGS 16

/* ---- the harness ---- */

struct change {
    enum ks_change what;
    char key[64];
    char val[128];
    size_t vlen;
    int64_t expire;
};

static struct change changes[256];
static int nchanges;

static struct shard *sh;
static struct buf out;
static struct reply rep;
static struct ks_stats stats;
static struct ks_ctx ctx;
static char res[8192];
static size_t res_len;

static void record(void *arg, enum ks_change what, const struct kv_entry *e, const char *key,
                   size_t klen)
{
    cr_assert_lt(nchanges, (int)(sizeof(changes) / sizeof(changes[0])));
    struct change *c = &changes[nchanges++];
    memset(c, 0, sizeof(*c));
    c->what = what;
    if (what == KS_CHANGE_SET) {
        size_t ek, vl;
        const char *k = kv_entry_key(e, &ek);
        const char *v = kv_entry_val(e, &vl);
        cr_assert(ek == klen && memcmp(k, key, klen) == 0, "SET report names another key");
        snprintf(c->key, sizeof(c->key), "%.*s", (int)ek, k);
        c->vlen = vl;
        memcpy(c->val, v, vl < sizeof(c->val) ? vl : sizeof(c->val));
        c->expire = kv_entry_expire(e);
    } else if (what == KS_CHANGE_DEL) {
        cr_assert_null(e);
        snprintf(c->key, sizeof(c->key), "%.*s", (int)klen, key);
    } else {
        cr_assert_null(e);
    }
}

static void setup(void)
{
    sh = shard_new();
    memset(&out, 0, sizeof(out));
    reply_init(&rep, &out, PROTO_RESP, 0);
    memset(&stats, 0, sizeof(stats));
    ctx = (struct ks_ctx){
        .shard = sh,
        .shard_idx = 0,
        .shard_bits = 0,
        .now_ms = NOW,
        .r = &rep,
        .stats = &stats,
        .on_change = record,
    };
    nchanges = 0;
}

static void teardown(void)
{
    shard_free(sh);
    buf_free(&out);
}

TestSuite(keyspace, .init = setup, .fini = teardown, .timeout = 30);

/* Run fn with the NULL-terminated arguments on context c; the reply is in res/res_len. */
static const char *vrun_on(struct ks_ctx *c, ks_cmd_fn *fn, va_list ap)
{
    struct arg argv[MAX_ARGS];
    int argc = 0;
    const char *s;
    while ((s = va_arg(ap, const char *)) != NULL) {
        cr_assert_lt(argc, MAX_ARGS);
        argv[argc].p = s;
        argv[argc].len = strlen(s);
        argc++;
    }
    if (argc > 1)
        c->hash = kv_hash(argv[1].p, argv[1].len);
    c->r->b->len = 0;
    fn(c, argc, argv);
    res_len = c->r->b->len;
    cr_assert_lt(res_len, sizeof(res));
    if (res_len)
        memcpy(res, c->r->b->p, res_len);
    res[res_len] = '\0';
    return res;
}

static const char *run(ks_cmd_fn *fn, ...)
{
    va_list ap;
    va_start(ap, fn);
    const char *r = vrun_on(&ctx, fn, ap);
    va_end(ap);
    return r;
}

#define EXPECT(want, ...) cr_assert_str_eq(run(__VA_ARGS__, NULL), want)

/* Store a key directly with an absolute deadline (or KV_NO_EXPIRE), reporting nothing. */
static void put_raw(const char *k, const char *v, int64_t expire)
{
    shard_put(sh, kv_hash(k, strlen(k)), kv_entry_new(k, strlen(k), v, strlen(v), expire));
}

static int64_t deadline_of(const char *k)
{
    struct kv_entry *e = shard_get(sh, kv_hash(k, strlen(k)), k, strlen(k));
    cr_assert_not_null(e, "key %s is missing", k);
    return kv_entry_expire(e);
}

static bool present(const char *k)
{
    return shard_get(sh, kv_hash(k, strlen(k)), k, strlen(k)) != NULL;
}

static void reset_changes(void)
{
    nchanges = 0;
}

static void expect_set_change(int i, const char *key, const char *val, int64_t expire)
{
    cr_assert_gt(nchanges, i);
    cr_assert_eq(changes[i].what, KS_CHANGE_SET, "change %d is not a SET", i);
    cr_assert_str_eq(changes[i].key, key);
    cr_assert_eq(changes[i].vlen, strlen(val));
    cr_assert(memcmp(changes[i].val, val, strlen(val)) == 0, "value %s", val);
    cr_assert_eq(changes[i].expire, expire, "deadline %lld, want %lld",
                 (long long)changes[i].expire, (long long)expire);
}

static void expect_del_change(int i, const char *key)
{
    cr_assert_gt(nchanges, i);
    cr_assert_eq(changes[i].what, KS_CHANGE_DEL, "change %d is not a DEL", i);
    cr_assert_str_eq(changes[i].key, key);
}

/* ---- GET / SET ---- */

Test(keyspace, get_and_set_basic)
{
    EXPECT("$-1\r\n", ks_get, "GET", "k");
    EXPECT("+OK\r\n", ks_set, "SET", "k", "hello");
    EXPECT("$5\r\nhello\r\n", ks_get, "GET", "k");
    EXPECT("+OK\r\n", ks_set, "SET", "k", "");
    EXPECT("$0\r\n\r\n", ks_get, "GET", "k");
    cr_assert_eq(nchanges, 2);
    expect_set_change(0, "k", "hello", KV_NO_EXPIRE);
    expect_set_change(1, "k", "", KV_NO_EXPIRE);
    cr_assert_eq(stats.keyspace_hits, 2);
    cr_assert_eq(stats.keyspace_misses, 1);
}

Test(keyspace, set_expiry_options)
{
    EXPECT("+OK\r\n", ks_set, "SET", "a", "v", "EX", "10");
    cr_assert_eq(deadline_of("a"), NOW + 10000);
    EXPECT("+OK\r\n", ks_set, "SET", "b", "v", "px", "1500");
    cr_assert_eq(deadline_of("b"), NOW + 1500);
    EXPECT("+OK\r\n", ks_set, "SET", "c", "v", "EXAT", "1800000000");
    cr_assert_eq(deadline_of("c"), 1800000000000LL);
    EXPECT("+OK\r\n", ks_set, "SET", "d", "v", "PXAT", "1800000000123");
    cr_assert_eq(deadline_of("d"), 1800000000123LL);
    /* the same unit twice: the last value wins */
    EXPECT("+OK\r\n", ks_set, "SET", "e", "v", "EX", "10", "EX", "20");
    cr_assert_eq(deadline_of("e"), NOW + 20000);
    expect_set_change(4, "e", "v", NOW + 20000);
    /* SET without KEEPTTL clears the deadline */
    EXPECT("+OK\r\n", ks_set, "SET", "a", "w");
    cr_assert_eq(deadline_of("a"), KV_NO_EXPIRE);
    /* KEEPTTL keeps it */
    EXPECT("+OK\r\n", ks_set, "SET", "b", "w", "KEEPTTL");
    cr_assert_eq(deadline_of("b"), NOW + 1500);
    expect_set_change(6, "b", "w", NOW + 1500);
    /* largest accepted absolute values */
    EXPECT("+OK\r\n", ks_set, "SET", "f", "v", "PXAT", "9223372036854775807");
    EXPECT("+OK\r\n", ks_set, "SET", "g", "v", "EXAT", "9223372036854775");
    cr_assert_eq(deadline_of("g"), 9223372036854775000LL);
}

Test(keyspace, set_syntax_errors)
{
    const char *syn = "-ERR syntax error\r\n";
    EXPECT(syn, ks_set, "SET", "k", "v", "NX", "XX");
    EXPECT(syn, ks_set, "SET", "k", "v", "xx", "nx");
    EXPECT(syn, ks_set, "SET", "k", "v", "EX", "10", "PX", "20");
    EXPECT(syn, ks_set, "SET", "k", "v", "PX", "10", "EXAT", "20");
    EXPECT(syn, ks_set, "SET", "k", "v", "EXAT", "10", "PXAT", "20");
    EXPECT(syn, ks_set, "SET", "k", "v", "KEEPTTL", "EX", "5");
    EXPECT(syn, ks_set, "SET", "k", "v", "EX", "5", "KEEPTTL");
    EXPECT(syn, ks_set, "SET", "k", "v", "EX");
    EXPECT(syn, ks_set, "SET", "k", "v", "PERSIST");
    EXPECT(syn, ks_set, "SET", "k", "v", "FOO");
    EXPECT(syn, ks_set, "SET", "k", "v", "NXX");
    /* a syntax error wins over a bad time that comes first */
    EXPECT(syn, ks_set, "SET", "k", "v", "EX", "0", "FOO");
    cr_assert_eq(nchanges, 0);
    cr_assert(!present("k"));
}

Test(keyspace, set_invalid_expire_times)
{
    const char *bad = "-ERR invalid expire time in 'set' command\r\n";
    EXPECT(bad, ks_set, "SET", "k", "v", "EX", "0");
    EXPECT(bad, ks_set, "SET", "k", "v", "EX", "-1");
    EXPECT(bad, ks_set, "SET", "k", "v", "PX", "0");
    EXPECT(bad, ks_set, "SET", "k", "v", "EXAT", "0");
    EXPECT(bad, ks_set, "SET", "k", "v", "PXAT", "-5");
    EXPECT(bad, ks_set, "SET", "k", "v", "EX", "9223372036854775807");
    EXPECT(bad, ks_set, "SET", "k", "v", "EX", "9223372036854776"); /* > LLONG_MAX / 1000 */
    EXPECT(bad, ks_set, "SET", "k", "v", "EXAT", "9223372036854776");
    EXPECT(bad, ks_set, "SET", "k", "v", "PX", "9223372036854775807"); /* + now overflows */
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_set, "SET", "k", "v", "EX",
           "abc");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_set, "SET", "k", "v", "EX",
           "9223372036854775808");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_set, "SET", "k", "v", "PX", " 5");
    cr_assert_eq(nchanges, 0);
    cr_assert(!present("k"));
}

Test(keyspace, set_nx_xx)
{
    EXPECT("$-1\r\n", ks_set, "SET", "k", "v", "XX");
    cr_assert(!present("k"));
    EXPECT("+OK\r\n", ks_set, "SET", "k", "v", "NX");
    EXPECT("$-1\r\n", ks_set, "SET", "k", "w", "NX");
    EXPECT("$-1\r\n", ks_set, "SET", "k", "w", "nx", "nx"); /* repeated: accepted */
    EXPECT("$1\r\nv\r\n", ks_get, "GET", "k");
    EXPECT("+OK\r\n", ks_set, "SET", "k", "w", "XX", "PX", "100");
    EXPECT("$1\r\nw\r\n", ks_get, "GET", "k");
    cr_assert_eq(nchanges, 2);
}

Test(keyspace, set_get_option)
{
    EXPECT("$-1\r\n", ks_set, "SET", "k", "v1", "GET");
    EXPECT("$2\r\nv1\r\n", ks_set, "SET", "k", "v2", "GET", "EX", "100");
    cr_assert_eq(deadline_of("k"), NOW + 100000);
    /* GET with NX (allowed since 7.0): old value, nothing set */
    reset_changes();
    EXPECT("$2\r\nv2\r\n", ks_set, "SET", "k", "v3", "NX", "GET");
    cr_assert_eq(nchanges, 0);
    /* GET with XX on a missing key: nil, nothing set */
    EXPECT("$-1\r\n", ks_set, "SET", "z", "1", "XX", "GET");
    cr_assert(!present("z"));
    /* KEEPTTL with GET */
    EXPECT("$2\r\nv2\r\n", ks_set, "SET", "k", "v4", "GET", "KEEPTTL");
    cr_assert_eq(deadline_of("k"), NOW + 100000);
    /* the GET part counts as a read */
    cr_assert_eq(stats.keyspace_misses, 2);
    cr_assert_eq(stats.keyspace_hits, 3);
}

Test(keyspace, set_deadline_already_past_removes)
{
    EXPECT("+OK\r\n", ks_set, "SET", "k", "old");
    reset_changes();
    EXPECT("$3\r\nold\r\n", ks_set, "SET", "k", "new", "PXAT", "1000", "GET");
    cr_assert(!present("k"));
    cr_assert_eq(nchanges, 1);
    expect_del_change(0, "k");
    EXPECT("+OK\r\n", ks_set, "SET", "m", "v", "EXAT", "1");
    EXPECT("$-1\r\n", ks_get, "GET", "m");
    cr_assert_eq(nchanges, 1); /* m was never there: nothing to report */
}

Test(keyspace, setnx_setex_psetex)
{
    EXPECT(":1\r\n", ks_setnx, "SETNX", "k", "v");
    EXPECT(":0\r\n", ks_setnx, "SETNX", "k", "w");
    EXPECT("$1\r\nv\r\n", ks_get, "GET", "k");

    EXPECT("+OK\r\n", ks_setex, "SETEX", "s", "10", "v");
    cr_assert_eq(deadline_of("s"), NOW + 10000);
    EXPECT("+OK\r\n", ks_psetex, "PSETEX", "p", "1234", "v");
    cr_assert_eq(deadline_of("p"), NOW + 1234);
    expect_set_change(2, "p", "v", NOW + 1234);

    EXPECT("-ERR invalid expire time in 'setex' command\r\n", ks_setex, "SETEX", "x", "0", "v");
    EXPECT("-ERR invalid expire time in 'setex' command\r\n", ks_setex, "SETEX", "x", "-3", "v");
    EXPECT("-ERR invalid expire time in 'psetex' command\r\n", ks_psetex, "PSETEX", "x", "0", "v");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_setex, "SETEX", "x", "abc", "v");
    cr_assert(!present("x"));
    cr_assert_eq(nchanges, 3);
}

Test(keyspace, getset_getdel)
{
    EXPECT("$-1\r\n", ks_getset, "GETSET", "k", "a");
    EXPECT("+OK\r\n", ks_set, "SET", "k", "b", "EX", "100");
    EXPECT("$1\r\nb\r\n", ks_getset, "GETSET", "k", "c");
    cr_assert_eq(deadline_of("k"), KV_NO_EXPIRE); /* GETSET clears the deadline */
    cr_assert_eq(nchanges, 3);
    expect_set_change(2, "k", "c", KV_NO_EXPIRE);

    reset_changes();
    EXPECT("$1\r\nc\r\n", ks_getdel, "GETDEL", "k");
    cr_assert(!present("k"));
    EXPECT("$-1\r\n", ks_getdel, "GETDEL", "k");
    cr_assert_eq(nchanges, 1);
    expect_del_change(0, "k");
}

Test(keyspace, getex)
{
    EXPECT("$-1\r\n", ks_getex, "GETEX", "k");
    /* a missing key answers nil before the time is checked, as Redis */
    EXPECT("$-1\r\n", ks_getex, "GETEX", "k", "EX", "0");
    EXPECT("$-1\r\n", ks_getex, "GETEX", "k", "EX", "abc");
    /* but the options are checked first */
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "FOO");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "KEEPTTL");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "NX");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "GET");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "PERSIST", "EX", "1");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "EX", "1", "PERSIST");
    EXPECT("-ERR syntax error\r\n", ks_getex, "GETEX", "k", "EX", "1", "PX", "1");

    put_raw("k", "v", KV_NO_EXPIRE);
    EXPECT("-ERR invalid expire time in 'getex' command\r\n", ks_getex, "GETEX", "k", "EX", "0");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_getex, "GETEX", "k", "PX", "x");
    cr_assert_eq(nchanges, 0);

    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k");
    cr_assert_eq(nchanges, 0);
    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k", "EX", "5", "EX", "6");
    cr_assert_eq(deadline_of("k"), NOW + 6000);
    expect_set_change(0, "k", "v", NOW + 6000);
    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k", "PXAT", "1800000000000");
    cr_assert_eq(deadline_of("k"), 1800000000000LL);
    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k", "persist");
    cr_assert_eq(deadline_of("k"), KV_NO_EXPIRE);
    expect_set_change(2, "k", "v", KV_NO_EXPIRE);
    /* PERSIST with no deadline: nothing changes, nothing reported */
    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k", "PERSIST");
    cr_assert_eq(nchanges, 3);
    /* an absolute time in the past deletes the key after replying */
    EXPECT("$1\r\nv\r\n", ks_getex, "GETEX", "k", "EXAT", "1");
    cr_assert(!present("k"));
    cr_assert_eq(nchanges, 4);
    expect_del_change(3, "k");
}

/* ---- key commands ---- */

Test(keyspace, del_exists_touch_type)
{
    EXPECT(":0\r\n", ks_exists, "EXISTS", "k");
    EXPECT(":0\r\n", ks_touch, "TOUCH", "k");
    EXPECT("+none\r\n", ks_type, "TYPE", "k");
    EXPECT(":0\r\n", ks_del, "DEL", "k");
    cr_assert_eq(nchanges, 0);
    put_raw("k", "v", KV_NO_EXPIRE);
    EXPECT(":1\r\n", ks_exists, "EXISTS", "k");
    EXPECT(":1\r\n", ks_touch, "TOUCH", "k");
    EXPECT("+string\r\n", ks_type, "TYPE", "k");
    cr_assert_eq(stats.keyspace_hits, 3);
    cr_assert_eq(stats.keyspace_misses, 3);
    EXPECT(":1\r\n", ks_del, "DEL", "k");
    EXPECT(":0\r\n", ks_del, "DEL", "k");
    cr_assert_eq(nchanges, 1);
    expect_del_change(0, "k");
    /* write lookups count neither hits nor misses */
    cr_assert_eq(stats.keyspace_hits, 3);
    cr_assert_eq(stats.keyspace_misses, 3);
}

Test(keyspace, mset_parts)
{
    put_raw("a", "old", NOW + 5000);
    run(ks_mset_one, "MSET", "a", "1", NULL);
    cr_assert_eq(res_len, 0, "MSET part replies nothing");
    cr_assert_eq(deadline_of("a"), KV_NO_EXPIRE);
    expect_set_change(0, "a", "1", KV_NO_EXPIRE);
    EXPECT(":0\r\n", ks_msetnx_one, "MSETNX", "a", "2");
    EXPECT(":1\r\n", ks_msetnx_one, "MSETNX", "b", "2");
    EXPECT("$1\r\n2\r\n", ks_get, "GET", "b");
    cr_assert_eq(nchanges, 2);
}

/* ---- lazy expiry ---- */

Test(keyspace, lazy_expiry_with_controlled_clock)
{
    EXPECT("+OK\r\n", ks_set, "SET", "k", "v", "PX", "100");
    ctx.now_ms = NOW + 99;
    EXPECT("$1\r\nv\r\n", ks_get, "GET", "k");
    EXPECT(":1\r\n", ks_pttl, "PTTL", "k");
    reset_changes();
    ctx.now_ms = NOW + 100; /* a deadline equal to now is past */
    EXPECT("$-1\r\n", ks_get, "GET", "k");
    cr_assert(!present("k"));
    cr_assert_eq(stats.expired_keys, 1);
    cr_assert_eq(nchanges, 1);
    expect_del_change(0, "k");
    cr_assert_eq(stats.keyspace_misses, 1);

    /* expired keys are gone for every command */
    put_raw("e", "5", NOW);
    EXPECT(":-2\r\n", ks_ttl, "TTL", "e");
    put_raw("e", "5", NOW);
    EXPECT(":0\r\n", ks_del, "DEL", "e");
    put_raw("e", "5", NOW);
    EXPECT(":1\r\n", ks_incr, "INCR", "e"); /* counts from 0, no deadline */
    cr_assert_eq(deadline_of("e"), KV_NO_EXPIRE);
    put_raw("e", "5", NOW);
    EXPECT(":0\r\n", ks_exists, "EXISTS", "e");
    put_raw("e", "5", NOW);
    EXPECT("$-1\r\n", ks_set, "SET", "e", "x", "XX");
    cr_assert_eq(stats.expired_keys, 6);
}

/* ---- counters ---- */

Test(keyspace, incr_family)
{
    EXPECT(":1\r\n", ks_incr, "INCR", "n");
    EXPECT(":0\r\n", ks_decr, "DECR", "n");
    EXPECT(":10\r\n", ks_incrby, "INCRBY", "n", "10");
    EXPECT(":-5\r\n", ks_decrby, "DECRBY", "n", "15");
    EXPECT("$2\r\n-5\r\n", ks_get, "GET", "n");
    cr_assert_eq(nchanges, 4);
    expect_set_change(3, "n", "-5", KV_NO_EXPIRE);

    /* INCR keeps the deadline and reports the SET of its result with it */
    EXPECT("+OK\r\n", ks_set, "SET", "t", "41", "EX", "100");
    reset_changes();
    EXPECT(":42\r\n", ks_incr, "INCR", "t");
    cr_assert_eq(deadline_of("t"), NOW + 100000);
    expect_set_change(0, "t", "42", NOW + 100000);
}

Test(keyspace, incr_errors)
{
    const char *notint = "-ERR value is not an integer or out of range\r\n";
    put_raw("s", "abc", KV_NO_EXPIRE);
    put_raw("sp", " 1", KV_NO_EXPIRE);
    put_raw("lz", "01", KV_NO_EXPIRE);
    put_raw("f", "1.5", KV_NO_EXPIRE);
    put_raw("e", "", KV_NO_EXPIRE);
    put_raw("big", "9223372036854775808", KV_NO_EXPIRE);
    EXPECT(notint, ks_incr, "INCR", "s");
    EXPECT(notint, ks_incr, "INCR", "sp");
    EXPECT(notint, ks_incr, "INCR", "lz");
    EXPECT(notint, ks_decr, "DECR", "f");
    EXPECT(notint, ks_incr, "INCR", "e");
    EXPECT(notint, ks_incr, "INCR", "big");
    EXPECT(notint, ks_incrby, "INCRBY", "n", "abc");
    EXPECT(notint, ks_incrby, "INCRBY", "n", "1.0");
    EXPECT(notint, ks_decrby, "DECRBY", "n", "9223372036854775808");

    put_raw("max", "9223372036854775807", KV_NO_EXPIRE);
    put_raw("min", "-9223372036854775808", KV_NO_EXPIRE);
    const char *ovf = "-ERR increment or decrement would overflow\r\n";
    EXPECT(ovf, ks_incr, "INCR", "max");
    EXPECT(ovf, ks_decr, "DECR", "min");
    EXPECT(ovf, ks_incrby, "INCRBY", "min", "-1");
    EXPECT(ovf, ks_decrby, "DECRBY", "max", "-1");
    EXPECT("-ERR decrement would overflow\r\n", ks_decrby, "DECRBY", "n", "-9223372036854775808");
    EXPECT(":-1\r\n", ks_incrby, "INCRBY", "max", "-9223372036854775808");
    EXPECT(":-9223372036854775808\r\n", ks_incrby, "INCRBY", "z", "-9223372036854775808");
    cr_assert_eq(nchanges, 2);
}

Test(keyspace, incrbyfloat_formatting)
{
    put_raw("a", "10.5", KV_NO_EXPIRE);
    EXPECT("$4\r\n10.6\r\n", ks_incrbyfloat, "INCRBYFLOAT", "a", "0.1");
    put_raw("b", "5.0e3", KV_NO_EXPIRE);
    EXPECT("$4\r\n5200\r\n", ks_incrbyfloat, "INCRBYFLOAT", "b", "200");
    put_raw("c", "3", KV_NO_EXPIRE);
    EXPECT("$3\r\n4.5\r\n", ks_incrbyfloat, "INCRBYFLOAT", "c", "1.5");
    EXPECT("$3\r\n1.5\r\n", ks_incrbyfloat, "INCRBYFLOAT", "new", "+1.5");
    put_raw("d", "-0.5", KV_NO_EXPIRE);
    EXPECT("$1\r\n0\r\n", ks_incrbyfloat, "INCRBYFLOAT", "d", "0.5");
    EXPECT("$2\r\n16\r\n", ks_incrbyfloat, "INCRBYFLOAT", "h", "0x10");
    EXPECT("$3\r\n4.5\r\n", ks_get, "GET", "c");
    expect_set_change(0, "a", "10.6", KV_NO_EXPIRE);

    /* keeps the deadline */
    put_raw("t", "1", NOW + 777);
    reset_changes();
    EXPECT("$3\r\n1.5\r\n", ks_incrbyfloat, "INCRBYFLOAT", "t", "0.5");
    cr_assert_eq(deadline_of("t"), NOW + 777);
    expect_set_change(0, "t", "1.5", NOW + 777);
}

Test(keyspace, incrbyfloat_errors)
{
    const char *notf = "-ERR value is not a valid float\r\n";
    const char *naninf = "-ERR increment would produce NaN or Infinity\r\n";
    put_raw("s", "abc", KV_NO_EXPIRE);
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "s", "1");
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "x", "abc");
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "x", " 1");
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "x", "1 ");
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "x", "");
    EXPECT(notf, ks_incrbyfloat, "INCRBYFLOAT", "x", "nan");
    EXPECT(naninf, ks_incrbyfloat, "INCRBYFLOAT", "x", "inf");
    put_raw("i", "inf", KV_NO_EXPIRE);
    EXPECT(naninf, ks_incrbyfloat, "INCRBYFLOAT", "i", "1");
    put_raw("m", "1e4932", KV_NO_EXPIRE);
    EXPECT(naninf, ks_incrbyfloat, "INCRBYFLOAT", "m", "1e4932");
    cr_assert_eq(nchanges, 0);
    cr_assert(!present("x"));
}

/* ---- APPEND, STRLEN, GETRANGE, SETRANGE ---- */

Test(keyspace, append_and_strlen)
{
    EXPECT(":0\r\n", ks_strlen, "STRLEN", "k");
    EXPECT(":3\r\n", ks_append, "APPEND", "k", "abc");
    EXPECT(":5\r\n", ks_append, "APPEND", "k", "de");
    EXPECT("$5\r\nabcde\r\n", ks_get, "GET", "k");
    EXPECT(":5\r\n", ks_strlen, "STRLEN", "k");
    cr_assert_eq(nchanges, 2);
    expect_set_change(1, "k", "abcde", KV_NO_EXPIRE);
    EXPECT(":5\r\n", ks_append, "APPEND", "k", "");
    cr_assert_eq(nchanges, 2);
    /* APPEND "" to a missing key creates an empty string */
    EXPECT(":0\r\n", ks_append, "APPEND", "e", "");
    EXPECT(":1\r\n", ks_exists, "EXISTS", "e");
    /* keeps the deadline */
    put_raw("t", "x", NOW + 50);
    reset_changes();
    EXPECT(":2\r\n", ks_append, "APPEND", "t", "y");
    cr_assert_eq(deadline_of("t"), NOW + 50);
    expect_set_change(0, "t", "xy", NOW + 50);
}

Test(keyspace, append_size_limit)
{
    const char *big = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
    ctx.max_string = 8;
    EXPECT(":5\r\n", ks_append, "APPEND", "k", "abcde");
    EXPECT(":8\r\n", ks_append, "APPEND", "k", "fgh"); /* exactly the limit is fine */
    EXPECT(big, ks_append, "APPEND", "k", "i");
    EXPECT("$8\r\nabcdefgh\r\n", ks_get, "GET", "k");
    EXPECT(big, ks_setrange, "SETRANGE", "k", "8", "x");
    EXPECT(":8\r\n", ks_setrange, "SETRANGE", "k", "7", "x");
    cr_assert_eq(nchanges, 3);
}

Test(keyspace, getrange)
{
    put_raw("k", "Hello World", KV_NO_EXPIRE);
    EXPECT("$5\r\nHello\r\n", ks_getrange, "GETRANGE", "k", "0", "4");
    EXPECT("$3\r\nrld\r\n", ks_getrange, "GETRANGE", "k", "-3", "-1");
    EXPECT("$11\r\nHello World\r\n", ks_getrange, "GETRANGE", "k", "0", "-1");
    EXPECT("$11\r\nHello World\r\n", ks_getrange, "GETRANGE", "k", "-100", "100");
    EXPECT("$1\r\nH\r\n", ks_getrange, "GETRANGE", "k", "-100", "-50");
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "k", "-1", "-2");
    /* both negative, start > end: empty, though clamping alone would give "H" */
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "k", "-50", "-100");
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "k", "5", "3");
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "k", "20", "30");
    EXPECT("$1\r\nd\r\n", ks_getrange, "GETRANGE", "k", "10", "9223372036854775807");
    EXPECT("$11\r\nHello World\r\n", ks_getrange, "GETRANGE", "k", "-9223372036854775808",
           "9223372036854775807");
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "missing", "0", "-1");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_getrange, "GETRANGE", "k", "x",
           "1");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_getrange, "GETRANGE", "k", "0",
           "1.5");
    put_raw("e", "", KV_NO_EXPIRE);
    EXPECT("$0\r\n\r\n", ks_getrange, "GETRANGE", "e", "0", "-1");
    cr_assert_eq(stats.keyspace_hits, 12);
    cr_assert_eq(stats.keyspace_misses, 1);
}

Test(keyspace, setrange)
{
    EXPECT(":0\r\n", ks_setrange, "SETRANGE", "k", "5", "");
    cr_assert(!present("k"), "SETRANGE with an empty value creates nothing");
    EXPECT(":5\r\n", ks_setrange, "SETRANGE", "k", "2", "abc");
    run(ks_get, "GET", "k", NULL);
    cr_assert_eq(res_len, 11);
    cr_assert(memcmp(res, "$5\r\n\0\0abc\r\n", 11) == 0, "zero padding");
    EXPECT(":5\r\n", ks_setrange, "SETRANGE", "k", "0", "XY");
    EXPECT("$5\r\nXYabc\r\n", ks_get, "GET", "k");
    EXPECT(":6\r\n", ks_setrange, "SETRANGE", "k", "4", "ZZ");
    EXPECT("$6\r\nXYabZZ\r\n", ks_get, "GET", "k");
    EXPECT(":6\r\n", ks_setrange, "SETRANGE", "k", "100", "");
    cr_assert_eq(nchanges, 3);

    EXPECT("-ERR offset is out of range\r\n", ks_setrange, "SETRANGE", "k", "-1", "a");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_setrange, "SETRANGE", "k", "abc",
           "a");
    const char *big = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
    EXPECT(big, ks_setrange, "SETRANGE", "n", "536870912", "a");
    EXPECT(big, ks_setrange, "SETRANGE", "n", "536870911", "ab");
    EXPECT(big, ks_setrange, "SETRANGE", "k", "9223372036854775807", "a");
    EXPECT(":0\r\n", ks_setrange, "SETRANGE", "n", "536870911", "");
    cr_assert(!present("n"));
    cr_assert_eq(nchanges, 3);

    /* keeps the deadline */
    put_raw("t", "abc", NOW + 9);
    reset_changes();
    EXPECT(":3\r\n", ks_setrange, "SETRANGE", "t", "1", "X");
    expect_set_change(0, "t", "aXc", NOW + 9);
}

/* ---- EXPIRE family, TTL, PERSIST ---- */

Test(keyspace, expire_basic)
{
    EXPECT(":0\r\n", ks_expire, "EXPIRE", "k", "10");
    put_raw("k", "v", KV_NO_EXPIRE);
    EXPECT(":-1\r\n", ks_ttl, "TTL", "k");
    EXPECT(":1\r\n", ks_expire, "EXPIRE", "k", "10");
    cr_assert_eq(deadline_of("k"), NOW + 10000);
    expect_set_change(0, "k", "v", NOW + 10000);
    EXPECT(":10\r\n", ks_ttl, "TTL", "k");
    EXPECT(":10000\r\n", ks_pttl, "PTTL", "k");
    EXPECT(":1\r\n", ks_pexpire, "PEXPIRE", "k", "1499");
    EXPECT(":1\r\n", ks_ttl, "TTL", "k");
    EXPECT(":1\r\n", ks_pexpire, "PEXPIRE", "k", "1500");
    EXPECT(":2\r\n", ks_ttl, "TTL", "k"); /* rounded to the nearest second */
    EXPECT(":1\r\n", ks_expireat, "EXPIREAT", "k", "1800000000");
    cr_assert_eq(deadline_of("k"), 1800000000000LL);
    EXPECT(":1\r\n", ks_pexpireat, "PEXPIREAT", "k", "1800000000001");
    cr_assert_eq(deadline_of("k"), 1800000000001LL);
    EXPECT(":-2\r\n", ks_ttl, "TTL", "missing");
    EXPECT(":-2\r\n", ks_pttl, "PTTL", "missing");

    EXPECT(":1\r\n", ks_persist, "PERSIST", "k");
    cr_assert_eq(deadline_of("k"), KV_NO_EXPIRE);
    EXPECT(":0\r\n", ks_persist, "PERSIST", "k");
    EXPECT(":0\r\n", ks_persist, "PERSIST", "missing");
    EXPECT(":-1\r\n", ks_pttl, "PTTL", "k");
    cr_assert_eq(nchanges, 6);
    expect_set_change(5, "k", "v", KV_NO_EXPIRE);
}

Test(keyspace, expire_in_the_past_deletes)
{
    put_raw("a", "v", KV_NO_EXPIRE);
    put_raw("b", "v", KV_NO_EXPIRE);
    put_raw("c", "v", KV_NO_EXPIRE);
    put_raw("d", "v", KV_NO_EXPIRE);
    EXPECT(":1\r\n", ks_expire, "EXPIRE", "a", "0");
    EXPECT(":1\r\n", ks_pexpire, "PEXPIRE", "b", "-100");
    EXPECT(":1\r\n", ks_expireat, "EXPIREAT", "c", "1");
    EXPECT(":1\r\n", ks_pexpireat, "PEXPIREAT", "d", "-9223372036854775808");
    cr_assert(!present("a") && !present("b") && !present("c") && !present("d"));
    cr_assert_eq(nchanges, 4);
    expect_del_change(0, "a");
    expect_del_change(3, "d");
}

Test(keyspace, expire_errors)
{
    put_raw("k", "v", KV_NO_EXPIRE);
    EXPECT("-ERR Unsupported option foo\r\n", ks_expire, "EXPIRE", "k", "10", "foo");
    EXPECT("-ERR Unsupported option FOO\r\n", ks_expire, "EXPIRE", "k", "10", "nx", "FOO");
    const char *nxc = "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n";
    EXPECT(nxc, ks_expire, "EXPIRE", "k", "10", "NX", "XX");
    EXPECT(nxc, ks_expire, "EXPIRE", "k", "10", "nx", "gt");
    EXPECT(nxc, ks_pexpire, "PEXPIRE", "k", "10", "lt", "nx");
    const char *gtlt = "-ERR GT and LT options at the same time are not compatible\r\n";
    EXPECT(gtlt, ks_expire, "EXPIRE", "k", "10", "GT", "LT");
    EXPECT(gtlt, ks_expire, "EXPIRE", "missing", "10", "gt", "lt");
    /* options are checked before the time */
    EXPECT(gtlt, ks_expire, "EXPIRE", "k", "abc", "gt", "lt");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_expire, "EXPIRE", "k", "abc");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_expire, "EXPIRE", "k", "10.5",
           "NX");
    EXPECT("-ERR invalid expire time in 'expire' command\r\n", ks_expire, "EXPIRE", "k",
           "9223372036854775807");
    EXPECT("-ERR invalid expire time in 'expire' command\r\n", ks_expire, "EXPIRE", "k",
           "-9223372036854775808");
    EXPECT("-ERR invalid expire time in 'pexpire' command\r\n", ks_pexpire, "PEXPIRE", "k",
           "9223372036854775807");
    EXPECT("-ERR invalid expire time in 'expireat' command\r\n", ks_expireat, "EXPIREAT", "k",
           "9223372036854775807");
    /* the time overflows before the key is looked at */
    EXPECT("-ERR invalid expire time in 'expire' command\r\n", ks_expire, "EXPIRE", "missing",
           "9223372036854775807");
    /* PEXPIREAT adds nothing, so the largest time is fine */
    EXPECT(":1\r\n", ks_pexpireat, "PEXPIREAT", "k", "9223372036854775807");
    cr_assert_eq(nchanges, 1);
    /* and TTL on it does not overflow */
    char want[64];
    snprintf(want, sizeof(want), ":%lld\r\n", (9223372036854775807LL - NOW) / 1000 + 1);
    EXPECT(want, ks_ttl, "TTL", "k");
}

/* The NX/XX/GT/LT matrix: on a key with no deadline and on a key with 100 s left, setting
 * 50 s or 200 s. */
Test(keyspace, expire_option_matrix)
{
    static const struct {
        const char *opt1, *opt2;
        bool has_ttl;
        const char *secs;
        int want;
    } m[] = {
        {"NX", NULL, false, "50", 1}, {"NX", NULL, true, "50", 0},   {"XX", NULL, false, "50", 0},
        {"XX", NULL, true, "50", 1},  {"GT", NULL, false, "200", 0}, {"GT", NULL, true, "50", 0},
        {"GT", NULL, true, "100", 0}, {"GT", NULL, true, "200", 1},  {"LT", NULL, false, "200", 1},
        {"LT", NULL, true, "200", 0}, {"LT", NULL, true, "100", 0},  {"LT", NULL, true, "50", 1},
        {"XX", "GT", true, "200", 1}, {"XX", "GT", false, "200", 0}, {"XX", "LT", false, "50", 0},
        {"XX", "LT", true, "50", 1},  {"gt", "gt", true, "200", 1},  {"nx", "NX", false, "5", 1},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
        int64_t before = m[i].has_ttl ? NOW + 100000 : KV_NO_EXPIRE;
        put_raw("k", "v", before);
        reset_changes();
        const char *r = m[i].opt2
                            ? run(ks_expire, "EXPIRE", "k", m[i].secs, m[i].opt1, m[i].opt2, NULL)
                            : run(ks_expire, "EXPIRE", "k", m[i].secs, m[i].opt1, NULL);
        cr_assert_str_eq(r, m[i].want ? ":1\r\n" : ":0\r\n", "row %zu", i);
        int64_t after = m[i].want ? NOW + atoll(m[i].secs) * 1000 : before;
        cr_assert_eq(deadline_of("k"), after, "row %zu", i);
        cr_assert_eq(nchanges, m[i].want, "row %zu", i);
    }
    EXPECT(":0\r\n", ks_expire, "EXPIRE", "missing", "10", "LT");
}

/* ---- on_change for every write command ---- */

Test(keyspace, on_change_per_write_command)
{
    static const struct {
        ks_cmd_fn *fn;
        const char *argv[6];
        int nset, ndel;
    } cmds[] = {
        {ks_set, {"SET", "k", "x"}, 1, 0},
        {ks_set, {"SET", "k", "x", "NX"}, 0, 0},
        {ks_setnx, {"SETNX", "n", "x"}, 1, 0},
        {ks_setex, {"SETEX", "k", "5", "x"}, 1, 0},
        {ks_psetex, {"PSETEX", "k", "5", "x"}, 1, 0},
        {ks_getset, {"GETSET", "k", "x"}, 1, 0},
        {ks_getdel, {"GETDEL", "k"}, 0, 1},
        {ks_getdel, {"GETDEL", "zz"}, 0, 0},
        {ks_getex, {"GETEX", "k", "EX", "5"}, 1, 0},
        {ks_getex, {"GETEX", "k"}, 0, 0},
        {ks_del, {"DEL", "k"}, 0, 1},
        {ks_incr, {"INCR", "i"}, 1, 0},
        {ks_decr, {"DECR", "i"}, 1, 0},
        {ks_incrby, {"INCRBY", "i", "3"}, 1, 0},
        {ks_decrby, {"DECRBY", "i", "3"}, 1, 0},
        {ks_incrbyfloat, {"INCRBYFLOAT", "i", "0.5"}, 1, 0},
        {ks_append, {"APPEND", "k", "x"}, 1, 0},
        {ks_setrange, {"SETRANGE", "k", "0", "y"}, 1, 0},
        {ks_expire, {"EXPIRE", "k", "5"}, 1, 0},
        {ks_pexpire, {"PEXPIRE", "k", "5000"}, 1, 0},
        {ks_expireat, {"EXPIREAT", "k", "1800000000"}, 1, 0},
        {ks_pexpireat, {"PEXPIREAT", "k", "1"}, 0, 1},
        {ks_persist, {"PERSIST", "k"}, 1, 0},
        {ks_persist, {"PERSIST", "i"}, 0, 0},
        {ks_mset_one, {"MSET", "k", "x"}, 1, 0},
        {ks_msetnx_one, {"MSETNX", "k", "x"}, 0, 0},
        {ks_get, {"GET", "k"}, 0, 0},
        {ks_exists, {"EXISTS", "k"}, 0, 0},
        {ks_ttl, {"TTL", "k"}, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        put_raw("k", "1", NOW + 60000);
        reset_changes();
        struct arg argv[6];
        int argc = 0;
        for (; argc < 6 && cmds[i].argv[argc]; argc++)
            argv[argc] = (struct arg){cmds[i].argv[argc], strlen(cmds[i].argv[argc])};
        ctx.hash = kv_hash(argv[1].p, argv[1].len);
        out.len = 0;
        cmds[i].fn(&ctx, argc, argv);
        int nset = 0, ndel = 0;
        for (int j = 0; j < nchanges; j++) {
            nset += changes[j].what == KS_CHANGE_SET;
            ndel += changes[j].what == KS_CHANGE_DEL;
            cr_assert_str_eq(changes[j].key, cmds[i].argv[1], "%s", cmds[i].argv[0]);
        }
        cr_assert_eq(nset, cmds[i].nset, "%s %s: %d SET reports", cmds[i].argv[0], cmds[i].argv[1],
                     nset);
        cr_assert_eq(ndel, cmds[i].ndel, "%s %s: %d DEL reports", cmds[i].argv[0], cmds[i].argv[1],
                     ndel);
    }
    reset_changes();
    run(ks_flush_shard, "FLUSHALL", NULL);
    cr_assert_eq(nchanges, 1);
    cr_assert_eq(changes[0].what, KS_CHANGE_FLUSH);
    cr_assert_eq(shard_count(sh), 0);
}

/* ---- line protocol ---- */

Test(keyspace, line_protocol_replies)
{
    reply_init(&rep, &out, PROTO_LINE, 0);
    EXPECT("OK\n", ks_set, "SET", "k", "v");
    EXPECT("v\n", ks_get, "GET", "k");
    EXPECT("(nil)\n", ks_get, "GET", "zz");
    EXPECT("1\n", ks_incr, "INCR", "n");
    EXPECT("string\n", ks_type, "TYPE", "k");
    EXPECT("ERR syntax error\n", ks_set, "SET", "k", "v", "NX", "XX");
    rep.crlf = 1;
    EXPECT("-2\r\n", ks_ttl, "TTL", "zz");
}

/* ---- whole-shard commands ---- */

Test(keyspace, dbsize_and_keys)
{
    EXPECT(":0\r\n", ks_dbsize_shard, "DBSIZE");
    put_raw("user:1", "a", KV_NO_EXPIRE);
    put_raw("user:2", "a", KV_NO_EXPIRE);
    put_raw("user:10", "a", KV_NO_EXPIRE);
    put_raw("admin", "a", KV_NO_EXPIRE);
    put_raw("user:3", "a", NOW - 1); /* expired: not listed */
    EXPECT(":5\r\n", ks_dbsize_shard, "DBSIZE");

    rep.nelem = 0;
    run(ks_keys_shard, "KEYS", "user:?", NULL);
    cr_assert_eq(rep.nelem, 2);
    cr_assert(strstr(res, "$6\r\nuser:1\r\n") && strstr(res, "$6\r\nuser:2\r\n"), "%s", res);
    cr_assert_eq(res_len, 2 * strlen("$6\r\nuser:1\r\n"));

    rep.nelem = 0;
    run(ks_keys_shard, "KEYS", "*", NULL);
    cr_assert_eq(rep.nelem, 4);

    rep.nelem = 0;
    run(ks_keys_shard, "KEYS", "[a-b]*", NULL);
    cr_assert_eq(rep.nelem, 1);
    cr_assert_str_eq(res, "$5\r\nadmin\r\n");

    rep.nelem = 0;
    run(ks_keys_shard, "KEYS", "USER*", NULL); /* case-sensitive */
    cr_assert_eq(rep.nelem, 0);
    cr_assert_eq(res_len, 0);
    cr_assert_eq(nchanges, 0, "KEYS changes nothing");
}

Test(keyspace, randomkey)
{
    EXPECT("$-1\r\n", ks_randomkey_shard, "RANDOMKEY", "12345");
    for (int i = 0; i < 10; i++) {
        char k[16];
        snprintf(k, sizeof(k), "dead%d", i);
        put_raw(k, "v", NOW - 10);
    }
    /* only expired keys: nil, and the ones drawn are removed */
    EXPECT("$-1\r\n", ks_randomkey_shard, "RANDOMKEY", "777");
    cr_assert_gt(stats.expired_keys, 0);
    cr_assert_eq(shard_count(sh), 10 - stats.expired_keys);
    cr_assert_eq(nchanges, (int)stats.expired_keys);
    cr_assert_eq(changes[0].what, KS_CHANGE_DEL);

    put_raw("live", "v", KV_NO_EXPIRE);
    for (int i = 0; i < 20; i++) {
        char rnd[24];
        snprintf(rnd, sizeof(rnd), "%d", i * 7919);
        /* 64 tries cannot all miss the live key among at most 11 */
        EXPECT("$4\r\nlive\r\n", ks_randomkey_shard, "RANDOMKEY", rnd);
    }
}

/* Build one multi-shard keyspace: nshards = 1 << bits shards and a context for each. */
struct multi {
    unsigned bits;
    struct shard *s[16];
    struct ks_ctx c[16];
};

static void multi_init(struct multi *m, unsigned bits)
{
    m->bits = bits;
    for (uint32_t i = 0; i < (1u << bits); i++) {
        m->s[i] = shard_new();
        m->c[i] = ctx;
        m->c[i].shard = m->s[i];
        m->c[i].shard_idx = i;
        m->c[i].shard_bits = bits;
        m->c[i].on_change = NULL;
    }
}

static void multi_free(struct multi *m)
{
    for (uint32_t i = 0; i < (1u << m->bits); i++)
        shard_free(m->s[i]);
}

static void multi_put(struct multi *m, const char *k, const char *v, int64_t expire)
{
    uint64_t h = kv_hash(k, strlen(k));
    uint32_t i = kv_shard_of(h, m->bits);
    shard_put(m->s[i], h, kv_entry_new(k, strlen(k), v, strlen(v), expire));
}

static void multi_digest(struct multi *m, uint8_t d[KS_DIGEST_LEN])
{
    memset(d, 0, KS_DIGEST_LEN);
    for (uint32_t i = 0; i < (1u << m->bits); i++) {
        out.len = 0;
        ks_digest_shard(&m->c[i], 1, (struct arg[]){{"DEBUG", 5}});
        cr_assert_eq(out.len, KS_DIGEST_LEN);
        ks_digest_combine(d, (const uint8_t *)out.p);
    }
}

#define NKEYS 300

static void key_name(char *k, size_t cap, int i)
{
    snprintf(k, cap, "key:%d", i);
}

Test(keyspace, digest_independent_of_order_and_split)
{
    static const uint8_t zero[KS_DIGEST_LEN];
    uint8_t d1[KS_DIGEST_LEN], d2[KS_DIGEST_LEN], d3[KS_DIGEST_LEN];
    char k[32], v[32];

    struct multi one, four, sixteen;
    multi_init(&one, 0);
    multi_init(&four, 2);
    multi_init(&sixteen, 4);
    multi_digest(&one, d1);
    cr_assert(memcmp(d1, zero, KS_DIGEST_LEN) == 0, "empty digest is all zeros");

    for (int i = 0; i < NKEYS; i++) {
        key_name(k, sizeof(k), i);
        snprintf(v, sizeof(v), "val%d", i * 3);
        multi_put(&one, k, v, i % 3 ? KV_NO_EXPIRE : NOW + i);
    }
    for (int i = NKEYS - 1; i >= 0; i--) {
        key_name(k, sizeof(k), i);
        snprintf(v, sizeof(v), "val%d", i * 3);
        multi_put(&four, k, v, i % 3 ? KV_NO_EXPIRE : NOW + i);
    }
    for (int j = 0; j < NKEYS; j++) {
        int i = (j * 7) % NKEYS; /* 7 is coprime with NKEYS: a permutation */
        key_name(k, sizeof(k), i);
        snprintf(v, sizeof(v), "val%d", i * 3);
        multi_put(&sixteen, k, v, i % 3 ? KV_NO_EXPIRE : NOW + i);
    }
    /* an expired key is not part of the dataset */
    multi_put(&four, "gone", "x", NOW - 1);

    multi_digest(&one, d1);
    multi_digest(&four, d2);
    multi_digest(&sixteen, d3);
    cr_assert(memcmp(d1, zero, KS_DIGEST_LEN) != 0);
    cr_assert(memcmp(d1, d2, KS_DIGEST_LEN) == 0, "1 shard vs 4 shards");
    cr_assert(memcmp(d1, d3, KS_DIGEST_LEN) == 0, "1 shard vs 16 shards");

    /* a different value, deadline or key changes it */
    multi_put(&four, "key:5", "other", KV_NO_EXPIRE);
    multi_digest(&four, d2);
    cr_assert(memcmp(d1, d2, KS_DIGEST_LEN) != 0, "value");
    multi_put(&four, "key:5", "val15", KV_NO_EXPIRE);
    multi_digest(&four, d2);
    cr_assert(memcmp(d1, d2, KS_DIGEST_LEN) == 0, "restored");
    multi_put(&four, "key:6", "val18", NOW + 7);
    multi_digest(&four, d2);
    cr_assert(memcmp(d1, d2, KS_DIGEST_LEN) != 0, "deadline");
    /* the key/value boundary matters: ("ab","c") is not ("a","bc") */
    struct multi x, y;
    multi_init(&x, 0);
    multi_init(&y, 0);
    multi_put(&x, "ab", "c", KV_NO_EXPIRE);
    multi_put(&y, "a", "bc", KV_NO_EXPIRE);
    multi_digest(&x, d2);
    multi_digest(&y, d3);
    cr_assert(memcmp(d2, d3, KS_DIGEST_LEN) != 0, "boundary");

    multi_free(&one);
    multi_free(&four);
    multi_free(&sixteen);
    multi_free(&x);
    multi_free(&y);
}

/* Parse a RESP SCAN reply in res: the cursor, and each key passed to seen(). */
static unsigned long long parse_scan(void (*seen)(void *, const char *, size_t), void *arg)
{
    const char *p = res;
    cr_assert(strncmp(p, "*2\r\n$", 5) == 0, "scan reply: %s", res);
    p += 5;
    long n = strtol(p, (char **)&p, 10);
    p += 2;
    char cur[32];
    cr_assert_lt(n, (long)sizeof(cur));
    memcpy(cur, p, (size_t)n);
    cur[n] = '\0';
    p += n + 2;
    cr_assert_eq(*p, '*');
    long nkeys = strtol(p + 1, (char **)&p, 10);
    p += 2;
    for (long i = 0; i < nkeys; i++) {
        cr_assert_eq(*p, '$');
        long len = strtol(p + 1, (char **)&p, 10);
        p += 2;
        seen(arg, p, (size_t)len);
        p += len + 2;
    }
    cr_assert_eq((size_t)(p - res), res_len, "trailing bytes in the scan reply");
    return strtoull(cur, NULL, 10);
}

#define SCAN_KEYS 5000

static void mark_seen(void *arg, const char *k, size_t len)
{
    int *count = arg;
    char tmp[32];
    cr_assert_lt(len, sizeof(tmp));
    memcpy(tmp, k, len);
    tmp[len] = '\0';
    int i;
    if (sscanf(tmp, "key:%d", &i) == 1 && i >= 0 && i < SCAN_KEYS)
        count[i]++;
    else
        count[SCAN_KEYS]++; /* a key not from the original set */
}

/* Full SCAN iterations over 1 and over 4 shards: every key is returned at least once, and
 * keys added during the iteration (forcing the table to grow) do not hide any. */
static void scan_all(struct multi *m, const char *count, bool grow)
{
    static int seen[SCAN_KEYS + 1];
    memset(seen, 0, sizeof(seen));
    char k[32];
    for (int i = 0; i < SCAN_KEYS; i++) {
        key_name(k, sizeof(k), i);
        multi_put(m, k, "v", KV_NO_EXPIRE);
    }
    unsigned long long cursor = 0;
    int calls = 0, added = 0;
    uint64_t mask = (1ull << m->bits) - 1;
    do {
        char cur[32];
        snprintf(cur, sizeof(cur), "%llu", cursor);
        uint32_t s = (uint32_t)(cursor & mask);
        struct arg argv[] = {{"SCAN", 4}, {cur, strlen(cur)}, {"COUNT", 5}, {count, strlen(count)}};
        out.len = 0;
        ks_scan_shard(&m->c[s], 4, argv);
        res_len = out.len;
        cr_assert_lt(res_len, sizeof(res));
        if (res_len)
            memcpy(res, out.p, res_len);
        res[res_len] = '\0';
        cursor = parse_scan(mark_seen, seen);
        if (grow && calls % 3 == 0 && added < 4000) {
            for (int j = 0; j < 200; j++, added++) {
                snprintf(k, sizeof(k), "extra:%d", added);
                multi_put(m, k, "v", KV_NO_EXPIRE);
            }
        }
        cr_assert_lt(++calls, 100000, "SCAN does not terminate");
    } while (cursor != 0);
    for (int i = 0; i < SCAN_KEYS; i++)
        cr_assert_geq(seen[i], 1, "key:%d never returned", i);
}

Test(keyspace, scan_completeness_one_shard)
{
    struct multi m;
    multi_init(&m, 0);
    scan_all(&m, "7", false);
    multi_free(&m);
}

Test(keyspace, scan_completeness_four_shards_growing)
{
    struct multi m;
    multi_init(&m, 2);
    scan_all(&m, "10", true);
    multi_free(&m);
}

Test(keyspace, scan_cursor_moves_to_next_shard)
{
    struct multi m;
    multi_init(&m, 2);
    multi_put(&m, "a", "v", KV_NO_EXPIRE);
    /* an empty or small shard finishes in one call: the cursor names the next shard */
    for (uint32_t s = 0; s < 4; s++) {
        char cur[8];
        snprintf(cur, sizeof(cur), "%u", s);
        struct arg argv[] = {{"SCAN", 4}, {cur, strlen(cur)}, {"COUNT", 5}, {"1000", 4}};
        out.len = 0;
        ks_scan_shard(&m.c[s], 4, argv);
        char want[16];
        snprintf(want, sizeof(want), "%u", s == 3 ? 0 : s + 1);
        char head[32];
        snprintf(head, sizeof(head), "*2\r\n$%zu\r\n%s\r\n", strlen(want), want);
        cr_assert(out.len >= strlen(head) && memcmp(out.p, head, strlen(head)) == 0,
                  "shard %u: %.*s", s, (int)out.len, out.p);
    }
    multi_free(&m);
}

Test(keyspace, scan_options_and_errors)
{
    put_raw("user:1", "v", KV_NO_EXPIRE);
    put_raw("user:2", "v", KV_NO_EXPIRE);
    put_raw("other", "v", KV_NO_EXPIRE);
    put_raw("user:old", "v", NOW - 1);
    EXPECT("*2\r\n$1\r\n0\r\n*1\r\n$5\r\nother\r\n", ks_scan_shard, "SCAN", "0", "MATCH", "o*");
    EXPECT("*2\r\n$1\r\n0\r\n*0\r\n", ks_scan_shard, "SCAN", "0", "TYPE", "list");
    EXPECT("*2\r\n$1\r\n0\r\n*0\r\n", ks_scan_shard, "SCAN", "0", "type", "nosuchtype");
    run(ks_scan_shard, "SCAN", "0", "type", "STRING", "match", "user:*", "count", "100", NULL);
    cr_assert(strncmp(res, "*2\r\n$1\r\n0\r\n*2\r\n", 15) == 0, "%s", res);
    cr_assert(strstr(res, "user:1") && strstr(res, "user:2") && !strstr(res, "user:old"));

    EXPECT("-ERR invalid cursor\r\n", ks_scan_shard, "SCAN", "abc");
    EXPECT("-ERR invalid cursor\r\n", ks_scan_shard, "SCAN", "18446744073709551616");
    EXPECT("-ERR invalid cursor\r\n", ks_scan_shard, "SCAN", "abc", "COUNT", "0");
    EXPECT("-ERR syntax error\r\n", ks_scan_shard, "SCAN", "0", "COUNT", "0");
    EXPECT("-ERR syntax error\r\n", ks_scan_shard, "SCAN", "0", "COUNT", "-1");
    EXPECT("-ERR value is not an integer or out of range\r\n", ks_scan_shard, "SCAN", "0", "COUNT",
           "x");
    EXPECT("-ERR syntax error\r\n", ks_scan_shard, "SCAN", "0", "COUNT");
    EXPECT("-ERR syntax error\r\n", ks_scan_shard, "SCAN", "0", "FOO", "bar");
    EXPECT("-ERR syntax error\r\n", ks_scan_shard, "SCAN", "0", "MATCH");
    cr_assert_eq(nchanges, 0);
}

Test(keyspace, scan_line_protocol)
{
    reply_init(&rep, &out, PROTO_LINE, 0);
    EXPECT("0\n(empty array)\n", ks_scan_shard, "SCAN", "0");
    put_raw("k", "v", KV_NO_EXPIRE);
    EXPECT("0\nk\n", ks_scan_shard, "SCAN", "0");
}

/* A replica reads an expired key as absent but leaves it for its master's DEL record. */
Test(keyspace, replica_keeps_expired_keys_until_del)
{
    struct shard *sh = shard_new();
    struct buf b = {0};
    struct reply r;
    reply_init(&r, &b, PROTO_RESP, 0);
    struct ks_ctx ctx = {.shard = sh, .now_ms = 1000, .r = &r, .keep_expired = true};
    ctx.hash = kv_hash("k", 1);
    shard_put(sh, ctx.hash, kv_entry_new("k", 1, "v", 1, 500));
    struct arg get[] = {{"GET", 3}, {"k", 1}};
    ks_get(&ctx, 2, get);
    cr_assert_eq(b.len, 5);
    cr_assert(memcmp(b.p, "$-1\r\n", 5) == 0);
    cr_assert_not_null(shard_get(sh, ctx.hash, "k", 1), "still stored on the replica");
    ctx.keep_expired = false;
    b.len = 0;
    ks_get(&ctx, 2, get);
    cr_assert_null(shard_get(sh, ctx.hash, "k", 1), "a master removes it");
    buf_free(&b);
    shard_free(sh);
}

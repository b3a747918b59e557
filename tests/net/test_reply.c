/*
 * Tests for net/reply: the exact bytes of every encoder, in RESP2 (as Redis 7.0.15 sends
 * them, checked against a real redis-server) and in the line protocol with both line endings.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <limits.h>
#include <stdio.h>

#include "core/buf.h"
#include "net/proto.h"
#include "net/reply.h"

#define S(s) s, sizeof(s) - 1

/* The three ways a reply can be encoded. */
enum { RESP, LF, CRLF, NMODES };

struct out {
    struct buf b;
    struct reply r;
};

static void out_init(struct out *o, int mode)
{
    memset(&o->b, 0, sizeof(o->b));
    reply_init(&o->r, &o->b, mode == RESP ? PROTO_RESP : PROTO_LINE, mode == CRLF);
}

static void expect(struct out *o, const char *want, size_t n, const char *what)
{
    cr_assert_eq(o->b.len, n, "%s: %zu bytes, want %zu: \"%.*s\"", what, o->b.len, n, (int)o->b.len,
                 o->b.p ? o->b.p : "");
    cr_assert(n == 0 || memcmp(o->b.p, want, n) == 0, "%s: got \"%.*s\" want \"%.*s\"", what,
              (int)o->b.len, o->b.p, (int)n, want);
    buf_free(&o->b);
}

/* Run one call in each mode and compare with the three expected encodings. */
#define CHECK3(call, resp, lf, crlf)                                                               \
    do {                                                                                           \
        static const char w_[NMODES][512] = {resp, lf, crlf};                                      \
        static const size_t n_[NMODES] = {sizeof(resp) - 1, sizeof(lf) - 1, sizeof(crlf) - 1};     \
        for (int m_ = 0; m_ < NMODES; m_++) {                                                      \
            struct out o_;                                                                         \
            out_init(&o_, m_);                                                                     \
            struct reply *r = &o_.r;                                                               \
            call;                                                                                  \
            expect(&o_, w_[m_], n_[m_], #call);                                                    \
        }                                                                                          \
    } while (0)

Test(reply, status)
{
    CHECK3(reply_status(r, "PONG"), "+PONG\r\n", "PONG\n", "PONG\r\n");
    CHECK3(reply_status_len(r, "QUEUEDxx", 6), "+QUEUED\r\n", "QUEUED\n", "QUEUED\r\n");
    CHECK3(reply_ok(r), "+OK\r\n", "OK\n", "OK\r\n");
    CHECK3(reply_status(r, ""), "+\r\n", "\n", "\r\n");
}

Test(reply, error)
{
    CHECK3(reply_error(r, RK_ERR_SYNTAX), "-ERR syntax error\r\n", "ERR syntax error\n",
           "ERR syntax error\r\n");
    CHECK3(reply_error(r, RK_ERR_WRONGTYPE),
           "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
           "WRONGTYPE Operation against a key holding the wrong kind of value\n",
           "WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    /* An error is one line: \r and \n become spaces, in both protocols. */
    CHECK3(reply_error(r, "ERR a\r\nb\nc\rd"), "-ERR a  b c d\r\n", "ERR a  b c d\n",
           "ERR a  b c d\r\n");
    CHECK3(reply_errorf(r, "ERR %s is %d", "x\ny", 42), "-ERR x y is 42\r\n", "ERR x y is 42\n",
           "ERR x y is 42\r\n");
}

Test(reply, errorf_long)
{
    char arg[1000];
    memset(arg, 'z', sizeof(arg) - 1);
    arg[sizeof(arg) - 1] = '\0';
    struct out o;
    out_init(&o, RESP);
    reply_errorf(&o.r, "ERR <%s>", arg);
    cr_assert_eq(o.b.len, 1 + 5 + 999 + 1 + 2);
    cr_assert(memcmp(o.b.p, "-ERR <z", 7) == 0);
    cr_assert(memcmp(o.b.p + o.b.len - 4, "z>\r\n", 4) == 0);
    buf_free(&o.b);
}

Test(reply, integers)
{
    CHECK3(reply_int(r, 0), ":0\r\n", "0\n", "0\r\n");
    CHECK3(reply_int(r, 42), ":42\r\n", "42\n", "42\r\n");
    CHECK3(reply_int(r, -1), ":-1\r\n", "-1\n", "-1\r\n");
    CHECK3(reply_int(r, LLONG_MAX), ":9223372036854775807\r\n", "9223372036854775807\n",
           "9223372036854775807\r\n");
    CHECK3(reply_int(r, LLONG_MIN), ":-9223372036854775808\r\n", "-9223372036854775808\n",
           "-9223372036854775808\r\n");
}

Test(reply, int_records_ival)
{
    struct out o;
    out_init(&o, RESP);
    reply_int(&o.r, 17);
    cr_assert_eq(o.r.ival, 17);
    reply_int(&o.r, -3);
    cr_assert_eq(o.r.ival, -3);
    reply_array(&o.r, 5);
    cr_assert_eq(o.r.nelem, 0); /* nelem belongs to the callers */
    buf_free(&o.b);
}

Test(reply, bulk)
{
    CHECK3(reply_bulk(r, "foo", 3), "$3\r\nfoo\r\n", "foo\n", "foo\r\n");
    CHECK3(reply_bulk(r, "", 0), "$0\r\n\r\n", "\n", "\r\n");
    CHECK3(reply_bulk(r, "a\0b\r\nc", 6), "$6\r\na\0b\r\nc\r\n", "a\0b\r\nc\n", "a\0b\r\nc\r\n");
    CHECK3(reply_bulk_cstr(r, "hello"), "$5\r\nhello\r\n", "hello\n", "hello\r\n");
    CHECK3(reply_bulk_ll(r, -1234567890123LL), "$14\r\n-1234567890123\r\n", "-1234567890123\n",
           "-1234567890123\r\n");
    CHECK3(reply_bulk_ll(r, 0), "$1\r\n0\r\n", "0\n", "0\r\n");
}

Test(reply, bulk_big)
{
    size_t n = 100000;
    char *v = rk_malloc(n);
    for (size_t i = 0; i < n; i++)
        v[i] = (char)i;
    struct out o;
    out_init(&o, RESP);
    reply_bulk(&o.r, v, n);
    cr_assert_eq(o.b.len, 9 + n + 2);
    cr_assert(memcmp(o.b.p, "$100000\r\n", 9) == 0);
    cr_assert(memcmp(o.b.p + 9, v, n) == 0);
    cr_assert(memcmp(o.b.p + 9 + n, "\r\n", 2) == 0);
    buf_free(&o.b);
    rk_free(v);
}

Test(reply, nil_and_arrays)
{
    CHECK3(reply_nil(r), "$-1\r\n", "(nil)\n", "(nil)\r\n");
    CHECK3(reply_nil_array(r), "*-1\r\n", "(nil)\n", "(nil)\r\n");
    CHECK3(reply_array(r, 0), "*0\r\n", "(empty array)\n", "(empty array)\r\n");
    CHECK3(reply_array(r, 3), "*3\r\n", "", "");
    CHECK3(reply_array(r, 1048576), "*1048576\r\n", "", "");
    CHECK3((reply_array(r, 2), reply_bulk(r, "a", 1), reply_nil(r)), "*2\r\n$1\r\na\r\n$-1\r\n",
           "a\n(nil)\n", "a\r\n(nil)\r\n");
}

Test(reply, appends)
{
    struct out o;
    out_init(&o, RESP);
    buf_append(&o.b, "xy", 2);
    reply_ok(&o.r);
    reply_int(&o.r, 5);
    reply_bulk(&o.r, "v", 1);
    expect(&o, S("xy+OK\r\n:5\r\n$1\r\nv\r\n"), "appends after existing bytes");
}

Test(reply, verbatim)
{
    CHECK3(reply_verbatim(r, "# Server\r\nx:1\r\n", 15), "$15\r\n# Server\r\nx:1\r\n\r\n",
           "# Server\r\nx:1\r\n", "# Server\r\nx:1\r\n");
    CHECK3(reply_verbatim(r, "id=1 name=\nid=2", 15), "$15\r\nid=1 name=\nid=2\r\n",
           "id=1 name=\nid=2\n", "id=1 name=\nid=2\r\n");
    CHECK3(reply_verbatim(r, "", 0), "$0\r\n\r\n", "\n", "\r\n");
}

Test(reply, arity)
{
    CHECK3(reply_error_arity(r, "set"), "-ERR wrong number of arguments for 'set' command\r\n",
           "ERR wrong number of arguments for 'set' command\n",
           "ERR wrong number of arguments for 'set' command\r\n");
    CHECK3(reply_error_arity(r, "config|get"),
           "-ERR wrong number of arguments for 'config|get' command\r\n",
           "ERR wrong number of arguments for 'config|get' command\n",
           "ERR wrong number of arguments for 'config|get' command\r\n");
}

#define ARG(s)                                                                                     \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }

Test(reply, unknown_command)
{
    const struct arg a1[] = {ARG("foo"), ARG("a"), ARG("b")};
    CHECK3(reply_error_unknown(r, a1, 3),
           "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
           "ERR unknown command 'foo'\n", "ERR unknown command 'foo'\r\n");

    const struct arg a2[] = {ARG("FooBar")};
    CHECK3(reply_error_unknown(r, a2, 1),
           "-ERR unknown command 'FooBar', with args beginning with: \r\n",
           "ERR unknown command 'FooBar'\n", "ERR unknown command 'FooBar'\r\n");

    /* As Redis: \r \n become spaces, and a NUL ends what is shown of a word. */
    const struct arg a3[] = {ARG("fo\r\no"), ARG("a\0b"), ARG("c\r\nd")};
    CHECK3(reply_error_unknown(r, a3, 3),
           "-ERR unknown command 'fo  o', with args beginning with: 'a' 'c  d' \r\n",
           "ERR unknown command 'fo  o'\n", "ERR unknown command 'fo  o'\r\n");
}

/* Redis 7.0 shows at most 128 bytes of the name, and lists arguments while the list is under
 * 128 bytes, each cut to what is left of those 128.  The expectations were taken from
 * redis-server 7.0.15. */
Test(reply, unknown_command_truncation)
{
    char x200[200], a[200], b[200];
    memset(x200, 'x', sizeof(x200));
    memset(a, 'a', sizeof(a));
    memset(b, 'b', sizeof(b));
    char want[1024];
    struct out o;

    /* name of 200 bytes: 128 shown */
    struct arg v1[] = {{x200, 200}, ARG("a")};
    out_init(&o, RESP);
    reply_error_unknown(&o.r, v1, 2);
    int n = snprintf(want, sizeof(want),
                     "-ERR unknown command '%.128s', with args beginning with: 'a' \r\n", x200);
    expect(&o, want, (size_t)n, "long name");

    /* first arg of 200 bytes: 128 of it, then the list is full */
    struct arg v2[] = {ARG("foo"), {a, 200}, ARG("b")};
    out_init(&o, RESP);
    reply_error_unknown(&o.r, v2, 3);
    n = snprintf(want, sizeof(want),
                 "-ERR unknown command 'foo', with args beginning with: '%.128s' \r\n", a);
    expect(&o, want, (size_t)n, "long arg");

    /* 100 + 3 = 103 shown, so the next gets 25 bytes, and then the list is full */
    struct arg v3[] = {ARG("foo"), {a, 100}, {b, 100}, ARG("c")};
    out_init(&o, RESP);
    reply_error_unknown(&o.r, v3, 4);
    n = snprintf(want, sizeof(want),
                 "-ERR unknown command 'foo', with args beginning with: '%.100s' '%.25s' \r\n", a,
                 b);
    expect(&o, want, (size_t)n, "two args");

    /* 125 + 3 = 128: full, nothing more */
    struct arg v4[] = {ARG("foo"), {a, 125}, {b, 100}, ARG("c")};
    out_init(&o, RESP);
    reply_error_unknown(&o.r, v4, 4);
    n = snprintf(want, sizeof(want),
                 "-ERR unknown command 'foo', with args beginning with: '%.125s' \r\n", a);
    expect(&o, want, (size_t)n, "exactly full");

    /* 124 + 3 = 127: one more byte of the next */
    struct arg v5[] = {ARG("foo"), {a, 124}, {b, 100}, ARG("c")};
    out_init(&o, RESP);
    reply_error_unknown(&o.r, v5, 4);
    n = snprintf(want, sizeof(want),
                 "-ERR unknown command 'foo', with args beginning with: '%.124s' 'b' \r\n", a);
    expect(&o, want, (size_t)n, "one byte left");

    /* line protocol: the name only, cut at 128 bytes too */
    out_init(&o, LF);
    reply_error_unknown(&o.r, v1, 2);
    n = snprintf(want, sizeof(want), "ERR unknown command '%.128s'\n", x200);
    expect(&o, want, (size_t)n, "line long name");
}

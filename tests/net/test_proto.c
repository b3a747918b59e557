/*
 * Tests for net/proto: both request forms, Redis's leniencies and errors, the limits, and the
 * incremental contract.
 *
 * The split-point tests take each sample stream (one or more requests) and check that the
 * parser gives the same requests however the bytes arrive: every prefix of each request
 * (PROTO_NEED until the last byte, then the request), and every cut of the whole stream in
 * two.  Each buffer handed to the parser ends exactly where a PROT_NONE guard page begins, so
 * reading one byte past the data crashes the test; the buffer also moves between calls, as a
 * realloc'd receive buffer does.  A second prefix pass keeps the buffer in place and fills the
 * bytes past the prefix with '\r' and '\n', so a parser that peeked past len would misparse.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/util.h"
#include "net/proto.h"
#include "net/reply.h"

static const struct proto_limits lim = {
    .max_bulk = 512u << 20,
    .max_inline = 64u << 10,
    .max_mbulk = 1024 * 1024,
};

/* ---- guard-page buffers ------------------------------------------------------------------ */

struct guard {
    char *map;
    size_t maplen;
    char *end; /* first byte of the PROT_NONE page */
};

static void guard_init(struct guard *g, size_t cap)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (cap + page - 1) / page + 1;
    g->maplen = (pages + 1) * page;
    g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g->map, MAP_FAILED);
    g->end = g->map + pages * page;
    cr_assert_eq(mprotect(g->end, page, PROT_NONE), 0);
}

static void guard_free(struct guard *g)
{
    munmap(g->map, g->maplen);
}

/* Copy n bytes so that they end at the guard page; returns where they start. */
static const char *guard_put(struct guard *g, const char *d, size_t n)
{
    memcpy(g->end - n, d, n);
    return g->end - n;
}

/* ---- samples ----------------------------------------------------------------------------- */

#define A(s)                                                                                       \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
#define S(s) s, sizeof(s) - 1
#define MAXARGS 12

struct exp_req {
    int proto, crlf;
    size_t used;
    int argc;
    struct arg argv[MAXARGS];
};

struct sample {
    const char *name;
    const char *data;
    size_t len;
    int nreq;
    struct exp_req req[6];
};

static const struct sample samples[] = {
    {"resp set",
     S("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"),
     1,
     {{PROTO_RESP, 1, 33, 3, {A("SET"), A("key"), A("value")}}}},
    {"resp pipeline with empty bulk",
     S("*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$"
       "0\r\n\r\n"),
     3,
     {{PROTO_RESP, 1, 14, 1, {A("PING")}},
      {PROTO_RESP, 1, 20, 2, {A("GET"), A("k")}},
      {PROTO_RESP, 1, 26, 3, {A("SET"), A("k"), A("")}}}},
    {"resp multi-digit lengths",
     S("*2\r\n$12\r\nhello world!\r\n$10\r\n0123456789\r\n"
       "*11\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n$1\r\ng\r\n"
       "$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n$0\r\n\r\n"),
     2,
     {{PROTO_RESP, 1, 40, 2, {A("hello world!"), A("0123456789")}},
      {PROTO_RESP,
       1,
       81,
       11,
       {A("a"), A("b"), A("c"), A("d"), A("e"), A("f"), A("g"), A("h"), A("i"), A("j"), A("")}}}},
    {"resp binary bulk",
     S("*2\r\n$3\r\nGET\r\n$9\r\na\0b\r\n*$3\n\r\n"),
     1,
     {{PROTO_RESP, 1, 28, 2, {A("GET"), A("a\0b\r\n*$3\n")}}}},
    {"resp count lines as lenient as Redis",
     S("*1\rX$4\rXPINGXY"),
     1,
     {{PROTO_RESP, 1, 14, 1, {A("PING")}}}},
    {"resp empty requests",
     S("*0\r\n*-1\r\n*1\r\n$1\r\nx\r\n"),
     3,
     {{PROTO_RESP, 1, 4, 0, {{0}}},
      {PROTO_RESP, 1, 5, 0, {{0}}},
      {PROTO_RESP, 1, 11, 1, {A("x")}}}},
    {"line crlf", S("SET k v\r\n"), 1, {{PROTO_LINE, 1, 9, 3, {A("SET"), A("k"), A("v")}}}},
    {"line pipeline lf and crlf",
     S("PING\nGET  k\t\r\nSET \"a\\x41\\n\\\"q\" 'it\\'s' \"\"\n"),
     3,
     {{PROTO_LINE, 0, 5, 1, {A("PING")}},
      {PROTO_LINE, 1, 9, 2, {A("GET"), A("k")}},
      {PROTO_LINE, 0, 28, 4, {A("SET"), A("aA\n\"q"), A("it's"), A("")}}}},
    {"line escapes",
     S("SET \"hello world\" \"\\t\\r\\n\\b\\a\\\\\\\"\\xff\\x4A\\q\\x4\" 'a\\b\"c'\r\n"),
     1,
     {{PROTO_LINE,
       1,
       57,
       4,
       {A("SET"), A("hello world"),
        A("\t\r\n\b\a\\\"\xff"
          "Jqx4"),
        A("a\\b\"c")}}}},
    {"line quote inside a word, blanks",
     S("\v a\"b c\"\f d\x01\vq \r\n"),
     1,
     {{PROTO_LINE, 1, 17, 2, {A("ab c"), A("d\x01\vq")}}}},
    {"blank lines between requests",
     S("\r\n  \t \n*1\r\n$4\r\nPING\r\nPING\n"),
     4,
     {{PROTO_LINE, 1, 2, 0, {{0}}},
      {PROTO_LINE, 0, 5, 0, {{0}}},
      {PROTO_RESP, 1, 14, 1, {A("PING")}},
      {PROTO_LINE, 0, 5, 1, {A("PING")}}}},
    {"line with NUL and inner cr",
     S("a\0b c\rd\n"),
     1,
     {{PROTO_LINE, 0, 8, 3, {A("a\0b"), A("c"), A("d")}}}},
};

static void check_req(const struct sample *s, int i, const struct req *r, ssize_t used,
                      const char *how, size_t at)
{
    const struct exp_req e = s->req[i];
    cr_assert_eq(used, (ssize_t)e.used, "%s: %s at %zu: request %d used %zd, want %zu", s->name,
                 how, at, i, used, e.used);
    cr_assert_eq(r->argc, e.argc, "%s: %s at %zu: request %d argc %d, want %d", s->name, how, at, i,
                 r->argc, e.argc);
    cr_assert_eq(r->proto, e.proto, "%s: %s at %zu: request %d proto", s->name, how, at, i);
    cr_assert_eq(r->crlf, e.crlf, "%s: %s at %zu: request %d crlf", s->name, how, at, i);
    for (int j = 0; j < e.argc; j++) {
        cr_assert_eq(r->argv[j].len, e.argv[j].len, "%s: %s at %zu: req %d arg %d len %zu", s->name,
                     how, at, i, j, r->argv[j].len);
        cr_assert(memcmp(r->argv[j].p, e.argv[j].p, e.argv[j].len) == 0,
                  "%s: %s at %zu: req %d arg %d bytes differ", s->name, how, at, i, j);
    }
}

/* Offset of request i within a sample. */
static size_t req_start(const struct sample *s, int i)
{
    size_t off = 0;
    for (int k = 0; k < i; k++)
        off += s->req[k].used;
    return off;
}

Test(proto, samples_are_consistent)
{
    for (size_t k = 0; k < RK_ARRAY_LEN(samples); k++) {
        const struct sample *s = &samples[k];
        cr_assert_eq(req_start(s, s->nreq), s->len, "%s: request lengths add up", s->name);
    }
}

Test(proto, one_shot)
{
    struct guard g;
    guard_init(&g, 4096);
    for (size_t k = 0; k < RK_ARRAY_LEN(samples); k++) {
        const struct sample *s = &samples[k];
        struct proto_state st;
        struct req r = {0};
        proto_state_init(&st);
        size_t off = 0;
        for (int i = 0; i < s->nreq; i++) {
            const char *b = guard_put(&g, s->data + off, s->len - off);
            ssize_t n = proto_parse(&st, b, s->len - off, &lim, &r);
            check_req(s, i, &r, n, "one shot", off);
            off += (size_t)n;
        }
        const char *b = guard_put(&g, "", 0);
        cr_assert_eq(proto_parse(&st, b, 0, &lim, &r), PROTO_NEED);
        proto_state_free(&st);
        req_free(&r);
    }
    guard_free(&g);
}

Test(proto, every_prefix_moving_buffer)
{
    struct guard g;
    guard_init(&g, 4096);
    for (size_t k = 0; k < RK_ARRAY_LEN(samples); k++) {
        const struct sample *s = &samples[k];
        for (int i = 0; i < s->nreq; i++) {
            size_t off = req_start(s, i), rl = s->req[i].used;
            struct proto_state st;
            struct req r = {0};
            proto_state_init(&st);
            for (size_t p = 0; p < rl; p++) {
                const char *b = guard_put(&g, s->data + off, p);
                ssize_t n = proto_parse(&st, b, p, &lim, &r);
                cr_assert_eq(n, PROTO_NEED, "%s: request %d prefix %zu gave %zd", s->name, i, p, n);
            }
            const char *b = guard_put(&g, s->data + off, rl);
            check_req(s, i, &r, proto_parse(&st, b, rl, &lim, &r), "full prefix", rl);
            proto_state_free(&st);
            req_free(&r);
        }
    }
    guard_free(&g);
}

Test(proto, every_prefix_fixed_buffer_poisoned_tail)
{
    struct guard g;
    guard_init(&g, 4096);
    for (size_t k = 0; k < RK_ARRAY_LEN(samples); k++) {
        const struct sample *s = &samples[k];
        for (int i = 0; i < s->nreq; i++) {
            size_t off = req_start(s, i), rl = s->req[i].used;
            char *b = g.end - rl;
            struct proto_state st;
            struct req r = {0};
            memset(&st, 0, sizeof(st)); /* a zeroed state works like an initialised one */
            for (size_t p = 0; p < rl; p++) {
                memcpy(b, s->data + off, p);
                for (size_t q = p; q < rl; q++)
                    b[q] = (q & 1) ? '\n' : '\r';
                ssize_t n = proto_parse(&st, b, p, &lim, &r);
                cr_assert_eq(n, PROTO_NEED, "%s: request %d prefix %zu gave %zd", s->name, i, p, n);
            }
            memcpy(b, s->data + off, rl);
            check_req(s, i, &r, proto_parse(&st, b, rl, &lim, &r), "fixed prefix", rl);
            proto_state_free(&st);
            req_free(&r);
        }
    }
    guard_free(&g);
}

Test(proto, every_two_way_split)
{
    struct guard g;
    guard_init(&g, 4096);
    for (size_t k = 0; k < RK_ARRAY_LEN(samples); k++) {
        const struct sample *s = &samples[k];
        for (size_t cut = 1; cut < s->len; cut++) {
            struct proto_state st;
            struct req r = {0};
            proto_state_init(&st);
            size_t off = 0, have = cut;
            int i = 0;
            for (;;) {
                const char *b = guard_put(&g, s->data + off, have - off);
                ssize_t n = proto_parse(&st, b, have - off, &lim, &r);
                cr_assert_geq(n, 0, "%s: cut %zu: error %zd", s->name, cut, n);
                if (n == PROTO_NEED) {
                    if (have == s->len)
                        break;
                    have = s->len; /* the second half arrives */
                    continue;
                }
                cr_assert_lt(i, s->nreq, "%s: cut %zu: too many requests", s->name, cut);
                check_req(s, i, &r, n, "cut", cut);
                off += (size_t)n;
                i++;
            }
            cr_assert_eq(i, s->nreq, "%s: cut %zu: %d requests, want %d", s->name, cut, i, s->nreq);
            cr_assert_eq(off, s->len);
            proto_state_free(&st);
            req_free(&r);
        }
    }
    guard_free(&g);
}

/* ---- zero-copy --------------------------------------------------------------------------- */

static bool inside(const char *p, const char *b, size_t n)
{
    return p >= b && p <= b + n;
}

Test(proto, zero_copy)
{
    struct proto_state st;
    struct req r = {0};
    proto_state_init(&st);

    const char resp[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    cr_assert_eq(proto_parse(&st, resp, sizeof(resp) - 1, &lim, &r), 20);
    cr_assert_eq(r.argv[0].p, resp + 8);
    cr_assert_eq(r.argv[1].p, resp + 17);

    const char line[] = "SET \"hello world\" 'x' a\"b\" \"c\\n\"\n";
    size_t n = sizeof(line) - 1;
    cr_assert_eq(proto_parse(&st, line, n, &lim, &r), (ssize_t)n);
    cr_assert_eq(r.argc, 5);
    cr_assert_eq(r.argv[0].p, line);
    cr_assert_eq(r.argv[1].p, line + 5); /* inside the quotes, no copy */
    cr_assert_eq(r.argv[1].len, 11);
    cr_assert_eq(r.argv[2].p, line + 19);
    cr_assert_not(inside(r.argv[3].p, line, n)); /* "ab" is not a run of the input */
    cr_assert(memcmp(r.argv[3].p, "ab", 2) == 0);
    cr_assert_not(inside(r.argv[4].p, line, n));
    cr_assert(memcmp(r.argv[4].p, "c\n", 2) == 0);
    proto_state_free(&st);
    req_free(&r);
}

/* Many escaped words make the copy area grow (and move) while the line is split: every word
 * must still be right, since pointers are made only at the end. */
Test(proto, many_unescaped_words)
{
    char line[8192];
    size_t n = 0;
    for (int i = 0; i < 300; i++)
        n += (size_t)sprintf(line + n, "\"w\\x%02x%d\" ", i & 0xff, i);
    line[n++] = '\n';
    struct proto_state st;
    struct req r = {0};
    proto_state_init(&st);
    cr_assert_eq(proto_parse(&st, line, n, &lim, &r), (ssize_t)n);
    cr_assert_eq(r.argc, 300);
    for (int i = 0; i < 300; i++) {
        char want[16];
        int wl = sprintf(want, "w%c%d", (char)(i & 0xff), i);
        cr_assert_eq(r.argv[i].len, (size_t)wl, "word %d", i);
        cr_assert(memcmp(r.argv[i].p, want, (size_t)wl) == 0, "word %d", i);
    }
    proto_state_free(&st);
    req_free(&r);
}

/* ---- errors ------------------------------------------------------------------------------ */

struct err_case {
    const char *data;
    size_t len;
    ssize_t code;
    const char *msg;
};

static const struct err_case errs[] = {
    {S("*abc\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*-0\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*01\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*+1\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("* 1\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*1 \r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*1048577\r\n"), PROTO_ERR_MBULK_LEN, "Protocol error: invalid multibulk length"},
    {S("*99999999999999999999\r\n"), PROTO_ERR_MBULK_LEN,
     "Protocol error: invalid multibulk length"},
    {S("*-99999999999999999999\r\n"), PROTO_ERR_MBULK_LEN,
     "Protocol error: invalid multibulk length"},
    {S("*1\r\nx3\r\n"), PROTO_ERR_EXPECTED_DOLLAR, "Protocol error: expected '$', got 'x'"},
    {S("*2\r\n$1\r\na\r\n:1\r\n"), PROTO_ERR_EXPECTED_DOLLAR,
     "Protocol error: expected '$', got ':'"},
    {S("*1\r\n\r\n"), PROTO_ERR_EXPECTED_DOLLAR, "Protocol error: expected '$', got ' '"},
    {S("*1\r\n\n3\r\n"), PROTO_ERR_EXPECTED_DOLLAR, "Protocol error: expected '$', got ' '"},
    {S("*2\r\n$3\r\nfoobar\r\n"), PROTO_ERR_EXPECTED_DOLLAR,
     "Protocol error: expected '$', got 'r'"},
    {S("*1\r\n$-1\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("*1\r\n$\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("*1\r\n$01\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("*1\r\n$3x\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("*1\r\n$1\0\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("*1\r\n$536870913\r\n"), PROTO_ERR_BULK_LEN, "Protocol error: invalid bulk length"},
    {S("foo \"a\"b\r\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
    {S("foo 'a\r\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
    {S("foo \"a\\\"\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
    {S("foo \"a\\\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
    {S("'a'b\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
    {S("\"a\"\"b\"\n"), PROTO_ERR_QUOTES, "Protocol error: unbalanced quotes in request"},
};

/* Every prefix of a bad request is either incomplete or already the same error; the whole is
 * the error, with Redis's text. */
Test(proto, errors)
{
    struct guard g;
    guard_init(&g, 4096);
    for (size_t k = 0; k < RK_ARRAY_LEN(errs); k++) {
        const struct err_case *e = &errs[k];
        struct proto_state st;
        struct req r = {0};
        proto_state_init(&st);
        for (size_t p = 0; p < e->len; p++) {
            const char *b = guard_put(&g, e->data, p);
            ssize_t n = proto_parse(&st, b, p, &lim, &r);
            cr_assert(n == PROTO_NEED || n == e->code, "case %zu prefix %zu: %zd", k, p, n);
            if (n != PROTO_NEED)
                proto_state_init(&st);
        }
        const char *b = guard_put(&g, e->data, e->len);
        ssize_t n = proto_parse(&st, b, e->len, &lim, &r);
        cr_assert_eq(n, e->code, "case %zu: got %zd want %zd", k, n, e->code);
        char mb[64];
        cr_assert_str_eq(proto_strerror(n, &st, mb, sizeof(mb)), e->msg, "case %zu", k);
        proto_state_free(&st);
        req_free(&r);
    }
    guard_free(&g);
}

Test(proto, strerror_texts)
{
    struct proto_state st;
    char mb[64];
    proto_state_init(&st);
    cr_assert_str_eq(proto_strerror(PROTO_ERR_BIG_INLINE, &st, mb, sizeof(mb)),
                     "Protocol error: too big inline request");
    cr_assert_str_eq(proto_strerror(PROTO_ERR_BIG_MBULK, &st, mb, sizeof(mb)),
                     "Protocol error: too big mbulk count string");
    cr_assert_str_eq(proto_strerror(PROTO_ERR_BIG_BULK, &st, mb, sizeof(mb)),
                     "Protocol error: too big bulk count string");
    cr_assert_str_eq(proto_strerror(PROTO_ERR_QUOTES, &st, mb, sizeof(mb)),
                     "Protocol error: unbalanced quotes in request");
}

/* ---- limits ------------------------------------------------------------------------------ */

static ssize_t parse_once(const char *d, size_t n, const struct proto_limits *l,
                          struct proto_state *st, struct req *r)
{
    struct guard g;
    guard_init(&g, n);
    proto_state_init(st);
    ssize_t rc = proto_parse(st, guard_put(&g, d, n), n, l, r);
    guard_free(&g);
    return rc;
}

Test(proto, limit_inline)
{
    size_t max = lim.max_inline;
    char *d = rk_malloc(max + 4);
    struct proto_state st;
    struct req r = {0};

    memset(d, 'a', max + 4);
    cr_assert_eq(parse_once(d, max, &lim, &st, &r), PROTO_NEED);
    proto_state_free(&st);
    cr_assert_eq(parse_once(d, max + 1, &lim, &st, &r), PROTO_ERR_BIG_INLINE);
    proto_state_free(&st);

    d[max] = '\n'; /* a line of exactly max bytes */
    cr_assert_eq(parse_once(d, max + 1, &lim, &st, &r), (ssize_t)max + 1);
    cr_assert_eq(r.argc, 1);
    cr_assert_eq(r.argv[0].len, max);
    proto_state_free(&st);

    d[max - 1] = '\r'; /* the \r counts: max bytes before the \n */
    cr_assert_eq(parse_once(d, max + 1, &lim, &st, &r), (ssize_t)max + 1);
    cr_assert_eq(r.crlf, 1);
    cr_assert_eq(r.argv[0].len, max - 1);
    proto_state_free(&st);

    memset(d, 'a', max + 4);
    d[max + 1] = '\n'; /* one byte too long, newline present: the same error */
    cr_assert_eq(parse_once(d, max + 2, &lim, &st, &r), PROTO_ERR_BIG_INLINE);
    proto_state_free(&st);

    /* Fed one byte at a time, the error comes as soon as the line is too long. */
    proto_state_init(&st);
    memset(d, 'a', max + 4);
    for (size_t p = 1; p <= max; p++)
        cr_assert_eq(proto_parse(&st, d, p, &lim, &r), PROTO_NEED);
    cr_assert_eq(proto_parse(&st, d, max + 1, &lim, &r), PROTO_ERR_BIG_INLINE);
    proto_state_free(&st);
    req_free(&r);
    rk_free(d);
}

Test(proto, limit_count_lines)
{
    size_t max = lim.max_inline;
    char *d = rk_malloc(max + 16);
    struct proto_state st;
    struct req r = {0};

    /* "*" and max-1 digits, no \r yet: still waiting; one more byte: too big. */
    d[0] = '*';
    memset(d + 1, '1', max + 8);
    cr_assert_eq(parse_once(d, max, &lim, &st, &r), PROTO_NEED);
    proto_state_free(&st);
    cr_assert_eq(parse_once(d, max + 1, &lim, &st, &r), PROTO_ERR_BIG_MBULK);
    proto_state_free(&st);
    /* With its \r present a too long count line is the same error (split-independent). */
    memcpy(d + max + 1, "\r\n", 2);
    cr_assert_eq(parse_once(d, max + 3, &lim, &st, &r), PROTO_ERR_BIG_MBULK);
    proto_state_free(&st);
    /* A line of exactly max bytes is read, and is merely a bad number. */
    memcpy(d + max, "\r\n", 2);
    cr_assert_eq(parse_once(d, max + 2, &lim, &st, &r), PROTO_ERR_MBULK_LEN);
    proto_state_free(&st);

    memcpy(d, "*1\r\n$", 5);
    memset(d + 5, '1', max + 8);
    cr_assert_eq(parse_once(d, 4 + max, &lim, &st, &r), PROTO_NEED);
    proto_state_free(&st);
    cr_assert_eq(parse_once(d, 4 + max + 1, &lim, &st, &r), PROTO_ERR_BIG_BULK);
    proto_state_free(&st);
    /* Bad first byte, but the line is too long: the length check comes first, as in Redis. */
    d[4] = 'x';
    cr_assert_eq(parse_once(d, 4 + max + 1, &lim, &st, &r), PROTO_ERR_BIG_BULK);
    proto_state_free(&st);
    req_free(&r);
    rk_free(d);
}

Test(proto, limit_bulk_and_mbulk)
{
    struct proto_state st;
    struct req r = {0};
    struct proto_limits small = {.max_bulk = 10, .max_inline = 64 << 10, .max_mbulk = 3};

    cr_assert_eq(parse_once(S("*1\r\n$11\r\n"), &small, &st, &r), PROTO_ERR_BULK_LEN);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*1\r\n$10\r\n"), &small, &st, &r), PROTO_NEED);
    cr_assert_eq(st.need, 4 + 5 + 10 + 2);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*4\r\n"), &small, &st, &r), PROTO_ERR_MBULK_LEN);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*3\r\n"), &small, &st, &r), PROTO_NEED);
    proto_state_free(&st);

    /* The default limits: 1024*1024 arguments and a 512 MiB bulk are allowed. */
    cr_assert_eq(parse_once(S("*1048576\r\n"), &lim, &st, &r), PROTO_NEED);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*1\r\n$536870912\r\n"), &lim, &st, &r), PROTO_NEED);
    cr_assert_eq(st.need, 4 + 12 + 536870912 + 2);
    proto_state_free(&st);
    req_free(&r);
}

/* ---- empty requests ---------------------------------------------------------------------- */

Test(proto, empty_multibulk_is_skipped)
{
    struct proto_state st;
    struct req r = {0};
    cr_assert_eq(parse_once(S("*0\r\n"), &lim, &st, &r), 4);
    cr_assert_eq(r.argc, 0);
    cr_assert_eq(r.proto, PROTO_RESP);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*-1\r\n"), &lim, &st, &r), 5);
    cr_assert_eq(r.argc, 0);
    proto_state_free(&st);
    cr_assert_eq(parse_once(S("*-5\r\n*1\r\n"), &lim, &st, &r), 5);
    cr_assert_eq(r.argc, 0);
    /* the state is clean for the next request */
    cr_assert_eq(proto_parse(&st, "*1\r\n$1\r\nz\r\n", 11, &lim, &r), 11);
    cr_assert_eq(r.argc, 1);
    cr_assert_eq(r.argv[0].p[0], 'z');
    proto_state_free(&st);
    cr_assert_eq(parse_once(S(" \t \r\n"), &lim, &st, &r), 5);
    cr_assert_eq(r.argc, 0);
    cr_assert_eq(r.proto, PROTO_LINE);
    proto_state_free(&st);
    req_free(&r);
}

/* ---- big values -------------------------------------------------------------------------- */

/* A 1 MiB value arrives in 64 KiB pieces: the parser knows the total size as soon as it has
 * read the length, waits without looking at the payload, and returns it without a copy. */
Test(proto, big_bulk_incremental)
{
    const size_t vlen = 1 << 20;
    const char head[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n";
    size_t hl = sizeof(head) - 1, total = hl + vlen + 2;
    char *d = rk_malloc(total);
    memcpy(d, head, hl);
    for (size_t i = 0; i < vlen; i++)
        d[hl + i] = (char)("\r\n*$x"[i % 5]);
    memcpy(d + hl + vlen, "\r\n", 2);

    struct proto_state st;
    struct req r = {0};
    proto_state_init(&st);
    struct buf in = {0};

    buf_append(&in, d, 10); /* "*3\r\n$3\r\nSE" */
    cr_assert_eq(proto_parse(&st, in.p, in.len, &lim, &r), PROTO_NEED);
    cr_assert_eq(st.need, 4 + 4 + 3 + 2);
    buf_append(&in, d + 10, hl - 10);
    cr_assert_eq(proto_parse(&st, in.p, in.len, &lim, &r), PROTO_NEED);
    cr_assert_eq(st.need, total);

    /* The parser resumes from its state: scribbling over what it has already read (the
     * count lines of the first arguments) changes nothing. */
    memcpy(in.p + 4, "!!!!", 4);
    memcpy(in.p + 13, "????", 4);

    size_t at = hl;
    while (at < total) {
        size_t n = total - at < 65536 ? total - at : 65536;
        buf_append(&in, d + at, n); /* may realloc: the buffer moves */
        at += n;
        ssize_t rc = proto_parse(&st, in.p, in.len, &lim, &r);
        if (at < total) {
            cr_assert_eq(rc, PROTO_NEED, "at %zu", at);
            cr_assert_eq(st.need, total);
        } else {
            cr_assert_eq(rc, (ssize_t)total);
        }
    }
    cr_assert_eq(r.argc, 3);
    cr_assert(memcmp(r.argv[0].p, "SET", 3) == 0);
    cr_assert_eq(r.argv[2].len, vlen);
    cr_assert_eq(r.argv[2].p, in.p + hl);
    cr_assert(memcmp(r.argv[2].p, d + hl, vlen) == 0);
    cr_assert_eq(st.need, 0);

    buf_free(&in);
    rk_free(d);
    proto_state_free(&st);
    req_free(&r);
}

/* A long line fed in pieces is scanned for its newline once: bytes already searched are not
 * read again (we scribble a '\n' over them and it is not seen). */
Test(proto, long_line_resumes_search)
{
    char d[1000];
    memset(d, 'a', sizeof(d));
    d[999] = '\n';
    struct proto_state st;
    struct req r = {0};
    proto_state_init(&st);
    cr_assert_eq(proto_parse(&st, d, 500, &lim, &r), PROTO_NEED);
    d[100] = '\n';
    cr_assert_eq(proto_parse(&st, d, 1000, &lim, &r), 1000);
    cr_assert_eq(r.argc, 2); /* split at the '\n' we wrote, which is a blank inside a line */
    cr_assert_eq(r.argv[0].len, 100);
    cr_assert_eq(r.argv[1].len, 898);
    proto_state_free(&st);
    req_free(&r);
}

/* After an error the state is usable again (the connection is normally closed, but a stale
 * state must not make the next parse misbehave). */
Test(proto, state_after_error)
{
    struct proto_state st;
    struct req r = {0};
    proto_state_init(&st);
    cr_assert_eq(proto_parse(&st, "*1\r\n$1\r\na\r\n*x\r\n", 15, &lim, &r), 11);
    cr_assert_eq(proto_parse(&st, "*x\r\n", 4, &lim, &r), PROTO_ERR_MBULK_LEN);
    cr_assert_eq(proto_parse(&st, "PING\r\n", 6, &lim, &r), 6);
    cr_assert_eq(r.argc, 1);
    proto_state_free(&st);
    req_free(&r);
}

/*
 * parse: the load generator's reply parsers, RESP2 and line protocol, and the self-test.
 *
 * The parsers are stateless and zero-copy: each call looks at the bytes buffered for one
 * connection, and either recognises one whole reply at their start (its text pointing into
 * the buffer), or says that more bytes are needed, or that the bytes cannot be a reply.
 * A client benchmark's replies are small and arrive whole nearly always, so keeping no state
 * between calls costs little; the one case where re-reading a partial reply would hurt, a
 * large bulk string arriving over many recvs, is covered by the need hint: once a bulk
 * header has been read the parser reports the total size, and the caller does not call again
 * until that many bytes are buffered.
 *
 * Everything is bounded: status, error and integer lines at LG_LINE_MAX, bulk strings at
 * 512 MiB (Redis's proto-max-bulk-len), arrays at 2^20 elements per level and 16 levels deep,
 * integers at 19 digits.  A reply outside these bounds is malformed, never a reason to grow a
 * buffer without end or to recurse without end.
 *
 * The line protocol has no types: a reply is one line, and what it means depends on the
 * command sent.  lg_line_parse() classifies the line by its shape (see lg.h) and the caller
 * decides; a GET accepts any non-error, non-nil line as the value.
 *
 * lg_selftest() at the bottom runs every self-test of bench/ (behind the hidden --selftest
 * flag): parsers at every split point of a reply stream, with the input placed against a
 * PROT_NONE page so that reading one byte too far crashes the test instead of passing.
 */
#include "bench/lg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define LG_LINE_MAX (64 * 1024)
#define LG_BULK_MAX (512ll * 1024 * 1024)
#define LG_ARRAY_MAX (1ll << 20)
#define LG_DEPTH_MAX 16

/* Strict decimal: optional '-', 1 to 19 digits, nothing else. 0 or -1. */
static int lg_parse_ll(const char *p, size_t n, long long *out)
{
    bool neg = false;
    if (n > 0 && p[0] == '-') {
        neg = true;
        p++;
        n--;
    }
    if (n == 0 || n > 19)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > (unsigned long long)INT64_MAX)
        return -1;
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

/*
 * The end of the line that starts at buf[from]: the index of its "\r\n".  Returns -1 when
 * the line is not complete yet, -2 when it is malformed (a bare \r or \n, or too long).
 */
static ssize_t lg_line_end(const char *buf, size_t len, size_t from)
{
    size_t lim = len - from < LG_LINE_MAX + 2 ? len - from : LG_LINE_MAX + 2;
    const char *cr = memchr(buf + from, '\r', lim);
    if (!cr) {
        if (memchr(buf + from, '\n', lim))
            return -2;
        return lim == LG_LINE_MAX + 2 ? -2 : -1;
    }
    size_t at = (size_t)(cr - buf);
    if (memchr(buf + from, '\n', at - from))
        return -2;
    if (at + 1 >= len)
        return -1;
    return buf[at + 1] == '\n' ? (ssize_t)at : -2;
}

/* One RESP value at buf[pos]; returns its end (> pos), 0 for need more, -1 for malformed.
 * r->need, when set, counts from buf[0]. */
static ssize_t lg_resp_value(const char *buf, size_t len, size_t pos, int depth, struct lg_reply *r)
{
    if (pos >= len)
        return 0;
    char type = buf[pos];
    ssize_t e = lg_line_end(buf, len, pos + 1);
    if (e == -1)
        return 0;
    if (e < 0)
        return -1;
    const char *text = buf + pos + 1;
    size_t tlen = (size_t)e - pos - 1;
    size_t after = (size_t)e + 2;
    long long n;

    r->p = text;
    r->len = tlen;
    switch (type) {
    case '+':
        r->type = LG_R_STATUS;
        return (ssize_t)after;
    case '-':
        r->type = LG_R_ERROR;
        return (ssize_t)after;
    case ':':
        if (lg_parse_ll(text, tlen, &r->ival) < 0)
            return -1;
        r->type = LG_R_INT;
        return (ssize_t)after;
    case '$':
        if (lg_parse_ll(text, tlen, &n) < 0 || n < -1 || n > LG_BULK_MAX)
            return -1;
        if (n == -1) {
            r->type = LG_R_NIL;
            r->len = 0;
            return (ssize_t)after;
        }
        if (after + (size_t)n + 2 > len) {
            r->need = after + (size_t)n + 2;
            return 0;
        }
        if (buf[after + n] != '\r' || buf[after + n + 1] != '\n')
            return -1;
        r->type = LG_R_BULK;
        r->p = buf + after;
        r->len = (size_t)n;
        return (ssize_t)(after + (size_t)n + 2);
    case '*':
        if (lg_parse_ll(text, tlen, &n) < 0 || n < -1 || n > LG_ARRAY_MAX)
            return -1;
        if (n == -1) {
            r->type = LG_R_NIL;
            r->len = 0;
            return (ssize_t)after;
        }
        if (depth >= LG_DEPTH_MAX && n > 0)
            return -1;
        for (long long i = 0; i < n; i++) {
            struct lg_reply sub = {0};
            ssize_t end = lg_resp_value(buf, len, after, depth + 1, &sub);
            if (end <= 0) {
                r->need = sub.need;
                return end;
            }
            after = (size_t)end;
        }
        r->type = LG_R_ARRAY;
        r->ival = n;
        r->p = NULL;
        r->len = 0;
        return (ssize_t)after;
    default:
        return -1;
    }
}

ssize_t lg_resp_parse(const char *buf, size_t len, struct lg_reply *r)
{
    r->need = 0;
    return lg_resp_value(buf, len, 0, 0, r);
}

/* An upper-case word of two or more letters and a space: "ERR ...", "WRONGTYPE ...". */
static bool lg_line_is_error(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    return i >= 2 && i < n && p[i] == ' ';
}

ssize_t lg_line_parse(const char *buf, size_t len, size_t max_line, struct lg_reply *r)
{
    r->need = 0;
    size_t lim = len < max_line + 2 ? len : max_line + 2;
    const char *nl = memchr(buf, '\n', lim);
    if (!nl)
        return lim == max_line + 2 ? -1 : 0;
    size_t n = (size_t)(nl - buf);
    size_t used = n + 1;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n > max_line)
        return -1;
    r->p = buf;
    r->len = n;
    if (n == 5 && memcmp(buf, "(nil)", 5) == 0)
        r->type = LG_R_NIL;
    else if (n == 2 && memcmp(buf, "OK", 2) == 0)
        r->type = LG_R_STATUS;
    else if (lg_line_is_error(buf, n))
        r->type = LG_R_ERROR;
    else if (lg_parse_ll(buf, n, &r->ival) == 0)
        r->type = LG_R_INT;
    else
        r->type = LG_R_BULK;
    return (ssize_t)used;
}

/* ---- self-test ---- */

#define PT_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "parse selftest: %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

/* Memory that ends at a PROT_NONE page: bytes copied to guard_place() end exactly there. */
struct lg_guard {
    char *base;
    size_t span; /* bytes before the guard page */
};

static int lg_guard_init(struct lg_guard *g, size_t cap)
{
    long pg = sysconf(_SC_PAGESIZE);
    g->span = (cap + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
    void *m = mmap(NULL, g->span + (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED)
        return -1;
    g->base = m;
    return mprotect(g->base + g->span, (size_t)pg, PROT_NONE);
}

static const char *lg_guard_place(struct lg_guard *g, const char *src, size_t n)
{
    char *dst = g->base + g->span - n;
    memcpy(dst, src, n);
    return dst;
}

static void lg_guard_free(struct lg_guard *g)
{
    munmap(g->base, g->span + (size_t)sysconf(_SC_PAGESIZE));
}

typedef ssize_t (*lg_parse_fn)(const char *buf, size_t len, struct lg_reply *r);

static ssize_t lg_line_parse_test(const char *buf, size_t len, struct lg_reply *r)
{
    return lg_line_parse(buf, len, 100, r);
}

/*
 * Parse the stream in full, then again from every prefix: each prefix must yield exactly
 * the replies that end within it, with the same types, and then "need more" (never an error,
 * and never a need hint beyond what the full stream holds).  Also cut the stream in two at
 * every point and feed the parts as a recv loop would.  Returns the failures.
 */
static int lg_stream_check(struct lg_guard *g, lg_parse_fn parse, const char *s, size_t n,
                           const int *types, int ntypes)
{
    int fails = 0;
    size_t ends[64];
    size_t pos = 0;
    int got = 0;
    const char *full = lg_guard_place(g, s, n);
    while (pos < n && got < 64) {
        struct lg_reply r;
        ssize_t k = parse(full + pos, n - pos, &r);
        if (k <= 0)
            break;
        PT_CHECK(got < ntypes && r.type == types[got]);
        pos += (size_t)k;
        ends[got++] = pos;
    }
    PT_CHECK(got == ntypes && pos == n);
    if (got != ntypes || pos != n)
        return fails;

    for (size_t cut = 0; cut <= n; cut++) {
        const char *b = lg_guard_place(g, s, cut);
        size_t at = 0;
        int i = 0;
        for (;;) {
            struct lg_reply r;
            ssize_t k = parse(b + at, cut - at, &r);
            if (k < 0) {
                PT_CHECK(k >= 0);
                break;
            }
            if (k == 0) {
                PT_CHECK(i == ntypes || ends[i] > cut);
                PT_CHECK(r.need == 0 || r.need <= n - at);
                break;
            }
            PT_CHECK(i < ntypes && r.type == types[i]);
            if (i >= ntypes)
                break;
            at += (size_t)k;
            i++;
        }
    }
    return fails;
}

static int lg_parse_selftest(void)
{
    int fails = 0;
    struct lg_guard g;
    if (lg_guard_init(&g, 1 << 16) < 0) {
        fprintf(stderr, "parse selftest: cannot map a guard page\n");
        return 1;
    }

    static const char resp[] = "+OK\r\n-ERR bad thing\r\n:42\r\n:-7\r\n$5\r\nhello\r\n"
                               "$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
                               "*3\r\n:1\r\n*2\r\n$1\r\na\r\n+x\r\n$-1\r\n"
                               "$13\r\nwith\r\nnewline\r\n+\r\n";
    static const int resp_types[] = {LG_R_STATUS, LG_R_ERROR, LG_R_INT,  LG_R_INT,
                                     LG_R_BULK,   LG_R_BULK,  LG_R_NIL,  LG_R_NIL,
                                     LG_R_ARRAY,  LG_R_ARRAY, LG_R_BULK, LG_R_STATUS};
    fails += lg_stream_check(&g, lg_resp_parse, resp, sizeof(resp) - 1, resp_types,
                             (int)(sizeof(resp_types) / sizeof(resp_types[0])));

    /* Field values. */
    struct lg_reply r;
    const char *b = lg_guard_place(&g, ":-9223372036854775807\r\n", 23);
    PT_CHECK(lg_resp_parse(b, 23, &r) == 23 && r.ival == -9223372036854775807ll);
    b = lg_guard_place(&g, "$5\r\nhel", 7);
    PT_CHECK(lg_resp_parse(b, 7, &r) == 0 && r.need == 11);
    b = lg_guard_place(&g, "*2\r\n$1\r\na\r\n$300\r\nxy", 19);
    PT_CHECK(lg_resp_parse(b, 19, &r) == 0 && r.need == 17 + 302);
    b = lg_guard_place(&g, "-WRONGTYPE x\r\n", 14);
    PT_CHECK(lg_resp_parse(b, 14, &r) == 14 && r.type == LG_R_ERROR && r.len == 11 &&
             memcmp(r.p, "WRONGTYPE x", 11) == 0);

    /* Malformed replies are errors, not "need more". */
    static const char *const bad[] = {
        "?x\r\n",
        ":12a\r\n",
        ":\r\n",
        "$-2\r\n",
        "$3\r\nabcX\r\n",
        "+OK\rX",
        "+O\nK\r\n",
        "*-5\r\n",
        "$x\r\n",
        ":99999999999999999999\r\n",
        "*1\r\n!\r\n",
        "$1\r\nab",
        "$999999999999\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = strlen(bad[i]);
        b = lg_guard_place(&g, bad[i], n);
        ssize_t k = lg_resp_parse(b, n, &r);
        if (i == 11) /* "$1\r\nab": the terminator is not there yet */
            PT_CHECK(k == 0);
        else if (k != -1)
            fprintf(stderr, "parse selftest: bad reply %zu accepted\n", i), fails++;
    }

    /* Nesting: 16 levels parse, 17 do not. */
    char deep[256];
    size_t dn = 0;
    for (int i = 0; i < 16; i++)
        dn += (size_t)sprintf(deep + dn, "*1\r\n");
    dn += (size_t)sprintf(deep + dn, ":1\r\n");
    b = lg_guard_place(&g, deep, dn);
    PT_CHECK(lg_resp_parse(b, dn, &r) == (ssize_t)dn && r.type == LG_R_ARRAY);
    memmove(deep + 4, deep, dn);
    memcpy(deep, "*1\r\n", 4);
    b = lg_guard_place(&g, deep, dn + 4);
    PT_CHECK(lg_resp_parse(b, dn + 4, &r) == -1);

    /* A status line longer than LG_LINE_MAX is malformed even before its end arrives. */
    char *longline = malloc(LG_LINE_MAX + 8);
    longline[0] = '+';
    memset(longline + 1, 'a', LG_LINE_MAX + 4);
    PT_CHECK(lg_resp_parse(longline, LG_LINE_MAX + 5, &r) == -1);
    PT_CHECK(lg_resp_parse(longline, LG_LINE_MAX, &r) == 0);
    free(longline);

    /* Line protocol: both line ends, every class. */
    static const char line[] = "OK\r\nOK\n(nil)\nERR unknown command 'FOO'\r\n"
                               "000000000077abc\n42\r\n-3\n\nWRONGTYPE Operation\n(nil\n";
    static const int line_types[] = {LG_R_STATUS, LG_R_STATUS, LG_R_NIL,  LG_R_ERROR, LG_R_BULK,
                                     LG_R_INT,    LG_R_INT,    LG_R_BULK, LG_R_ERROR, LG_R_BULK};
    fails += lg_stream_check(&g, lg_line_parse_test, line, sizeof(line) - 1, line_types,
                             (int)(sizeof(line_types) / sizeof(line_types[0])));
    b = lg_guard_place(&g, "000000000077abc\r\n", 17);
    PT_CHECK(lg_line_parse(b, 17, 100, &r) == 17 && r.type == LG_R_BULK && r.len == 15 &&
             memcmp(r.p, "000000000077abc", 15) == 0);
    b = lg_guard_place(&g, "0123456789", 10);
    PT_CHECK(lg_line_parse(b, 10, 8, &r) == -1);
    PT_CHECK(lg_line_parse(b, 9, 8, &r) == 0);
    b = lg_guard_place(&g, "01234567\r\n", 10);
    PT_CHECK(lg_line_parse(b, 10, 8, &r) == 10 && r.len == 8);

    lg_guard_free(&g);
    return fails;
}

int lg_selftest(void)
{
    int h = hist_selftest(), k = lg_keygen_selftest(), p = lg_parse_selftest();
    printf("selftest: hist %s, keygen %s, parse %s\n", h ? "FAIL" : "ok", k ? "FAIL" : "ok",
           p ? "FAIL" : "ok");
    return h + k + p;
}

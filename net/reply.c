/*
 * reply: encoders for RESP2 and for the line protocol.
 *
 * Every encoder appends to r->b.  RESP2 output is byte for byte what Redis 7 sends, so any
 * client or test that compares raw bytes with Redis sees no difference.  The line protocol
 * writes what a person at `nc` wants to read: statuses, errors, integers and values as bare
 * lines, ended the way the request line was ended (r->crlf).
 *
 * The hot encoders (bulk, int, ok, nil) reserve once and write in place: a reply is a handful
 * of bytes and a memcpy, with the number formatted by rk_ll2str straight into the buffer.  A
 * reservation may ask for a few bytes more than end up used; only r->b->len counts.
 *
 * Errors.  An error reply is one line, so a \r or \n inside its text is replaced by a space,
 * as Redis does for the errors it formats; we do it for every error, in both protocols.
 *
 * Bookkeeping: reply_int records its value in r->ival.  r->nelem is never touched here: the
 * callers that produce headerless elements for a combined reply count them themselves.
 */
#include "net/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "net/proto.h"

/* Longest decimal long long ("-9223372036854775808") plus rk_ll2str's NUL. */
#define LL_MAX_CHARS 21

static inline char *put_eol(const struct reply *r, char *p)
{
    if (r->proto == PROTO_RESP || r->crlf)
        *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Append n bytes then the line end of the reply's protocol. */
static void put_line(struct reply *r, const char *s, size_t n)
{
    char *p = buf_reserve(r->b, n + 2);
    memcpy(p, s, n);
    char *e = put_eol(r, p + n);
    r->b->len += (size_t)(e - p);
}

/* A one-byte type marker, the text, and \r\n (RESP only). */
static void put_typed_line(struct reply *r, char type, const char *s, size_t n)
{
    char *p = buf_reserve(r->b, n + 3);
    p[0] = type;
    memcpy(p + 1, s, n);
    p[n + 1] = '\r';
    p[n + 2] = '\n';
    r->b->len += n + 3;
}

/* A type marker, a number and \r\n: ":42", "$3", "*2" (RESP only). */
static void put_typed_ll(struct reply *r, char type, long long v)
{
    char *p = buf_reserve(r->b, 1 + LL_MAX_CHARS + 2);
    p[0] = type;
    int n = rk_ll2str(p + 1, v);
    p[n + 1] = '\r';
    p[n + 2] = '\n';
    r->b->len += (size_t)n + 3;
}

void reply_status_len(struct reply *r, const char *s, size_t n)
{
    if (r->proto == PROTO_RESP)
        put_typed_line(r, '+', s, n);
    else
        put_line(r, s, n);
}

void reply_status(struct reply *r, const char *s)
{
    reply_status_len(r, s, strlen(s));
}

void reply_ok(struct reply *r)
{
    if (r->proto == PROTO_RESP) {
        buf_append(r->b, "+OK\r\n", 5);
        return;
    }
    char *p = buf_reserve(r->b, 4);
    p[0] = 'O';
    p[1] = 'K';
    char *e = put_eol(r, p + 2);
    r->b->len += (size_t)(e - p);
}

/* Error text of length n, \r and \n turned into spaces, one line. */
static void put_error(struct reply *r, const char *s, size_t n)
{
    size_t pre = r->proto == PROTO_RESP ? 1 : 0;
    char *p = buf_reserve(r->b, pre + n + 2);
    if (pre)
        p[0] = '-';
    char *d = p + pre;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        d[i] = (c == '\r' || c == '\n') ? ' ' : c;
    }
    char *e = put_eol(r, d + n);
    r->b->len += (size_t)(e - p);
}

void reply_error(struct reply *r, const char *s)
{
    put_error(r, s, strlen(s));
}

void reply_errorf(struct reply *r, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(small)) {
        put_error(r, small, (size_t)n);
        return;
    }
    char *big = rk_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    put_error(r, big, (size_t)n);
    rk_free(big);
}

void reply_int(struct reply *r, long long v)
{
    r->ival = v;
    if (r->proto == PROTO_RESP) {
        put_typed_ll(r, ':', v);
        return;
    }
    char *p = buf_reserve(r->b, LL_MAX_CHARS + 2);
    int n = rk_ll2str(p, v);
    char *e = put_eol(r, p + n);
    r->b->len += (size_t)(e - p);
}

void reply_bulk(struct reply *r, const char *s, size_t n)
{
    if (r->proto != PROTO_RESP) {
        put_line(r, s, n);
        return;
    }
    char *p = buf_reserve(r->b, 1 + LL_MAX_CHARS + 2 + n + 2);
    char *q = p;
    *q++ = '$';
    q += rk_ll2str(q, (long long)n);
    *q++ = '\r';
    *q++ = '\n';
    if (n)
        memcpy(q, s, n);
    q += n;
    *q++ = '\r';
    *q++ = '\n';
    r->b->len += (size_t)(q - p);
}

void reply_bulk_cstr(struct reply *r, const char *s)
{
    reply_bulk(r, s, strlen(s));
}

void reply_bulk_ll(struct reply *r, long long v)
{
    char tmp[LL_MAX_CHARS];
    int n = rk_ll2str(tmp, v);
    reply_bulk(r, tmp, (size_t)n);
}

void reply_nil(struct reply *r)
{
    if (r->proto == PROTO_RESP)
        buf_append(r->b, "$-1\r\n", 5);
    else
        put_line(r, "(nil)", 5);
}

void reply_nil_array(struct reply *r)
{
    if (r->proto == PROTO_RESP)
        buf_append(r->b, "*-1\r\n", 5);
    else
        put_line(r, "(nil)", 5);
}

void reply_array(struct reply *r, long n)
{
    if (r->proto == PROTO_RESP)
        put_typed_ll(r, '*', n);
    else if (n == 0)
        put_line(r, "(empty array)", 13);
}

void reply_verbatim(struct reply *r, const char *s, size_t n)
{
    if (r->proto == PROTO_RESP) {
        reply_bulk(r, s, n);
        return;
    }
    if (n > 0 && s[n - 1] == '\n')
        buf_append(r->b, s, n);
    else
        put_line(r, s, n);
}

void reply_error_arity(struct reply *r, const char *cmdname)
{
    reply_errorf(r, "ERR wrong number of arguments for '%s' command", cmdname);
}

/* Redis prints names and arguments with "%.*s": at most prec bytes, and not past a NUL. */
static size_t c_prefix(const struct arg *a, size_t prec)
{
    size_t n = a->len < prec ? a->len : prec;
    const char *z = memchr(a->p, '\0', n);
    return z ? (size_t)(z - a->p) : n;
}

/*
 * Redis 7.0 (processCommand) prints the name with "%.128s" and then, while the list so far is
 * shorter than 128 bytes, each next argument as "'%.*s' " with a precision of 128 minus the
 * list's length.  So each argument is cut to what is left of 128 bytes, and listing stops
 * once the list reaches 128 bytes.
 */
#define UNKNOWN_SHOW 128

void reply_error_unknown(struct reply *r, const struct arg *argv, int argc)
{
    static const char pre[] = "ERR unknown command '";
    static const char mid[] = "', with args beginning with: ";
    struct buf t = {0};

    buf_append(&t, pre, sizeof(pre) - 1);
    if (argc > 0)
        buf_append(&t, argv[0].p, c_prefix(&argv[0], UNKNOWN_SHOW));
    if (r->proto != PROTO_RESP) {
        buf_putc(&t, '\'');
    } else {
        buf_append(&t, mid, sizeof(mid) - 1);
        size_t shown = 0;
        for (int i = 1; i < argc && shown < UNKNOWN_SHOW; i++) {
            size_t n = c_prefix(&argv[i], UNKNOWN_SHOW - shown);
            buf_putc(&t, '\'');
            buf_append(&t, argv[i].p, n);
            buf_append(&t, "' ", 2);
            shown += n + 3;
        }
    }
    put_error(r, t.p, t.len);
    buf_free(&t);
}

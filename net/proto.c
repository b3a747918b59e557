/*
 * proto: the request parser for RESP2 multibulk and line (inline) requests.
 *
 * HOW IT WORKS
 *
 * The caller keeps received bytes in a buffer and calls proto_parse() with the whole of what
 * it holds from the start of the current request.  The parser either finds a complete request
 * (returns the bytes it used and fills *req), or says PROTO_NEED and leaves in struct
 * proto_state how far it got, as offsets from the start of the buffer.  The caller may then
 * receive more bytes, move the buffer (realloc), and call again with the same prefix plus the
 * new bytes; the parser resumes where it stopped.
 *
 * RESP2.  A request is "*<n>\r\n" followed by n times "$<len>\r\n<len bytes>\r\n".  The state
 * is: pos (next byte to look at), mbulk (n, or -1 before the count line is read), bulk (the
 * length of the argument whose payload we wait for, or -1 when the next thing is a "$" line)
 * and nargs with the offsets of the arguments complete so far.  A payload is never scanned:
 * once its length is known we only compare it with the bytes present, and st->need tells
 * the caller how many bytes the request needs at least, so it can reserve room for a big
 * value in one step.  argv is built from the offsets only when the request is complete,
 * because the buffer may have moved in between.
 *
 * The behaviour mirrors Redis 7's processMultibulkBuffer, including its leniencies:
 *   - a count line ends at the first '\r' and must be followed by one more byte, which is
 *     skipped without being checked ("*1\rX" is a valid count line);
 *   - a payload must be followed by two bytes, which are skipped without being checked;
 *   - "*0", and any negative count ("*-1", "*-5"), is an empty request: it is consumed and
 *     returned with argc 0, and the caller ignores it;
 *   - the first byte of an argument's count line is checked only once the line is complete,
 *     so "expected '$'" comes after the line's length check, as in Redis.
 * Where Redis would be split-point dependent or stop at a NUL byte, we are deterministic:
 *   - a count line whose length (bytes before its '\r') is over max_inline is an error
 *     (too big mbulk/bulk count string) whether or not its '\r' has arrived yet; Redis only
 *     checks while the '\r' is missing, and otherwise reports an invalid length;
 *   - NUL is an ordinary byte: Redis looks for '\r' with strchr and so waits forever on a
 *     count line holding a NUL; here such a line is an invalid length.
 *
 * Line requests.  Anything not starting with '*' is a line ended by '\n'; a '\r' just before
 * the '\n' is dropped and noted in req->crlf so the reply can use the same ending.  Words are
 * split as Redis's sdssplitargs does: blanks between words are skipped (isspace: space, \t,
 * \n, \v, \f, \r), but inside an unquoted word only space, \t, \n and \r end it; a quote may
 * open anywhere in a word; "..." understands \n \r \t \b \a \xHH and \<any> (the char itself),
 * '...' only \'; a closing quote must be followed by a blank or the end of the line, else the
 * quotes are unbalanced.  Unlike sdssplitargs, a NUL byte is an ordinary word byte.  A line of
 * blanks only is consumed and returned with argc 0.  The line is scanned for '\n' once: on
 * PROTO_NEED st->pos remembers where the search stopped.  A line longer than max_inline is an
 * error whether or not its '\n' has arrived (Redis checks only while it is missing, which
 * makes the outcome depend on how the bytes were split).
 *
 * Words are zero-copy where the output is a contiguous run of the input: a plain word, or a
 * quoted word without escapes ("hello world" points at the bytes inside the quotes).  Only
 * words whose bytes change (an escape, or a quote opened in the middle of a word) are copied
 * into st->unq.  Since growing st->unq moves it, their offsets are stored tagged and turned
 * into pointers once the whole line is split.
 *
 * Lifetime: req->argv points into the caller's buffer and into st->unq; it is valid until the
 * buffer changes or proto_parse is called again with the same state.
 */
#include "net/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "net/reply.h"

/* An offset with this bit set is an offset into st->unq rather than into the buffer. */
#define OFF_UNQ ((size_t)1 << (sizeof(size_t) * 8 - 1))

void proto_state_init(struct proto_state *st)
{
    memset(st, 0, sizeof(*st));
    st->mbulk = -1;
    st->bulk = -1;
}

void proto_state_free(struct proto_state *st)
{
    rk_free(st->offs);
    rk_free(st->unq);
    proto_state_init(st);
}

void req_free(struct req *req)
{
    rk_free(req->argv);
    memset(req, 0, sizeof(*req));
}

/* Forget the progress of a request, keeping the allocations. */
static void state_reset(struct proto_state *st)
{
    st->pos = 0;
    st->mbulk = -1;
    st->nargs = 0;
    st->bulk = -1;
    st->need = 0;
    st->unq_len = 0;
}

static void offs_push(struct proto_state *st, size_t off, size_t len)
{
    size_t need = (size_t)(st->nargs + 1) * 2;
    if (RK_UNLIKELY(need > st->offs_cap)) {
        size_t cap = st->offs_cap ? st->offs_cap * 2 : 32;
        st->offs = rk_realloc(st->offs, cap * sizeof(*st->offs));
        st->offs_cap = cap;
    }
    st->offs[st->nargs * 2] = off;
    st->offs[st->nargs * 2 + 1] = len;
    st->nargs++;
}

/* Fill req->argv from the recorded offsets. */
static void req_fill(struct proto_state *st, const char *buf, struct req *req, int proto, int crlf)
{
    long n = st->nargs;
    if ((size_t)n > req->argv_cap) {
        size_t cap = req->argv_cap ? req->argv_cap : 8;
        while (cap < (size_t)n)
            cap *= 2;
        req->argv = rk_realloc(req->argv, cap * sizeof(*req->argv));
        req->argv_cap = cap;
    }
    for (long i = 0; i < n; i++) {
        size_t off = st->offs[i * 2];
        req->argv[i].len = st->offs[i * 2 + 1];
        req->argv[i].p = (off & OFF_UNQ) ? st->unq + (off & ~OFF_UNQ) : buf + off;
    }
    req->argc = (int)n;
    req->proto = (uint8_t)proto;
    req->crlf = (uint8_t)crlf;
}

/* ---- RESP2 ------------------------------------------------------------------------------ */

enum { CL_OK = 1, CL_NEED = 0, CL_BIG = -1, CL_BADBYTE = -2, CL_INVALID = -3 };

/*
 * Parse a decimal number as Redis's string2ll accepts it: an optional '-', then "0" alone or
 * a first digit 1-9 and more digits, fitting in a long long.  Negative values come back as -1
 * (callers only need their sign).  Returns 0 or -1.
 */
static int parse_len(const char *s, size_t n, long long *out)
{
    int neg = 0;
    if (n && s[0] == '-') {
        neg = 1;
        s++;
        n--;
    }
    if (n == 0 || n > 19)
        return -1;
    if (s[0] == '0') {
        if (n != 1 || neg)
            return -1;
        *out = 0;
        return 0;
    }
    unsigned long long v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        v = v * 10 + d; /* 19 digits cannot overflow 64 bits */
    }
    if (neg) {
        if (v > (unsigned long long)INT64_MAX + 1)
            return -1;
        *out = -1;
    } else {
        if (v > (unsigned long long)INT64_MAX)
            return -1;
        *out = (long long)v;
    }
    return 0;
}

/*
 * Read the count line at buf[*pos], which should start with `lead` ('*' or '$').  On CL_OK,
 * *val is the number and *pos is past the line and the byte after its '\r'.  CL_NEED: the
 * line is incomplete.  CL_BIG: the line is longer than max_line.  CL_BADBYTE: the line is
 * complete but does not start with lead.  CL_INVALID: not a number.
 */
static int read_count_slow(const char *buf, size_t len, size_t *pos, char lead, size_t max_line,
                           long long *val)
{
    const char *s = buf + *pos;
    size_t avail = len - *pos;
    size_t win = avail < max_line + 1 ? avail : max_line + 1;
    const char *cr = memchr(s, '\r', win);
    if (!cr)
        return avail > max_line ? CL_BIG : CL_NEED;
    size_t idx = (size_t)(cr - s);
    if (idx + 1 >= avail)
        return CL_NEED;
    if (s[0] != lead)
        return CL_BADBYTE;
    if (parse_len(s + 1, idx - 1, val) < 0)
        return CL_INVALID;
    *pos += idx + 2;
    return CL_OK;
}

static inline __attribute__((always_inline)) int
read_count(const char *buf, size_t len, size_t *pos, char lead, size_t max_line, long long *val)
{
    const char *s = buf + *pos;
    size_t avail = len - *pos;

    /* Fast path: lead, 1 to 18 plain digits (no overflow possible), '\r', one more byte.
     * Anything else goes the slow way, which follows Redis's order: find '\r', check the
     * line's length, then the lead byte, then the number. */
    if (RK_LIKELY(avail >= 4 && s[0] == lead && s[1] >= '1' && s[1] <= '9')) {
        long long v = s[1] - '0';
        size_t i = 2;
        size_t lim = avail < 19 ? avail : 19;
        while (i < lim && (unsigned)((unsigned char)s[i] - '0') <= 9)
            v = v * 10 + (s[i++] - '0');
        if (i + 1 < avail && s[i] == '\r' && i <= max_line) {
            *val = v;
            *pos += i + 2;
            return CL_OK;
        }
    }
    return read_count_slow(buf, len, pos, lead, max_line, val);
}

static ssize_t parse_resp(struct proto_state *st, const char *buf, size_t len,
                          const struct proto_limits *lim, struct req *req)
{
    size_t pos = st->pos;
    long long n;

    /* pos is 0 exactly while the count line is unread (it is at least 4 after it), so a
     * zeroed state works as well as an initialised one. */
    if (pos == 0) {
        int rc = read_count(buf, len, &pos, '*', lim->max_inline, &n);
        if (rc == CL_NEED)
            return PROTO_NEED;
        if (rc == CL_BIG)
            return PROTO_ERR_BIG_MBULK;
        rk_assert(rc != CL_BADBYTE); /* the caller saw '*' */
        if (rc == CL_INVALID || n > lim->max_mbulk)
            return PROTO_ERR_MBULK_LEN;
        if (n <= 0) {
            st->nargs = 0;
            req_fill(st, buf, req, PROTO_RESP, 1);
            state_reset(st);
            return (ssize_t)pos;
        }
        st->mbulk = n;
        st->nargs = 0;
        st->bulk = -1;
        st->pos = pos;
    }

    while (st->nargs < st->mbulk) {
        if (st->bulk < 0) {
            int rc = read_count(buf, len, &pos, '$', lim->max_inline, &n);
            if (rc == CL_NEED) {
                st->need = 0;
                return PROTO_NEED;
            }
            if (rc == CL_BIG)
                return PROTO_ERR_BIG_BULK;
            if (rc == CL_BADBYTE) {
                st->badbyte = buf[pos];
                return PROTO_ERR_EXPECTED_DOLLAR;
            }
            if (rc == CL_INVALID || n < 0 || (unsigned long long)n > lim->max_bulk)
                return PROTO_ERR_BULK_LEN;
            st->bulk = n;
            st->pos = pos;
        }
        size_t blen = (size_t)st->bulk;
        if (len - pos < blen + 2) {
            st->need = pos + blen + 2;
            return PROTO_NEED;
        }
        offs_push(st, pos, blen);
        pos += blen + 2;
        st->bulk = -1;
        st->pos = pos;
    }

    req_fill(st, buf, req, PROTO_RESP, 1);
    state_reset(st);
    return (ssize_t)pos;
}

/* ---- line requests ---------------------------------------------------------------------- */

/* Byte classes for splitting lines, as sdssplitargs sees them. */
enum {
    C_BLANK = 1,   /* skipped between words: isspace() in the "C" locale */
    C_SPECIAL = 2, /* outside quotes, ends a word (space \t \n \r) or opens a quote */
};

static const uint8_t line_class[256] = {
    [' '] = C_BLANK | C_SPECIAL,
    ['\t'] = C_BLANK | C_SPECIAL,
    ['\n'] = C_BLANK | C_SPECIAL,
    ['\r'] = C_BLANK | C_SPECIAL,
    ['\v'] = C_BLANK,
    ['\f'] = C_BLANK,
    ['"'] = C_SPECIAL,
    ['\''] = C_SPECIAL,
};

static inline int is_blank(unsigned char c)
{
    return line_class[c] & C_BLANK;
}

static inline int hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * The word being built: a run of the input [dstart, dstart + dlen) while it stays contiguous,
 * or, once it cannot, a copy in st->unq starting at ustart.
 */
struct word {
    int copied;
    size_t dstart, dlen; /* offsets in buf */
    size_t ustart;       /* offset in st->unq */
};

static void unq_put(struct proto_state *st, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (RK_UNLIKELY(st->unq_cap - st->unq_len < n)) {
        size_t cap = st->unq_cap ? st->unq_cap : 256;
        while (cap - st->unq_len < n)
            cap *= 2;
        st->unq = rk_realloc(st->unq, cap);
        st->unq_cap = cap;
    }
    memcpy(st->unq + st->unq_len, s, n);
    st->unq_len += n;
}

static void word_to_copy(struct proto_state *st, const char *buf, struct word *w)
{
    w->copied = 1;
    w->ustart = st->unq_len;
    unq_put(st, buf + w->dstart, w->dlen);
}

/* Append the n input bytes at offset at, as they are. */
static void word_run(struct proto_state *st, const char *buf, struct word *w, size_t at, size_t n)
{
    if (!w->copied) {
        if (w->dlen == 0)
            w->dstart = at;
        if (w->dstart + w->dlen == at) {
            w->dlen += n;
            return;
        }
        word_to_copy(st, buf, w);
    }
    unq_put(st, buf + at, n);
}

/* Append a byte that is not the input byte at its position (an escape). */
static void word_esc(struct proto_state *st, const char *buf, struct word *w, char c)
{
    if (!w->copied)
        word_to_copy(st, buf, w);
    unq_put(st, &c, 1);
}

/* A closing quote at p must be followed by a blank or the end of the line. */
static inline int quote_closes_ok(const char *buf, size_t p, size_t end)
{
    return p + 1 == end || is_blank((unsigned char)buf[p + 1]);
}

/* Split the line buf[0, end) into words.  Returns 0 or PROTO_ERR_QUOTES. */
static int split_line(struct proto_state *st, const char *buf, size_t end)
{
    size_t p = 0;
    st->nargs = 0;
    st->unq_len = 0;
    for (;;) {
        while (p < end && is_blank((unsigned char)buf[p]))
            p++;
        if (p == end)
            return 0;

        struct word w = {0, p, 0, 0};
        int inq = 0, insq = 0, done = 0;
        while (!done) {
            size_t q = p;
            if (inq) {
                while (q < end && buf[q] != '\\' && buf[q] != '"')
                    q++;
                if (q > p) {
                    word_run(st, buf, &w, p, q - p);
                    p = q;
                }
                if (p == end)
                    return PROTO_ERR_QUOTES;
                if (buf[p] == '"') {
                    if (!quote_closes_ok(buf, p, end))
                        return PROTO_ERR_QUOTES;
                    p++;
                    done = 1;
                } else if (p + 3 < end && buf[p + 1] == 'x' &&
                           hex_val((unsigned char)buf[p + 2]) >= 0 &&
                           hex_val((unsigned char)buf[p + 3]) >= 0) {
                    word_esc(st, buf, &w,
                             (char)(hex_val((unsigned char)buf[p + 2]) * 16 +
                                    hex_val((unsigned char)buf[p + 3])));
                    p += 4;
                } else if (p + 1 < end) {
                    char e = buf[p + 1];
                    switch (e) {
                    case 'n':
                        e = '\n';
                        break;
                    case 'r':
                        e = '\r';
                        break;
                    case 't':
                        e = '\t';
                        break;
                    case 'b':
                        e = '\b';
                        break;
                    case 'a':
                        e = '\a';
                        break;
                    default:
                        break;
                    }
                    word_esc(st, buf, &w, e);
                    p += 2;
                } else {
                    /* a backslash at the end of the line: literal, then unterminated */
                    word_run(st, buf, &w, p, 1);
                    p++;
                }
            } else if (insq) {
                while (q < end && buf[q] != '\\' && buf[q] != '\'')
                    q++;
                if (q > p) {
                    word_run(st, buf, &w, p, q - p);
                    p = q;
                }
                if (p == end)
                    return PROTO_ERR_QUOTES;
                if (buf[p] == '\'') {
                    if (!quote_closes_ok(buf, p, end))
                        return PROTO_ERR_QUOTES;
                    p++;
                    done = 1;
                } else if (p + 1 < end && buf[p + 1] == '\'') {
                    word_esc(st, buf, &w, '\'');
                    p += 2;
                } else {
                    word_run(st, buf, &w, p, 1); /* a backslash is literal here */
                    p++;
                }
            } else {
                while (q < end && !(line_class[(unsigned char)buf[q]] & C_SPECIAL))
                    q++;
                if (q > p) {
                    word_run(st, buf, &w, p, q - p);
                    p = q;
                }
                if (p == end) {
                    done = 1;
                } else if (buf[p] == '"') {
                    inq = 1;
                    p++;
                } else if (buf[p] == '\'') {
                    insq = 1;
                    p++;
                } else {
                    p++; /* a blank ends the word */
                    done = 1;
                }
            }
        }
        if (w.copied)
            offs_push(st, w.ustart | OFF_UNQ, st->unq_len - w.ustart);
        else
            offs_push(st, w.dstart, w.dlen);
    }
}

static ssize_t parse_line(struct proto_state *st, const char *buf, size_t len,
                          const struct proto_limits *lim, struct req *req)
{
    const char *nl = memchr(buf + st->pos, '\n', len - st->pos);
    if (!nl) {
        if (len > lim->max_inline)
            return PROTO_ERR_BIG_INLINE;
        st->pos = len;
        return PROTO_NEED;
    }
    size_t end = (size_t)(nl - buf);
    if (end > lim->max_inline)
        return PROTO_ERR_BIG_INLINE;
    int crlf = 0;
    if (end > 0 && buf[end - 1] == '\r') {
        end--;
        crlf = 1;
    }
    int rc = split_line(st, buf, end);
    if (rc < 0)
        return rc;
    req_fill(st, buf, req, PROTO_LINE, crlf);
    state_reset(st);
    return (ssize_t)(nl - buf) + 1;
}

/* ---- entry points ----------------------------------------------------------------------- */

ssize_t proto_parse(struct proto_state *st, const char *buf, size_t len,
                    const struct proto_limits *lim, struct req *req)
{
    if (len == 0)
        return PROTO_NEED;
    rk_assert(st->pos <= len);
    ssize_t rc =
        buf[0] == '*' ? parse_resp(st, buf, len, lim, req) : parse_line(st, buf, len, lim, req);
    if (rc < 0) {
        char bad = st->badbyte;
        state_reset(st);
        st->badbyte = bad;
    }
    return rc;
}

const char *proto_strerror(ssize_t err, const struct proto_state *st, char *buf, size_t cap)
{
    switch (err) {
    case PROTO_ERR_MBULK_LEN:
        return "Protocol error: invalid multibulk length";
    case PROTO_ERR_BULK_LEN:
        return "Protocol error: invalid bulk length";
    case PROTO_ERR_EXPECTED_DOLLAR: {
        /* Redis sends the byte as it is, except that an error line cannot hold \r or \n
         * (they become spaces); a NUL, which Redis never gets this far with, is shown as a
         * space too so the text stays one C string. */
        char c = st->badbyte;
        if (c == '\r' || c == '\n' || c == '\0')
            c = ' ';
        snprintf(buf, cap, "Protocol error: expected '$', got '%c'", c);
        return buf;
    }
    case PROTO_ERR_BIG_INLINE:
        return "Protocol error: too big inline request";
    case PROTO_ERR_BIG_MBULK:
        return "Protocol error: too big mbulk count string";
    case PROTO_ERR_BIG_BULK:
        return "Protocol error: too big bulk count string";
    case PROTO_ERR_QUOTES:
        return "Protocol error: unbalanced quotes in request";
    default:
        return "Protocol error: unknown error";
    }
}

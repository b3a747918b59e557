/*
 * proto: the request parser for both protocols on one port.
 *
 * The first byte of each request picks its protocol: '*' starts a RESP2 multibulk request,
 * anything else a line (inline) request: words separated by spaces or tabs, ended by \n or
 * \r\n, with Redis's quoting rules ("..." with \n \r \t \b \a \\ \" \xHH escapes, and '...').
 * Empty lines are skipped.
 *
 * The parser is stateless between calls except for struct proto_state, zero-copy (argv
 * points into the caller's buffer) and incremental: given a partial request it returns
 * PROTO_NEED and records how far it got, so the next call with the same buffer plus more
 * bytes resumes without rescanning.  The buffer may move (realloc) between calls: the state
 * keeps offsets, not pointers.  After a complete request (return > 0) the state is reset.
 *
 * Returns: > 0, bytes consumed (the request is in *req); PROTO_NEED (0), need more bytes;
 * < 0, a protocol error: proto_strerror() gives Redis's text ("Protocol error: ...") and
 * the connection should get "-ERR <text>" and be closed.
 *
 * A return > 0 with req->argc == 0 is an empty request ("*0\r\n", any negative count, or a
 * blank line): the bytes are consumed and the caller skips it without replying, as Redis.
 * req->argv stays valid until the buffer changes or the next proto_parse with this state.
 * On PROTO_NEED, st->need is the least total byte count the request needs once a bulk length
 * is known (else 0), so the caller can reserve room for a big value in one step.
 * Count lines ("*N", "$N") and line requests longer than max_inline are errors.
 */
#ifndef RK_PROTO_H
#define RK_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct arg {
    const char *p;
    size_t len;
};

#define PROTO_NEED 0
enum {
    PROTO_ERR_MBULK_LEN = -1,       /* "Protocol error: invalid multibulk length" */
    PROTO_ERR_BULK_LEN = -2,        /* "Protocol error: invalid bulk length" */
    PROTO_ERR_EXPECTED_DOLLAR = -3, /* "Protocol error: expected '$', got 'X'" */
    PROTO_ERR_BIG_INLINE = -4,      /* "Protocol error: too big inline request" */
    PROTO_ERR_BIG_MBULK = -5,       /* "Protocol error: too big mbulk count string" */
    PROTO_ERR_BIG_BULK = -6,        /* "Protocol error: too big bulk count string" */
    PROTO_ERR_QUOTES = -7,          /* "Protocol error: unbalanced quotes in request" */
};

struct proto_limits {
    size_t max_bulk;   /* proto-max-bulk-len, default 512 MiB */
    size_t max_inline; /* 64 KiB */
    long max_mbulk;    /* most arguments in one request: 1024*1024 as Redis */
};

struct proto_state {
    /* private to proto.c; zero it (or call proto_state_init) before the first call */
    size_t pos;   /* bytes scanned so far */
    long mbulk;   /* RESP: arguments announced, -1 when not yet read */
    long nargs;   /* arguments complete so far */
    long bulk;    /* RESP: length of the bulk being read, -1 when none */
    char badbyte; /* for PROTO_ERR_EXPECTED_DOLLAR */
    size_t need;  /* hint: total bytes the request needs when known, else 0 */
    size_t *offs; /* argument offsets and lengths, 2 per argument, grown as needed */
    size_t offs_cap;
    char *unq; /* line protocol: unquoted copies of quoted words */
    size_t unq_len, unq_cap;
};

struct req {
    int argc;
    struct arg *argv; /* points into the buffer (or into the state for unquoted words) */
    uint8_t proto;    /* enum proto (net/reply.h) */
    uint8_t crlf;     /* line protocol: the line ended with \r\n */
    size_t argv_cap;
};

void proto_state_init(struct proto_state *st);
void proto_state_free(struct proto_state *st);
void req_free(struct req *req);

ssize_t proto_parse(struct proto_state *st, const char *buf, size_t len,
                    const struct proto_limits *lim, struct req *req);
/* The message for an error return, without the "ERR " prefix.  For
 * PROTO_ERR_EXPECTED_DOLLAR it uses st->badbyte; buf must hold at least 64 bytes. */
const char *proto_strerror(ssize_t err, const struct proto_state *st, char *buf, size_t cap);

#endif

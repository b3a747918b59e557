/*
 * reply: reply encoders for both protocols.
 *
 * A struct reply appends encoded bytes to a buf.  proto says which encoding:
 *
 *   RESP2 (PROTO_RESP)          line protocol (PROTO_LINE)
 *   +OK\r\n                     OK<eol>
 *   -ERR msg\r\n                ERR msg<eol>   (the short forms, see reply_error_unknown)
 *   :42\r\n                     42<eol>
 *   $3\r\nfoo\r\n               foo<eol>
 *   $-1\r\n                     (nil)<eol>
 *   *2\r\n...                   each element on its own line; "(empty array)"<eol> for *0
 *   *-1\r\n                     (nil)<eol>
 *
 * <eol> is "\r\n" when crlf is set (the request ended in \r\n) and "\n" otherwise, so a client
 * gets back the line ending it used.
 *
 * ival and nelem are bookkeeping for replies that are combined from parts produced on other
 * workers: reply_int records its value in ival.  nelem is kept by the callers that emit
 * elements without a header (ks_keys_shard, the MGET parts); no encoder touches it.
 */
#ifndef RK_REPLY_H
#define RK_REPLY_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"

enum proto { PROTO_RESP = 0, PROTO_LINE = 1 };

struct reply {
    struct buf *b;
    uint8_t proto;  /* enum proto */
    uint8_t crlf;   /* line protocol: end lines with \r\n (else \n) */
    long long ival; /* last integer replied (for combining parts) */
    long nelem;     /* elements emitted without a header (for combining parts) */
};

static inline void reply_init(struct reply *r, struct buf *b, int proto, int crlf)
{
    r->b = b;
    r->proto = (uint8_t)proto;
    r->crlf = (uint8_t)crlf;
    r->ival = 0;
    r->nelem = 0;
}

void reply_status(struct reply *r, const char *s); /* s: "OK", "PONG", ... */
void reply_status_len(struct reply *r, const char *s, size_t n);
void reply_ok(struct reply *r);
/* s is the whole error text without the leading '-', e.g. "ERR syntax error" or
 * "WRONGTYPE Operation against a key holding the wrong kind of value". */
void reply_error(struct reply *r, const char *s);
void reply_errorf(struct reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void reply_int(struct reply *r, long long v);
void reply_bulk(struct reply *r, const char *p, size_t n);
void reply_bulk_cstr(struct reply *r, const char *s);
void reply_bulk_ll(struct reply *r, long long v); /* integer as a bulk string */
void reply_nil(struct reply *r);                  /* null bulk: $-1 */
void reply_nil_array(struct reply *r);            /* null array: *-1 */
void reply_array(struct reply *r, long n);        /* header of an array of n elements */
/* A multi-line bulk string (INFO, CLIENT LIST): in line protocol the text as it is. */
void reply_verbatim(struct reply *r, const char *p, size_t n);

/* The common errors, with Redis 7's texts. */
void reply_error_arity(struct reply *r, const char *cmdname); /* cmdname lower case */
/* Unknown command: RESP gets Redis's "ERR unknown command 'X', with args beginning with: 'a' "
 * (args shown as Redis does), the line protocol the short "ERR unknown command 'X'". */
struct arg;
void reply_error_unknown(struct reply *r, const struct arg *argv, int argc);

#define RK_ERR_SYNTAX "ERR syntax error"
#define RK_ERR_NOTINT "ERR value is not an integer or out of range"
#define RK_ERR_NOTFLOAT "ERR value is not a valid float"
#define RK_ERR_OVERFLOW "ERR increment or decrement would overflow"
#define RK_ERR_WRONGTYPE "WRONGTYPE Operation against a key holding the wrong kind of value"
#define RK_ERR_EXPIRE_TIME(cmd) "ERR invalid expire time in '" cmd "' command"
#define RK_ERR_NOAUTH "NOAUTH Authentication required."

#endif

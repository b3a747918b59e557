/*
 * buf: a growable byte buffer.  The bytes are p[0..len); cap is what is allocated.  Growth
 * doubles, so appends are amortised O(1).  A buf starts zeroed ({0}) and owns its memory.
 */
#ifndef RK_BUF_H
#define RK_BUF_H

#include <stddef.h>
#include <string.h>
#include "core/util.h"

struct buf {
    char *p;
    size_t len;
    size_t cap;
};

/* Make room for n more bytes; returns a pointer to p + len.  The caller writes there and then
 * adds to len.  Pointers into the buffer are invalidated by any reserve. */
char *buf_reserve(struct buf *b, size_t n);
void buf_free(struct buf *b);
/* Append printf-style formatted text. */
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes, moving the rest to the front. */
void buf_consume(struct buf *b, size_t n);

static inline void buf_append(struct buf *b, const void *data, size_t n)
{
    if (RK_UNLIKELY(b->cap - b->len < n))
        buf_reserve(b, n);
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
}

static inline void buf_putc(struct buf *b, char c)
{
    if (RK_UNLIKELY(b->cap == b->len))
        buf_reserve(b, 1);
    b->p[b->len++] = c;
}

#endif

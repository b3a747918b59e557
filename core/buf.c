/*
 * buf: growable byte buffer (see buf.h).  Capacity doubles and starts at 64 bytes, so a
 * connection's buffers settle at the size its traffic needs and appends stay amortised O(1).
 */
#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

char *buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return b->p + b->len;
    size_t need = b->len + n;
    rk_assert(need >= b->len); /* no overflow */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap * 2 > cap ? cap * 2 : need;
    b->p = rk_realloc(b->p, cap);
    b->cap = cap;
    return b->p + b->len;
}

void buf_free(struct buf *b)
{
    rk_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void buf_consume(struct buf *b, size_t n)
{
    rk_assert(n <= b->len);
    if (n < b->len)
        memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    rk_assert(n >= 0);
    char *p = buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

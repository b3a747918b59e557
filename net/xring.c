/*
 * xring: SPSC byte ring between two workers (see xring.h for the protocol).
 *
 * Positions are 64-bit byte counts that only grow; the offset in the buffer is pos & (cap-1).
 * The producer caches the consumer's head and the consumer caches the producer's tail, so
 * the shared cache lines are touched only when the cached view says the ring looks full
 * (producer) or empty (consumer).
 */
#include "net/xring.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define XR_ALIGN 8u

static inline size_t rec_size(size_t len)
{
    return (sizeof(struct xring_rec) + len + XR_ALIGN - 1) & ~(size_t)(XR_ALIGN - 1);
}

struct xring *xring_new(size_t cap)
{
    size_t c = 4096;
    while (c < cap)
        c <<= 1;
    struct xring *r = aligned_alloc(RK_CACHELINE, sizeof(*r));
    rk_assert(r != NULL);
    memset(r, 0, sizeof(*r));
    r->cap = c;
    r->data = aligned_alloc(RK_CACHELINE, c);
    rk_assert(r->data != NULL);
    return r;
}

void xring_free(struct xring *r)
{
    if (!r)
        return;
    free(r->data);
    free(r);
}

/* Producer: is there room for need bytes at position pos?  Refreshes the cached head (acquire:
 * the consumer finished reading the bytes before it released them). */
static bool room(struct xring *r, uint64_t pos, size_t need)
{
    if (pos + need - r->head_cache <= r->cap)
        return true;
    r->head_cache = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    return pos + need - r->head_cache <= r->cap;
}

void *xring_reserve(struct xring *r, size_t len, uint32_t type)
{
    rk_assert(len <= xring_max_payload(r));
    uint64_t pos = r->tail + r->pending; /* tail is only written by us: plain read is fine */
    size_t need = rec_size(len);
    size_t off = pos & (r->cap - 1);
    size_t to_end = r->cap - off;
    if (to_end < need) {
        /* Pad to the end, then the record starts at offset 0. */
        if (!room(r, pos, to_end + need))
            return NULL;
        struct xring_rec *pad = (struct xring_rec *)(r->data + off);
        pad->len = (uint32_t)(to_end - sizeof(struct xring_rec));
        pad->type = XR_PAD;
        r->pending += to_end;
        pos += to_end;
        off = 0;
    } else if (!room(r, pos, need)) {
        return NULL;
    }
    struct xring_rec *h = (struct xring_rec *)(r->data + off);
    h->len = (uint32_t)len;
    h->type = type;
    r->pending += need;
    return h + 1;
}

void xring_publish(struct xring *r)
{
    if (!r->pending)
        return;
    /* Release: the record bytes written above are visible before the new tail. */
    __atomic_store_n(&r->tail, r->tail + r->pending, __ATOMIC_RELEASE);
    r->pending = 0;
}

bool xring_readable(struct xring *r)
{
    if (r->head != r->tail_cache)
        return true;
    /* Acquire: pairs with the producer's release of tail. */
    r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    return r->head != r->tail_cache;
}

void *xring_peek(struct xring *r, size_t *len, uint32_t *type)
{
    for (;;) {
        if (!xring_readable(r))
            return NULL;
        struct xring_rec *h = (struct xring_rec *)(r->data + (r->head & (r->cap - 1)));
        if (h->type == XR_PAD) {
            /* Release: we are done with these bytes (nothing to read in padding). */
            __atomic_store_n(&r->head, r->head + rec_size(h->len), __ATOMIC_RELEASE);
            continue;
        }
        *len = h->len;
        *type = h->type;
        return h + 1;
    }
}

void *xring_peek_next(struct xring *r, uint64_t *cursor, size_t *len, uint32_t *type)
{
    for (;;) {
        if (*cursor == r->tail_cache) {
            /* Acquire: pairs with the producer's release of tail. */
            r->tail_cache = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
            if (*cursor == r->tail_cache)
                return NULL;
        }
        struct xring_rec *h = (struct xring_rec *)(r->data + (*cursor & (r->cap - 1)));
        *cursor += rec_size(h->len);
        if (h->type == XR_PAD)
            continue;
        *len = h->len;
        *type = h->type;
        return h + 1;
    }
}

void xring_consume(struct xring *r, size_t len)
{
    /* Release: our reads of the record happen before the producer may overwrite it. */
    __atomic_store_n(&r->head, r->head + rec_size(len), __ATOMIC_RELEASE);
}

/*
 * xring: the single-producer, single-consumer byte ring between two workers.
 *
 * There is one xring per ordered pair of workers (from -> to).  Only the "from" worker
 * writes records, only the "to" worker reads them, so each position has one writer and no
 * lock is needed: the producer publishes a record with a release store of tail after the
 * bytes are written; the consumer loads tail with acquire before reading them, and gives the
 * space back with a release store of head after it is done with the bytes, which the
 * producer loads with acquire before reusing them.
 *
 * A record is a struct xring_rec header (length, type) and a payload, 8-byte aligned, and
 * never wraps: when the space left before the end is too short, the producer writes a
 * padding record up to the end and starts again at offset 0.
 *
 * xring_reserve() never blocks: it returns NULL when the ring is full, and the caller keeps
 * the record on a local overflow list until space frees up (net/worker.c).
 */
#ifndef RK_XRING_H
#define RK_XRING_H

#include <stddef.h>
#include <stdint.h>
#include "core/util.h"

struct xring_rec {
    uint32_t len;  /* payload bytes (not counting this header) */
    uint32_t type; /* XR_PAD, or a type of the user's */
};

#define XR_PAD 0u

struct xring {
    _Alignas(RK_CACHELINE) uint64_t head; /* consumer's read position; written by consumer */
    uint64_t tail_cache;                  /* consumer's last view of tail */
    _Alignas(RK_CACHELINE) uint64_t tail; /* producer's write position; written by producer */
    uint64_t head_cache;                  /* producer's last view of head */
    uint64_t pending;                     /* producer: bytes reserved, not yet published */
    _Alignas(RK_CACHELINE) size_t cap;    /* bytes, a power of two */
    char *data;
};

/* A ring of cap bytes (rounded up to a power of two, at least 4 KiB). */
struct xring *xring_new(size_t cap);
void xring_free(struct xring *r);

/* The largest payload a single record may carry: a quarter of the ring. */
static inline size_t xring_max_payload(const struct xring *r)
{
    return r->cap / 4 - sizeof(struct xring_rec);
}

/*
 * Producer: space for a record of len payload bytes and the given type.  Returns a pointer to
 * the payload, or NULL when the ring is full right now.  The record becomes visible to the
 * consumer only at the next xring_publish().  len <= xring_max_payload().
 */
void *xring_reserve(struct xring *r, size_t len, uint32_t type);
/* Producer: make every reserved record visible to the consumer (one release store). */
void xring_publish(struct xring *r);

/*
 * Consumer: the next record's payload, or NULL when there is none.  *len and *type describe
 * it.  The payload stays valid until xring_consume().  Padding is skipped internally.
 */
void *xring_peek(struct xring *r, size_t *len, uint32_t *type);
/* Consumer: done with the record returned by the last xring_peek(). */
void xring_consume(struct xring *r, size_t len);
/* Consumer: true if a record is waiting (acquire load of tail). */
bool xring_readable(struct xring *r);
/*
 * Consumer, looking ahead without consuming: the payload of the record at *cursor (a position
 * at or past the head that a previous call returned, or xring_head()), or NULL when nothing
 * readable is there; *cursor then moves past it.  Padding is skipped.  A payload stays valid
 * until the consumer consumes past it.
 */
void *xring_peek_next(struct xring *r, uint64_t *cursor, size_t *len, uint32_t *type);
static inline uint64_t xring_head(const struct xring *r)
{
    return r->head;
}

#endif

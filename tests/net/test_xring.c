/*
 * xring unit tests: records come out in order and intact, padding at the wrap is invisible,
 * a full ring refuses instead of overwriting, and nothing is visible before publish.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "net/xring.h"

static void fill(char *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (char)(seed * 31 + i * 7);
}

static bool check(const char *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != (char)(seed * 31 + i * 7))
            return false;
    return true;
}

Test(xring, invisible_until_published)
{
    struct xring *r = xring_new(4096);
    char *p = xring_reserve(r, 10, 7);
    cr_assert_not_null(p);
    fill(p, 10, 1);
    size_t len;
    uint32_t type;
    cr_assert_null(xring_peek(r, &len, &type));
    xring_publish(r);
    char *q = xring_peek(r, &len, &type);
    cr_assert_not_null(q);
    cr_assert_eq(len, 10);
    cr_assert_eq(type, 7);
    cr_assert(check(q, 10, 1));
    xring_consume(r, len);
    cr_assert_null(xring_peek(r, &len, &type));
    xring_free(r);
}

Test(xring, full_ring_refuses_then_accepts_after_consume)
{
    struct xring *r = xring_new(4096);
    size_t rec = 8 + 120; /* header plus payload, 8-aligned */
    int n = 0;
    while (xring_reserve(r, 120, 1))
        n++;
    cr_assert_eq((size_t)n, 4096 / rec, "records that fit: %d", n);
    xring_publish(r);
    size_t len;
    uint32_t type;
    cr_assert_not_null(xring_peek(r, &len, &type));
    xring_consume(r, len);
    cr_assert_not_null(xring_reserve(r, 120, 1), "room again after one consume");
    xring_free(r);
}

Test(xring, wraps_with_padding_in_order)
{
    struct xring *r = xring_new(4096);
    unsigned next_w = 0, next_r = 0;
    /* Odd sizes so records straddle the end many times. */
    for (int round = 0; round < 20000; round++) {
        size_t sz = (size_t)(round * 37 % 900) + 1;
        char *p = xring_reserve(r, sz, 2 + (unsigned)(sz & 1));
        if (p) {
            fill(p, sz, next_w);
            memcpy(p, &next_w, sizeof(next_w) <= sz ? sizeof(next_w) : 0);
            next_w++;
            xring_publish(r);
        }
        size_t len;
        uint32_t type;
        char *q;
        while ((round % 3 == 0 || !p) && (q = xring_peek(r, &len, &type))) {
            unsigned seq = next_r;
            if (len >= sizeof(seq)) {
                memcpy(&seq, q, sizeof(seq));
                cr_assert_eq(seq, next_r, "out of order: got %u want %u", seq, next_r);
            }
            cr_assert_eq(type, 2 + (unsigned)(len & 1));
            next_r++;
            xring_consume(r, len);
        }
    }
    cr_assert_gt(next_r, 10000u);
    xring_free(r);
}

Test(xring, max_payload_fits)
{
    struct xring *r = xring_new(4096);
    size_t m = xring_max_payload(r);
    for (int i = 0; i < 10; i++) {
        char *p = xring_reserve(r, m, 3);
        cr_assert_not_null(p, "round %d", i);
        fill(p, m, (unsigned)i);
        xring_publish(r);
        size_t len;
        uint32_t type;
        char *q = xring_peek(r, &len, &type);
        cr_assert_not_null(q);
        cr_assert_eq(len, m);
        cr_assert(check(q, m, (unsigned)i));
        xring_consume(r, len);
    }
    xring_free(r);
}

/* Looking ahead: xring_peek_next walks the published records from the head, in order, across
 * the padding at the wrap, stops at the tail (and sees records published later), and
 * consumes nothing: xring_peek then returns the same records again. */
Test(xring, peek_next_looks_ahead_without_consuming)
{
    struct xring *r = xring_new(4096);
    unsigned next_w = 0, next_r = 0;
    for (int round = 0; round < 3000; round++) {
        for (int k = 0; k < 1 + round % 5; k++) {
            size_t sz = (size_t)((round * 7 + k * 13) % 300) + 4;
            char *p = xring_reserve(r, sz, 5);
            if (!p)
                break;
            memcpy(p, &next_w, sizeof(next_w));
            next_w++;
        }
        xring_publish(r);
        /* Look ahead over everything published, then read it all back. */
        uint64_t cur = xring_head(r);
        size_t len;
        uint32_t type;
        char *q;
        unsigned seen = 0;
        while ((q = xring_peek_next(r, &cur, &len, &type))) {
            unsigned seq;
            memcpy(&seq, q, sizeof(seq));
            cr_assert_eq(seq, next_r + seen, "ahead: got %u want %u", seq, next_r + seen);
            cr_assert_eq(type, 5);
            seen++;
        }
        cr_assert_eq(next_r + seen, next_w, "looked ahead over %u of %u", seen, next_w - next_r);
        while ((q = xring_peek(r, &len, &type))) {
            unsigned seq;
            memcpy(&seq, q, sizeof(seq));
            cr_assert_eq(seq, next_r, "after looking ahead: got %u want %u", seq, next_r);
            next_r++;
            xring_consume(r, len);
        }
        cr_assert_eq(next_r, next_w);
    }
    cr_assert_gt(next_w, 5000u);
    xring_free(r);
}

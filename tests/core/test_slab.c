/*
 * Tests for core/slab: chunks of every size class, references that decode back to their
 * chunks, reuse after free (within a class and of emptied slabs across classes), the resident
 * byte count, requests the pool must refuse, a reset that unmaps everything, and, under
 * AddressSanitizer, a double free caught.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/slab.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Is the page holding p mapped?  mincore fails with ENOMEM on an unmapped range. */
static bool mapped(const void *p)
{
    long pg = sysconf(_SC_PAGESIZE);
    unsigned char v;
    void *page = (void *)((uintptr_t)p & ~(uintptr_t)(pg - 1));
    return mincore(page, (size_t)pg, &v) == 0 || errno != ENOMEM;
}

struct chunk {
    unsigned char *p;
    uint32_t ref;
    size_t n;
};

static void fill(struct chunk *c, unsigned seed)
{
    for (size_t i = 0; i < c->n; i++)
        c->p[i] = (unsigned char)(seed * 31 + i);
}

static void check(const struct slab_pool *pool, const struct chunk *c, unsigned seed)
{
    cr_assert_eq(slab_ptr(pool, c->ref), c->p);
    cr_assert_eq(slab_ref_of(c->p), c->ref);
    cr_assert_eq(slab_pool_of(c->p), pool);
    for (size_t i = 0; i < c->n; i++)
        cr_assert_eq(c->p[i], (unsigned char)(seed * 31 + i), "chunk %u byte %zu", seed, i);
}

Test(slab, chunk_bytes_and_refusals)
{
    cr_assert_eq(slab_chunk_bytes(0), SLAB_ALIGN);
    cr_assert_eq(slab_chunk_bytes(1), SLAB_ALIGN);
    cr_assert_eq(slab_chunk_bytes(SLAB_ALIGN), SLAB_ALIGN);
    cr_assert_eq(slab_chunk_bytes(SLAB_ALIGN + 1), 2 * SLAB_ALIGN);
    cr_assert_eq(slab_chunk_bytes(SLAB_MAX), SLAB_MAX);
    cr_assert_leq(slab_chunk_bytes(51), 56); /* the 16-byte key, 32-byte value entry */

    struct slab_pool pool;
    slab_pool_init(&pool);
    uint32_t ref;
    cr_assert_null(slab_alloc(&pool, SLAB_MAX + 1, &ref));
    cr_assert_null(slab_alloc(&pool, 1 << 20, &ref));
    cr_assert_eq(slab_pool_mem(&pool), 0, "a refusal maps nothing");
    slab_pool_reset(&pool);
}

Test(slab, every_size_class)
{
    enum { PER = 40 };
    struct slab_pool pool;
    slab_pool_init(&pool);
    size_t nc = (SLAB_MAX + 1) * PER;
    struct chunk *c = calloc(nc, sizeof(*c));
    size_t k = 0;
    for (unsigned r = 0; r < PER; r++) {
        for (size_t n = 0; n <= SLAB_MAX; n++, k++) {
            c[k].n = n;
            c[k].p = slab_alloc(&pool, n, &c[k].ref);
            cr_assert_not_null(c[k].p);
            cr_assert_eq((uintptr_t)c[k].p % SLAB_ALIGN, 0);
            cr_assert_lt(c[k].ref, SLAB_REF_LIMIT);
            fill(&c[k], (unsigned)k);
        }
    }
    /* Nothing overlapped: every chunk still holds its own pattern. */
    for (k = 0; k < nc; k++)
        check(&pool, &c[k], (unsigned)k);
    /* Resident bytes: at least the chunks, and not much more (a partial page per slab). */
    size_t want = 0;
    for (k = 0; k < nc; k++)
        want += slab_chunk_bytes(c[k].n);
    cr_assert_geq(slab_pool_mem(&pool), want);
    cr_assert_lt(slab_pool_mem(&pool), want + want / 4 + (SLAB_MAX / SLAB_ALIGN) * 8192,
                 "mem %zu for %zu bytes of chunks", slab_pool_mem(&pool), want);
    for (k = 0; k < nc; k++)
        slab_free(c[k].p);
    free(c);
    slab_pool_reset(&pool);
}

Test(slab, reuse_after_free)
{
    struct slab_pool pool;
    slab_pool_init(&pool);
    uint32_t r1, r2;
    void *a = slab_alloc(&pool, 51, &r1);
    void *b = slab_alloc(&pool, 51, &r2);
    cr_assert_neq(a, b);
    size_t mem = slab_pool_mem(&pool);
    slab_free(a);
    uint32_t r3;
    void *c = slab_alloc(&pool, 50, &r3); /* same class */
    cr_assert_eq(c, a, "a freed chunk is handed out again first");
    cr_assert_eq(r3, r1);
    cr_assert_eq(slab_pool_mem(&pool), mem);
    slab_free(b);
    slab_free(c);

    /* Fill many slabs of one class, free all in random order: the slabs empty, and another
     * class then reuses them without touching a new page. */
    enum { N = 20000 };
    struct chunk *ch = calloc(N, sizeof(*ch));
    for (unsigned i = 0; i < N; i++) {
        ch[i].n = 52;
        ch[i].p = slab_alloc(&pool, 52, &ch[i].ref);
        fill(&ch[i], i);
    }
    size_t full = slab_pool_mem(&pool);
    cr_assert_geq(full, (size_t)N * 52);
    for (unsigned i = N - 1; i > 0; i--) {
        unsigned j = (unsigned)(rng() % (i + 1));
        struct chunk t = ch[i];
        ch[i] = ch[j];
        ch[j] = t;
    }
    for (unsigned i = 0; i < N; i++)
        slab_free(ch[i].p);
    cr_assert_eq(slab_pool_mem(&pool), full, "emptied slabs are kept, and counted");
    for (unsigned i = 0; i < N / 2; i++) {
        ch[i].n = 100;
        ch[i].p = slab_alloc(&pool, 100, &ch[i].ref);
        fill(&ch[i], i + 7);
    }
    /* At most the untouched tail of one slab (the one the first class left part-used) is
     * touched now; a new slab would be more. */
    cr_assert_leq(slab_pool_mem(&pool), full + SLAB_BYTES - 4096,
                  "another class did not reuse the emptied slabs: %zu > %zu", slab_pool_mem(&pool),
                  full);
    for (unsigned i = 0; i < N / 2; i++)
        check(&pool, &ch[i], i + 7);
    free(ch);
    slab_pool_reset(&pool);
}

/* Enough chunks to need several mapping batches (1, 1, 2, 4 and 8 MiB), freed and reallocated
 * at random: every reference keeps decoding to its chunk. */
Test(slab, many_chunks_random_churn)
{
    enum { N = 300000, OPS = 600000 };
    struct slab_pool pool;
    slab_pool_init(&pool);
    struct chunk *c = calloc(N, sizeof(*c));
    for (unsigned i = 0; i < N; i++) {
        c[i].n = 8 + rng() % 60;
        c[i].p = slab_alloc(&pool, c[i].n, &c[i].ref);
        cr_assert_not_null(c[i].p);
        fill(&c[i], i);
    }
    cr_assert_gt(slab_pool_mem(&pool), (size_t)8 << 20);
    for (unsigned op = 0; op < OPS; op++) {
        unsigned i = (unsigned)(rng() % N);
        check(&pool, &c[i], i);
        slab_free(c[i].p);
        c[i].n = rng() % 2 ? 8 + rng() % 60 : rng() % (SLAB_MAX + 1);
        c[i].p = slab_alloc(&pool, c[i].n, &c[i].ref);
        fill(&c[i], i);
    }
    for (unsigned i = 0; i < N; i++)
        check(&pool, &c[i], i);
    free(c);
    slab_pool_reset(&pool);
}

Test(slab, reset_unmaps_everything)
{
    enum { N = 50000 };
    struct slab_pool pool;
    slab_pool_init(&pool);
    void **p = calloc(N, sizeof(*p));
    uint32_t ref;
    for (unsigned i = 0; i < N; i++) {
        p[i] = slab_alloc(&pool, 40, &ref);
        memset(p[i], 0xab, 40);
    }
    cr_assert(mapped(p[0]) && mapped(p[N - 1]));
    slab_pool_reset(&pool);
    cr_assert_eq(slab_pool_mem(&pool), 0);
    cr_assert(!mapped(p[0]), "the first chunk's page is still mapped after reset");
    cr_assert(!mapped(p[N - 1]), "the last chunk's page is still mapped after reset");
    /* Usable again. */
    void *q = slab_alloc(&pool, 40, &ref);
    cr_assert_not_null(q);
    cr_assert_eq(slab_ptr(&pool, ref), q);
    slab_free(q);
    slab_pool_reset(&pool);
    free(p);
}

/* Two pools side by side: a chunk names its own pool, and references are per pool. */
Test(slab, pools_are_separate)
{
    struct slab_pool a, b;
    slab_pool_init(&a);
    slab_pool_init(&b);
    uint32_t ra, rb;
    void *pa = slab_alloc(&a, 30, &ra);
    void *pb = slab_alloc(&b, 30, &rb);
    cr_assert_eq(slab_pool_of(pa), &a);
    cr_assert_eq(slab_pool_of(pb), &b);
    cr_assert_eq(ra, rb, "fresh pools hand out the same first reference");
    cr_assert_eq(slab_ptr(&a, ra), pa);
    cr_assert_eq(slab_ptr(&b, rb), pb);
    slab_free(pa);
    slab_free(pb);
    slab_pool_reset(&a);
    slab_pool_reset(&b);
}

#ifdef SLAB_ASAN
Test(slab, double_free_is_caught, .signal = SIGABRT)
{
    struct slab_pool pool;
    slab_pool_init(&pool);
    uint32_t ref;
    void *a = slab_alloc(&pool, 20, &ref);
    void *b = slab_alloc(&pool, 20, &ref);
    (void)b;
    slab_free(a);
    slab_free(a);
}
#endif

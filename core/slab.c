/*
 * slab: size-classed chunks in 64 KiB slabs, with 32-bit references.
 *
 * Why.  A cache's memory is mostly many small entries.  malloc gives each one a header and
 * rounds it to 16 bytes (a 51-byte entry takes a 64-byte chunk), and a table that points at
 * entries spends 8 bytes per slot on the pointer.  Here a chunk has no header, sizes step by
 * 4 bytes (a 51-byte entry takes 52), and a chunk is named by a 4-byte reference.
 *
 * Layout.  Memory comes from the kernel in extents of 1 MiB (mmap, MAP_NORESERVE), mapped in
 * batches that double up to 64 extents, so even a large pool is a few hundred mappings and
 * a small one reserves 1 MiB of address space and touches only what it uses.  Each batch is
 * aligned to SLAB_BYTES and carved, in address order, into slabs of SLAB_BYTES.  A slab is a
 * 64-byte header followed by equal chunks of one size class; chunk addresses are aligned to
 * SLAB_ALIGN, so from any chunk the header is one mask away.
 *
 * References.  Lay the extents end to end in directory order: a reference is the offset of a
 * chunk in that sequence in 4-byte units, so ref >> 18 picks the extent and the low 18 bits
 * the unit in it (slab_ptr, inline in the header).  31 bits of 4 bytes address 8 GiB per
 * pool; past that slab_alloc says no and the caller uses malloc.  A slab's header keeps the
 * reference of its first byte, so a chunk's reference is found from its address too.
 *
 * Allocation.  Each slab has its own free list (the link, a 16-bit unit offset, lives in the
 * free chunk's first two bytes) and a bump offset below which chunks have been handed out at
 * least once; pages above the bump are never touched, so a half-used slab costs only the
 * pages it reached.  Each size class has a list of its slabs that have room; allocation takes
 * the first, from its free list if any, else from its bump; a slab that fills leaves the
 * list and comes back when a chunk of it is freed.  A slab whose last chunk is freed goes to
 * the pool's list of empty slabs, for any class to reuse.  Those stay resident: this is a
 * cache that will fill again, and giving pages back one slab at a time would put a syscall
 * on the request path; slab_pool_reset (FLUSHALL) gives everything back.  Nothing here locks:
 * a pool has one owner thread.
 *
 * Accounting.  p->mem counts resident bytes: for each slab, its header page and the pages
 * below the highest bump it ever had, plus the directory.  That is what the process's RSS
 * pays, so it is what the owner reports.
 *
 * AddressSanitizer.  Chunks not handed out, and the tail of a chunk beyond the requested
 * size, are poisoned, so a use after free or an overflow into the next entry is reported as
 * with malloc; a double free is caught by finding the chunk already poisoned.  Classes step
 * by 8 bytes under ASan, its shadow granule, so poisoning is exact.  Before an extent is
 * unmapped its shadow is cleared, so whatever is mapped there later starts clean.
 */
#include "core/slab.h"

#include <string.h>
#include <sys/mman.h>

#include "core/util.h"

#ifdef SLAB_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define HDR_BYTES 64 /* slab header; chunks start here */
#define PAGE 4096    /* resident-memory accounting granule */
#define BATCH_MAX 64 /* extents per mapping, at most */
#define HDR_UNITS (HDR_BYTES >> SLAB_UNIT_SHIFT)
#define EXT_BYTES ((size_t)1 << SLAB_EXT_SHIFT)
/* Extents per pool: references stay below SLAB_REF_LIMIT. */
#define EXT_MAX (SLAB_REF_LIMIT >> SLAB_EXT_UNITS_SHIFT)

struct slab {
    struct slab_pool *pool;
    struct slab *prev, *next; /* on the class's list (both), or the empty list (next) */
    uint32_t ref0;            /* reference of the slab's first byte */
    uint32_t touched;         /* bytes from the slab start that are resident, page-rounded */
    uint16_t size;            /* chunk bytes; 0 while the slab is empty */
    uint16_t free;            /* first free chunk, in units from the slab start; 0: none */
    uint16_t bump;            /* units below this have been handed out at least once */
    uint16_t used;            /* chunks handed out now */
    uint8_t listed;           /* on partial[size / SLAB_ALIGN] */
};

_Static_assert(sizeof(struct slab) <= HDR_BYTES, "slab header outgrew HDR_BYTES");
_Static_assert(SLAB_BYTES >> SLAB_UNIT_SHIFT <= 65535, "unit offsets must fit 16 bits");
_Static_assert(HDR_BYTES % 8 == 0 && SLAB_MAX % SLAB_ALIGN == 0, "chunk alignment");

struct slab_map {
    char *addr;
    size_t len;
};

static inline struct slab *slab_of(const void *chunk)
{
    return (struct slab *)((uintptr_t)chunk & ~(uintptr_t)(SLAB_BYTES - 1));
}

void slab_pool_init(struct slab_pool *p)
{
    memset(p, 0, sizeof(*p));
}

struct slab_pool *slab_pool_of(const void *chunk)
{
    return slab_of(chunk)->pool;
}

uint32_t slab_ref_of(const void *chunk)
{
    const struct slab *sl = slab_of(chunk);
    return sl->ref0 + (uint32_t)(((const char *)chunk - (const char *)sl) >> SLAB_UNIT_SHIFT);
}

/* ---------------------------------------------------------------------------------------- */
/* Extents                                                                                  */

/* len bytes of fresh address space aligned to SLAB_BYTES, or NULL. */
static char *map_aligned(size_t len)
{
    size_t want = len + SLAB_BYTES;
    char *m = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    char *a = (char *)(((uintptr_t)m + SLAB_BYTES - 1) & ~(uintptr_t)(SLAB_BYTES - 1));
    size_t head = (size_t)(a - m), tail = want - head - len;
    if (head)
        munmap(m, head);
    if (tail)
        munmap(a + len, tail);
    /* Transparent huge pages would make the first touch of an extent resident 2 MiB at a
     * time; a small pool must cost only the pages it uses.  Failure only costs memory. */
    madvise(a, len, MADV_NOHUGEPAGE);
    return a;
}

/* Map the next batch of extents; false when the references or the kernel say no. */
static bool pool_grow(struct slab_pool *p)
{
    if (p->next >= EXT_MAX)
        return false;
    uint32_t n = p->next ? p->next : 1;
    if (n > BATCH_MAX)
        n = BATCH_MAX;
    if (n > EXT_MAX - p->next)
        n = EXT_MAX - p->next;
    size_t len = (size_t)n * EXT_BYTES;
    char *m = map_aligned(len);
    if (!m)
        return false;

    size_t before = p->ext_cap * sizeof(char *) + p->nmaps * sizeof(struct slab_map);
    if (p->next + n > p->ext_cap) {
        uint32_t cap = p->ext_cap ? p->ext_cap : 4;
        while (cap < p->next + n)
            cap *= 2;
        p->ext = rk_realloc(p->ext, cap * sizeof(char *));
        p->ext_cap = cap;
    }
    p->maps = rk_realloc(p->maps, (p->nmaps + 1) * sizeof(struct slab_map));
    p->maps[p->nmaps++] = (struct slab_map){m, len};
    p->mem += p->ext_cap * sizeof(char *) + p->nmaps * sizeof(struct slab_map) - before;

    for (uint32_t i = 0; i < n; i++)
        p->ext[p->next + i] = m + (size_t)i * EXT_BYTES;
    p->fresh = m;
    p->fresh_end = m + len;
    p->fresh_ref = p->next << SLAB_EXT_UNITS_SHIFT; /* extents are consecutive: refs too */
    p->next += n;
    return true;
}

/* An empty slab: a kept one, else the next never-carved one.  NULL when out of memory. */
static struct slab *slab_get(struct slab_pool *p)
{
    struct slab *sl = p->empty;
    if (sl) {
        p->empty = sl->next;
        return sl;
    }
    if (!p->fresh && !pool_grow(p))
        return NULL;
    sl = (struct slab *)p->fresh;
    p->fresh += SLAB_BYTES;
    if (p->fresh == p->fresh_end)
        p->fresh = NULL;
    memset(sl, 0, sizeof(*sl));
    sl->pool = p;
    sl->ref0 = p->fresh_ref;
    p->fresh_ref += SLAB_BYTES >> SLAB_UNIT_SHIFT;
    sl->bump = HDR_UNITS;
    sl->touched = PAGE;
    p->mem += PAGE;
    POISON((char *)sl + HDR_BYTES, SLAB_BYTES - HDR_BYTES);
    return sl;
}

void slab_pool_reset(struct slab_pool *p)
{
    for (uint32_t i = 0; i < p->nmaps; i++) {
        UNPOISON(p->maps[i].addr, p->maps[i].len);
        munmap(p->maps[i].addr, p->maps[i].len);
    }
    rk_free(p->maps);
    rk_free(p->ext);
    slab_pool_init(p);
}

/* ---------------------------------------------------------------------------------------- */
/* Chunks                                                                                   */

static void list_push(struct slab_pool *p, struct slab *sl)
{
    struct slab **head = &p->partial[sl->size / SLAB_ALIGN];
    sl->prev = NULL;
    sl->next = *head;
    if (*head)
        (*head)->prev = sl;
    *head = sl;
    sl->listed = 1;
}

static void list_unlink(struct slab_pool *p, struct slab *sl)
{
    if (sl->prev)
        sl->prev->next = sl->next;
    else
        p->partial[sl->size / SLAB_ALIGN] = sl->next;
    if (sl->next)
        sl->next->prev = sl->prev;
    sl->prev = sl->next = NULL;
    sl->listed = 0;
}

static inline bool slab_full(const struct slab *sl)
{
    return !sl->free && ((size_t)sl->bump << SLAB_UNIT_SHIFT) + sl->size > SLAB_BYTES;
}

void *slab_alloc(struct slab_pool *p, size_t n, uint32_t *ref)
{
    if (n > SLAB_MAX)
        return NULL;
    size_t size = slab_chunk_bytes(n);
    struct slab *sl = p->partial[size / SLAB_ALIGN];
    if (RK_UNLIKELY(!sl)) {
        sl = slab_get(p);
        if (!sl)
            return NULL;
        sl->size = (uint16_t)size;
        list_push(p, sl);
    }

    char *base = (char *)sl;
    uint32_t off;
    if (sl->free) {
        off = sl->free;
        char *c = base + ((size_t)off << SLAB_UNIT_SHIFT);
        UNPOISON(c, size);
        memcpy(&sl->free, c, sizeof(sl->free));
    } else {
        off = sl->bump;
        sl->bump = (uint16_t)(sl->bump + (size >> SLAB_UNIT_SHIFT));
        size_t end = (size_t)sl->bump << SLAB_UNIT_SHIFT;
        if (end > sl->touched) {
            size_t t = (end + PAGE - 1) & ~(size_t)(PAGE - 1);
            p->mem += t - sl->touched;
            sl->touched = (uint32_t)t;
        }
    }
    sl->used++;
    if (slab_full(sl))
        list_unlink(p, sl);

    char *c = base + ((size_t)off << SLAB_UNIT_SHIFT);
    /* At least one byte stays addressable, so that slab_free can tell a live chunk. */
    size_t live = n ? n : 1;
    UNPOISON(c, live);
    POISON(c + live, size - live);
    *ref = sl->ref0 + off;
    return c;
}

void slab_free(void *chunk)
{
    struct slab *sl = slab_of(chunk);
    struct slab_pool *p = sl->pool;
    char *c = chunk;
    size_t off = (size_t)(c - (char *)sl) >> SLAB_UNIT_SHIFT;
    rk_assert(sl->used > 0 && off >= HDR_UNITS && off < sl->bump);
    rk_assert((off - HDR_UNITS) % (sl->size >> SLAB_UNIT_SHIFT) == 0);
#ifdef SLAB_ASAN
    rk_assert(!__asan_address_is_poisoned(c)); /* else: a double free */
#endif
    UNPOISON(c, sl->size);
    memcpy(c, &sl->free, sizeof(sl->free));
    POISON(c, sl->size);
    sl->free = (uint16_t)off;
    sl->used--;
    if (sl->used == 0) {
        /* Empty: any class may have it.  Its pages stay resident (see the top). */
        if (sl->listed)
            list_unlink(p, sl);
        sl->size = 0;
        sl->free = 0;
        sl->bump = HDR_UNITS;
        POISON((char *)sl + HDR_BYTES, SLAB_BYTES - HDR_BYTES);
        sl->next = p->empty;
        p->empty = sl;
    } else if (!sl->listed) {
        list_push(p, sl);
    }
}

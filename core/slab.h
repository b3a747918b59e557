/*
 * slab: a single-owner allocator for small chunks, each also named by a 32-bit reference.
 *
 * A pool hands out chunks of up to SLAB_MAX bytes with no per-chunk header, in size classes
 * SLAB_ALIGN bytes apart (4, or 8 under AddressSanitizer so that chunks can be poisoned
 * exactly).  Every chunk has a reference below 2^31 that slab_ptr() turns back into its
 * address with one load from a small directory, so a hash table can store 4-byte references
 * instead of 8-byte pointers.  Exactly one thread uses a pool: no locks, no atomics.
 *
 * Memory is taken from the kernel in extents (mmap), carved into SLAB_BYTES slabs aligned to
 * SLAB_BYTES, so the slab holding a chunk is found by masking the chunk's address, and its
 * header gives the pool, the chunk size and the reference.  Only touched pages are resident;
 * slab_pool_mem() counts those.  An emptied slab is kept for reuse by any size class;
 * slab_pool_reset() gives every extent back to the kernel.
 */
#ifndef RK_SLAB_H
#define RK_SLAB_H

#include <stddef.h>
#include <stdint.h>

#define SLAB_BYTES (64 * 1024)    /* one slab; slabs are aligned to this */
#define SLAB_MAX 512              /* the largest chunk served; larger requests get NULL */
#define SLAB_REF_LIMIT (1u << 31) /* every reference is below this */
#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif
#ifdef SLAB_ASAN
#define SLAB_ALIGN 8 /* size class step and chunk alignment: ASan poisons 8-byte granules */
#else
#define SLAB_ALIGN 4 /* size class step and chunk alignment */
#endif

/* A reference counts 4-byte units through the extents laid end to end; an extent holds
 * 2^SLAB_EXT_UNITS_SHIFT units. */
#define SLAB_UNIT_SHIFT 2
#define SLAB_EXT_SHIFT 20 /* extent bytes: 1 MiB */
#define SLAB_EXT_UNITS_SHIFT (SLAB_EXT_SHIFT - SLAB_UNIT_SHIFT)
#define SLAB_CLASSES (SLAB_MAX / SLAB_ALIGN)

struct slab;     /* a slab's header (slab.c) */
struct slab_map; /* one mapping of extents (slab.c) */

/* One pool.  Treat the fields as private: only the inline slab_ptr() reads ext. */
struct slab_pool {
    char **ext;                             /* extent base addresses, by ref >> 18 */
    uint32_t next;                          /* extents in use */
    uint32_t ext_cap;                       /* capacity of ext */
    char *fresh;                            /* next never-carved slab, or NULL */
    char *fresh_end;                        /* end of the mapping fresh is in */
    uint32_t fresh_ref;                     /* the reference of fresh's first byte */
    uint32_t nmaps;                         /* mappings, to unmap at reset */
    struct slab_map *maps;                  /* nmaps mappings */
    struct slab *empty;                     /* emptied slabs kept for reuse */
    struct slab *partial[SLAB_CLASSES + 1]; /* per class: slabs with room, LIFO */
    size_t mem;                             /* resident bytes (see slab_pool_mem) */
};

/* An empty pool; it maps nothing until the first allocation. */
void slab_pool_init(struct slab_pool *p);
/* Give every extent back to the kernel: every chunk of p becomes invalid and p is as after
 * slab_pool_init. */
void slab_pool_reset(struct slab_pool *p);

/* A chunk of at least n bytes (n <= SLAB_MAX) from p, and its reference in *ref.  NULL when n
 * is above SLAB_MAX, when p has used up its references (SLAB_REF_LIMIT units of 4 bytes:
 * 8 GiB) or when the kernel refuses memory: the caller falls back to malloc. */
void *slab_alloc(struct slab_pool *p, size_t n, uint32_t *ref);
/* Return a chunk to its pool (found from the address).  The pool's owner thread only. */
void slab_free(void *chunk);
/* The pool a chunk came from, and the chunk's reference. */
struct slab_pool *slab_pool_of(const void *chunk);
uint32_t slab_ref_of(const void *chunk);
/* Bytes a chunk for n bytes takes (n rounded up to its size class); n <= SLAB_MAX. */
static inline size_t slab_chunk_bytes(size_t n)
{
    return n ? (n + SLAB_ALIGN - 1) & ~(size_t)(SLAB_ALIGN - 1) : SLAB_ALIGN;
}

/* The chunk named by ref, which must be a live chunk of p. */
static inline void *slab_ptr(const struct slab_pool *p, uint32_t ref)
{
    return p->ext[ref >> SLAB_EXT_UNITS_SHIFT] +
           ((size_t)(ref & ((1u << SLAB_EXT_UNITS_SHIFT) - 1)) << SLAB_UNIT_SHIFT);
}

/* Resident bytes: the touched pages of every slab (emptied ones kept for reuse included) and
 * the directory.  Extents' untouched pages cost no memory and are not counted. */
static inline size_t slab_pool_mem(const struct slab_pool *p)
{
    return p->mem;
}

#endif

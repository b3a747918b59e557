/*
 * shard: one single-owner hash table of the keyspace.
 *
 * Layout.  A table of 2^k slots is two parallel arrays in one allocation: an array of 32-bit entry
 * references and an array of one-byte tags.  A tag is 0 (empty), 1 (tombstone: something was here,
 * keep probing) or 0x80 | seven bits of the key's hash (live).  The bucket is the hash's LOW bits;
 * the tag takes bits 32..38, so it is independent of the bucket for any table below 2^32 slots and
 * of the shard choice, which uses the TOP bits.  Probing is linear and scans the tags eight at a
 * time with word-wide byte tricks (SWAR): a miss usually reads one or two tag words and no entry at
 * all, a hit reads the entries whose tag matches, about 1 in 128 of the others.  The tag array has
 * 8 extra bytes at its end that mirror its first 8, so an 8-byte load at any slot index never needs
 * a wrap-around branch.
 *
 * Why this layout: the project's memory target counts every byte.  A slot costs 5 bytes
 * (reference plus tag); the full hash is not stored anywhere (the rare paths that need it,
 * resizing and SCAN, recompute it from the key), and an entry is a single block:
 *
 *     flags(1) | varint klen | varint vlen | [deadline, 8 bytes, only if flags say so] |
 *     key bytes | value bytes
 *
 * Entry memory.  An entry made by shard_entry_new and up to SLAB_MAX bytes is a chunk of the
 * shard's own slab pool (core/slab.h): no allocator header, size rounded up to 4 bytes, so a
 * 16-byte key with a 32-byte value takes 52 bytes (a malloc chunk would be 64).  Larger ones,
 * and every entry made by kv_entry_new (which knows no shard), are malloc blocks, marked by
 * the ENT_HEAP flag.  A slot's 32-bit reference is either a slab reference (below 2^31,
 * decoded by slab_ptr: one load from a small directory) or REF_HEAP | i, where i indexes the
 * heap directory of the slot's table: an array of pointers to the malloc'd entries in that
 * table, with a free list threaded through the unused ones.  A malloc'd entry thus costs 8
 * more bytes than a slot pointer would, which only entries above SLAB_MAX (where 8 bytes are
 * under 2%) and those of callers still on kv_entry_new pay.  The directory belongs to the
 * table, not the shard, so that it is rebuilt with the table: a move to the new table takes
 * an index in the new table's directory, and a table shrinks its directory with it.  Slab
 * chunks find their pool, and the pool its shard, from the chunk's address (slab headers are
 * found by masking), so kv_entry_free works on either kind without being told the shard.  A
 * flush gives the whole pool back to the kernel at once instead of freeing entries one by one.
 *
 * Load.  A table's fill (live plus tombstones) stays at or below 7/8.  When a put would pass
 * that, the table is rebuilt: at twice the size when live entries are more than half the
 * limit, at the same size otherwise (tombstones dominate, and a rebuild drops them).  When
 * deletes leave the table below 1/16 live it is rebuilt at a quarter of the size.  A delete
 * whose next slot is empty leaves an empty slot rather than a tombstone and clears the
 * tombstones just behind it: that is safe because an entry's probe run from its home bucket
 * never contains an empty slot, so no run can pass through slots followed by an empty one.
 *
 * Incremental resize.  A rebuild allocates the new table and keeps the old one; every get,
 * put and delete first moves MIG_STEP old slots, in index order, to the new table
 * (shard_rehash_step and the expiry sweep move more).  While both exist, lookups try the new
 * table then the old; puts always go to the new table, deleting a same-key entry from the
 * old one, so a key lives in exactly one table.  The old table never gets an insert, and a
 * slot leaving it (moved or deleted) becomes a tombstone, never an empty slot and never a
 * shifted entry, so the runs of the entries still waiting there stay intact.  The new table
 * cannot fill up before the move ends (no resize ever has to wait for another): each
 * operation adds at most one slot to its fill and moves MIG_STEP = 32 slots, so an old table
 * of N slots is drained in at most N/32 operations, and
 *   grow:   fill starts <= 7N/8 (old live),  ends <= 7N/8 + N/32  <  7/8 of 2N;
 *   same:   fill starts <  7N/16,            ends <  7N/16 + N/32  <  7/8 of N;
 *   shrink: fill starts <  N/16,             ends <  N/16 + N/32   <  7/8 of N/4.
 *
 * Table memory.  A table of TAB_MAP_MIN bytes or more is mapped with mmap and unmapped when
 * it is replaced, not malloc'd.  A growing shard frees each table as it doubles; in a worker's
 * malloc arena those freed tables stay resident as holes that nothing of the same size comes
 * to fill, now that entries live in slabs: measured, about 10 MB per million keys.  Tables
 * below the threshold are few and small enough for malloc.
 *
 * Counters.  count, expires and mem are written only by the owner, with relaxed atomic
 * stores, so that a stats reader on another thread never sees a torn value; they order
 * nothing else, so relaxed is enough.  The owner reads its own counters plainly.  mem is the
 * owner's own_mem (tables, heap directories, malloc'd entries) plus the pool's resident bytes,
 * republished after every change of either.
 */
#include "core/shard.h"

#include <malloc.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/slab.h"
#include "core/util.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "shard.c's tag scanning assumes a little-endian machine"
#endif

#define TAG_EMPTY 0x00
#define TAG_TOMB 0x01
#define TAG_LIVE 0x80 /* set in every live tag; the other 7 bits are hash bits 32..38 */
#define TAG_PAD 8     /* mirrored tag bytes after the last slot */
#define TAB_INIT 16   /* initial (and minimum) slots; must be >= TAG_PAD */
#define MIG_STEP 32   /* old slots moved by each get/put/del during a resize */
#define CLEAR_MAX 64  /* tombstones cleared behind a delete, at most */
#define NOT_FOUND SIZE_MAX
#define TAB_MAP_MIN (16 * 1024) /* tables this big are mmapped (see "Table memory") */
#define TAB_PAGE 4096

#define B_ONES 0x0101010101010101ULL
#define B_HIGH 0x8080808080808080ULL

#define ENT_DEADLINE 0x01 /* entry flag: an 8-byte deadline follows the lengths */
#define ENT_HEAP 0x02     /* entry flag: a malloc block, not a slab chunk */

#define REF_HEAP 0x80000000u /* a slot reference with this bit is a heap directory index */
#define HEAP_INIT 8          /* initial (and minimum) heap directory capacity */
#define HEAP_NONE UINT32_MAX /* end of the heap directory's free list */

_Static_assert(SLAB_REF_LIMIT <= REF_HEAP, "slab references must leave REF_HEAP clear");

struct kv_entry {
    uint8_t flags;
    uint8_t rest[]; /* varint klen, varint vlen, [deadline], key, value */
};

struct table {
    uint32_t *slots; /* mask + 1 references; meaningful only where the tag is live */
    uint8_t *tags;   /* mask + 1 + TAG_PAD bytes, in the same allocation as slots */
    size_t mask;     /* slots - 1 */
    size_t live;
    size_t tombs;
    uintptr_t *heap;    /* heap directory: entry pointers; free ones hold next << 1 | 1 */
    uint32_t heap_cap;  /* capacity of heap */
    uint32_t heap_top;  /* indices below this have been used */
    uint32_t heap_free; /* first free index below heap_top, or HEAP_NONE */
    uint32_t heap_live; /* indices in use */
};

struct shard {
    struct table cur;      /* where puts go; the new table during a resize */
    struct table old;      /* being drained during a resize; old.slots == NULL otherwise */
    size_t mig;            /* next old slot to move */
    size_t exp_cursor;     /* the active expiry sweep's next slot in cur */
    size_t count;          /* live entries (relaxed atomic, see above) */
    size_t expires;        /* entries with a deadline (relaxed atomic) */
    size_t mem;            /* own_mem + the pool's resident bytes (relaxed atomic) */
    size_t own_mem;        /* tables, heap directories, malloc'd entries (owner only) */
    struct slab_pool pool; /* the slab chunks of this shard's small entries */
};

/* ---------------------------------------------------------------------------------------- */
/* Entries                                                                                  */

uint64_t kv_hash(const char *key, size_t klen)
{
    return XXH3_64bits(key, klen);
}

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t varint_put(uint8_t *p, size_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static inline const uint8_t *varint_get(const uint8_t *p, size_t *out)
{
    size_t v = *p & 0x7f;
    unsigned shift = 7;
    while (*p++ & 0x80) {
        v |= (size_t)(*p & 0x7f) << shift;
        shift += 7;
    }
    *out = v;
    return p;
}

/* Parse e's header: returns a pointer to the key bytes; the value follows the key. */
static inline const char *ent_parse(const struct kv_entry *e, size_t *klen, size_t *vlen)
{
    const uint8_t *p = varint_get(e->rest, klen);
    p = varint_get(p, vlen);
    if (e->flags & ENT_DEADLINE)
        p += sizeof(int64_t);
    return (const char *)p;
}

/* Bytes of an entry with these lengths. */
static size_t ent_bytes(size_t klen, size_t vlen, bool dl)
{
    rk_assert(klen <= SIZE_MAX / 4 && vlen <= SIZE_MAX / 4);
    return 1 + varint_len(klen) + varint_len(vlen) + (dl ? sizeof(int64_t) : 0) + klen + vlen;
}

/* Fill the ent_bytes() bytes at e. */
static struct kv_entry *ent_fill(struct kv_entry *e, uint8_t flags, const char *key, size_t klen,
                                 const char *val, size_t vlen, int64_t expire_ms)
{
    bool dl = expire_ms != KV_NO_EXPIRE;
    uint8_t *p = e->rest;

    e->flags = (uint8_t)(flags | (dl ? ENT_DEADLINE : 0));
    p += varint_put(p, klen);
    p += varint_put(p, vlen);
    if (dl) {
        memcpy(p, &expire_ms, sizeof(expire_ms));
        p += sizeof(expire_ms);
    }
    if (klen)
        memcpy(p, key, klen);
    if (vlen)
        memcpy(p + klen, val, vlen);
    return e;
}

struct kv_entry *kv_entry_new(const char *key, size_t klen, const char *val, size_t vlen,
                              int64_t expire_ms)
{
    size_t n = ent_bytes(klen, vlen, expire_ms != KV_NO_EXPIRE);
    return ent_fill(rk_malloc(n), ENT_HEAP, key, klen, val, vlen, expire_ms);
}

static void mem_sync(struct shard *s);

struct kv_entry *shard_entry_new(struct shard *s, const char *key, size_t klen, const char *val,
                                 size_t vlen, int64_t expire_ms)
{
    size_t n = ent_bytes(klen, vlen, expire_ms != KV_NO_EXPIRE);
    uint32_t ref;
    struct kv_entry *e = slab_alloc(&s->pool, n, &ref);
    if (!e)
        return ent_fill(rk_malloc(n), ENT_HEAP, key, klen, val, vlen, expire_ms);
    mem_sync(s);
    return ent_fill(e, 0, key, klen, val, vlen, expire_ms);
}

/* The shard whose pool holds slab entry e. */
static inline struct shard *ent_owner(const struct kv_entry *e)
{
    return (struct shard *)((char *)slab_pool_of(e) - offsetof(struct shard, pool));
}

void kv_entry_free(struct kv_entry *e)
{
    if (e->flags & ENT_HEAP) {
        rk_free(e);
        return;
    }
    struct shard *s = ent_owner(e);
    slab_free(e);
    mem_sync(s);
}

const char *kv_entry_key(const struct kv_entry *e, size_t *klen)
{
    size_t vlen;
    return ent_parse(e, klen, &vlen);
}

const char *kv_entry_val(const struct kv_entry *e, size_t *vlen)
{
    size_t klen;
    const char *k = ent_parse(e, &klen, vlen);
    return k + klen;
}

int64_t kv_entry_expire(const struct kv_entry *e)
{
    if (!(e->flags & ENT_DEADLINE))
        return KV_NO_EXPIRE;
    size_t n;
    const uint8_t *p = varint_get(varint_get(e->rest, &n), &n);
    int64_t dl;
    memcpy(&dl, p, sizeof(dl));
    return dl;
}

/* A slab entry takes its chunk; glibc keeps one size_t of header per chunk on top of the
 * usable size. */
size_t kv_entry_mem(const struct kv_entry *e)
{
    if (e->flags & ENT_HEAP)
        return malloc_usable_size((void *)e) + sizeof(size_t);
    size_t klen, vlen;
    const char *k = ent_parse(e, &klen, &vlen);
    return slab_chunk_bytes((size_t)(k - (const char *)e) + klen + vlen);
}

static uint64_t ent_hash(const struct kv_entry *e)
{
    size_t klen, vlen;
    const char *k = ent_parse(e, &klen, &vlen);
    return kv_hash(k, klen);
}

static inline bool ent_key_eq(const struct kv_entry *e, const char *key, size_t klen)
{
    size_t elen, vlen;
    const char *k = ent_parse(e, &elen, &vlen);
    return elen == klen && (klen == 0 || memcmp(k, key, klen) == 0);
}

static inline bool ent_expired(const struct kv_entry *e, int64_t now_ms)
{
    return (e->flags & ENT_DEADLINE) && kv_entry_expire(e) <= now_ms;
}

/* ---------------------------------------------------------------------------------------- */
/* Counters: owner writes, anyone reads (relaxed, see the top of the file).                 */

static inline void ctr_set(size_t *c, size_t v)
{
    __atomic_store_n(c, v, __ATOMIC_RELAXED);
}

static void mem_sync(struct shard *s)
{
    ctr_set(&s->mem, s->own_mem + slab_pool_mem(&s->pool));
}

/* Count e in.  A slab entry's bytes are in the pool's already. */
static void acct_add(struct shard *s, const struct kv_entry *e)
{
    ctr_set(&s->count, s->count + 1);
    if (e->flags & ENT_HEAP)
        s->own_mem += kv_entry_mem(e);
    if (e->flags & ENT_DEADLINE)
        ctr_set(&s->expires, s->expires + 1);
}

static void acct_sub(struct shard *s, const struct kv_entry *e)
{
    ctr_set(&s->count, s->count - 1);
    if (e->flags & ENT_HEAP)
        s->own_mem -= kv_entry_mem(e);
    if (e->flags & ENT_DEADLINE)
        ctr_set(&s->expires, s->expires - 1);
}

size_t shard_count(const struct shard *s)
{
    return __atomic_load_n(&s->count, __ATOMIC_RELAXED);
}

size_t shard_expires(const struct shard *s)
{
    return __atomic_load_n(&s->expires, __ATOMIC_RELAXED);
}

size_t shard_mem(const struct shard *s)
{
    return __atomic_load_n(&s->mem, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------------------------------- */
/* References: what a slot holds (see "Entry memory" at the top)                            */

static inline struct kv_entry *ent_at(const struct shard *s, const struct table *t, uint32_t ref)
{
    if (ref & REF_HEAP)
        return (struct kv_entry *)t->heap[ref & ~REF_HEAP];
    return slab_ptr(&s->pool, ref);
}

/* (Re)start t's heap directory at its initial size; t has no heap entries. */
static void heap_init(struct shard *s, struct table *t)
{
    if (t->heap_cap != HEAP_INIT) {
        s->own_mem -= t->heap_cap * sizeof(*t->heap);
        rk_free(t->heap);
        t->heap = rk_malloc(HEAP_INIT * sizeof(*t->heap));
        t->heap_cap = HEAP_INIT;
        s->own_mem += HEAP_INIT * sizeof(*t->heap);
    }
    t->heap_top = 0;
    t->heap_free = HEAP_NONE;
    t->heap_live = 0;
}

/* A heap directory index of t now pointing at e. */
static uint32_t heap_add(struct shard *s, struct table *t, struct kv_entry *e)
{
    uint32_t i = t->heap_free;
    if (i != HEAP_NONE) {
        t->heap_free = (uint32_t)(t->heap[i] >> 1);
    } else {
        if (t->heap_top == t->heap_cap) {
            rk_assert(t->heap_cap < REF_HEAP / 2);
            t->heap = rk_realloc(t->heap, 2 * t->heap_cap * sizeof(*t->heap));
            s->own_mem += t->heap_cap * sizeof(*t->heap);
            t->heap_cap *= 2;
        }
        i = t->heap_top++;
    }
    t->heap[i] = (uintptr_t)e;
    t->heap_live++;
    return i;
}

static void heap_del(struct shard *s, struct table *t, uint32_t i)
{
    t->heap[i] = ((uintptr_t)t->heap_free << 1) | 1; /* entries are aligned: bit 0 is free */
    t->heap_free = i;
    if (--t->heap_live == 0)
        heap_init(s, t); /* the directory's peak size need not outlive its entries */
}

/* The reference for e in a slot of t; the shard owns e from now on. */
static uint32_t ent_adopt(struct shard *s, struct table *t, struct kv_entry *e)
{
    if (e->flags & ENT_HEAP)
        return REF_HEAP | heap_add(s, t, e);
    rk_assert(slab_pool_of(e) == &s->pool); /* else made by shard_entry_new for another shard */
    return slab_ref_of(e);
}

/* Free e, whose slot of t (reference ref) is gone, and its heap directory index if any. */
static void ent_release(struct shard *s, struct table *t, uint32_t ref, struct kv_entry *e)
{
    if (ref & REF_HEAP) {
        heap_del(s, t, ref & ~REF_HEAP);
        rk_free(e);
    } else {
        slab_free(e);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Tables                                                                                   */

static inline uint8_t tag_of(uint64_t hash)
{
    return (uint8_t)(TAG_LIVE | ((hash >> 32) & 0x7f));
}

/* Bytes a table of this many slots takes: page-rounded when it is mapped. */
static size_t tab_bytes(size_t slots)
{
    size_t n = slots * sizeof(uint32_t) + slots + TAG_PAD;
    return n < TAB_MAP_MIN ? n : (n + TAB_PAGE - 1) & ~(size_t)(TAB_PAGE - 1);
}

/* Zeroed memory for a table (see "Table memory" at the top). */
static void *tab_mem_get(size_t bytes)
{
    if (bytes < TAB_MAP_MIN)
        return rk_calloc(1, bytes);
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    rk_assert(p != MAP_FAILED && "out of memory for a shard table");
    return p;
}

static void tab_mem_put(void *p, size_t bytes)
{
    if (bytes < TAB_MAP_MIN)
        rk_free(p);
    else
        munmap(p, bytes);
}

static void tab_init(struct shard *s, struct table *t, size_t slots)
{
    rk_assert(slots >= TAB_INIT && (slots & (slots - 1)) == 0);
    char *p = tab_mem_get(tab_bytes(slots));
    t->slots = (uint32_t *)p;
    t->tags = (uint8_t *)(p + slots * sizeof(uint32_t));
    t->mask = slots - 1;
    t->live = 0;
    t->tombs = 0;
    t->heap = NULL; /* after a resize_start this was the old table's, which keeps it */
    t->heap_cap = 0;
    heap_init(s, t);
    s->own_mem += tab_bytes(slots);
    mem_sync(s);
}

/* Free t; its heap entries are gone already. */
static void tab_release(struct shard *s, struct table *t)
{
    rk_assert(t->heap_live == 0);
    s->own_mem -= tab_bytes(t->mask + 1) + t->heap_cap * sizeof(*t->heap);
    mem_sync(s);
    rk_free(t->heap);
    tab_mem_put(t->slots, tab_bytes(t->mask + 1));
    memset(t, 0, sizeof(*t));
}

static inline size_t tab_max_fill(const struct table *t)
{
    size_t n = t->mask + 1;
    return n - n / 8;
}

static inline void set_tag(struct table *t, size_t i, uint8_t g)
{
    t->tags[i] = g;
    if (i < TAG_PAD)
        t->tags[t->mask + 1 + i] = g;
}

/* Tags i .. i+7 (mod size) as one little-endian word: byte k is slot (i + k) & mask. */
static inline uint64_t tags_word(const struct table *t, size_t i)
{
    uint64_t w;
    memcpy(&w, t->tags + i, sizeof(w));
    return w;
}

/* High bit set in each zero byte of w.  The lowest set bit is exact; a bit above it may be
 * spurious (a borrow), so callers use only the lowest or recheck the byte. */
static inline uint64_t zero_bytes(uint64_t w)
{
    return (w - B_ONES) & ~w & B_HIGH;
}

/* The slot holding key in t (a table of s), or NOT_FOUND. */
static size_t tab_find(const struct shard *s, const struct table *t, uint64_t hash, const char *key,
                       size_t klen)
{
    uint8_t tag = tag_of(hash);
    uint64_t pat = B_ONES * tag;
    size_t i = hash & t->mask;

    for (size_t seen = 0; seen <= t->mask; seen += 8) {
        uint64_t w = tags_word(t, i);
        uint64_t empty = zero_bytes(w);
        uint64_t match = zero_bytes(w ^ pat);
        if (empty)
            match &= (empty & -empty) - 1; /* only bytes before the first empty slot */
        while (match) {
            size_t j = (i + ((size_t)__builtin_ctzll(match) >> 3)) & t->mask;
            if (t->tags[j] == tag && ent_key_eq(ent_at(s, t, t->slots[j]), key, klen))
                return j;
            match &= match - 1;
        }
        if (empty)
            return NOT_FOUND;
        i = (i + 8) & t->mask;
    }
    return NOT_FOUND;
}

void shard_prefetch(const struct shard *s, uint64_t hash)
{
    const struct table *t = &s->cur;
    size_t i = hash & t->mask;
    __builtin_prefetch(t->tags + i);
    __builtin_prefetch(t->slots + i);
}

void shard_prefetch_entry(const struct shard *s, uint64_t hash)
{
    const struct table *t = &s->cur;
    uint8_t tag = tag_of(hash);
    size_t i = hash & t->mask;
    uint64_t match = zero_bytes(tags_word(t, i) ^ (B_ONES * tag));
    if (!match)
        return;
    size_t j = (i + ((size_t)__builtin_ctzll(match) >> 3)) & t->mask;
    if (t->tags[j] == tag) /* the lowest match is exact; recheck anyway, as tab_find does */
        __builtin_prefetch(ent_at(s, t, t->slots[j]));
}

/* Put ref (an entry whose key is not in t) into the first free slot of its probe run. */
static void tab_insert(struct table *t, uint64_t hash, uint32_t ref)
{
    rk_assert(t->live + t->tombs < t->mask);
    size_t i = hash & t->mask;
    for (;;) {
        uint64_t fr = ~tags_word(t, i) & B_HIGH; /* exact: empty and tombstone lack 0x80 */
        if (fr) {
            i = (i + ((size_t)__builtin_ctzll(fr) >> 3)) & t->mask;
            break;
        }
        i = (i + 8) & t->mask;
    }
    if (t->tags[i] == TAG_TOMB)
        t->tombs--;
    set_tag(t, i, tag_of(hash));
    t->slots[i] = ref;
    t->live++;
}

/* Take the entry out of slot i (the caller frees or moves it). */
static void tab_remove(struct table *t, size_t i)
{
    t->live--;
    if (t->tags[(i + 1) & t->mask] != TAG_EMPTY) {
        set_tag(t, i, TAG_TOMB);
        t->tombs++;
        return;
    }
    /* No probe run crosses slot i into the empty slot after it: i and the tombstones right
     * behind it can become empty (see the top of the file). */
    set_tag(t, i, TAG_EMPTY);
    for (size_t n = 0; n < CLEAR_MAX; n++) {
        i = (i - 1) & t->mask;
        if (t->tags[i] != TAG_TOMB)
            break;
        set_tag(t, i, TAG_EMPTY);
        t->tombs--;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Resizing                                                                                 */

static inline bool resizing(const struct shard *s)
{
    return s->old.slots != NULL;
}

static void resize_start(struct shard *s, size_t slots)
{
    rk_assert(!resizing(s));
    s->old = s->cur;
    s->mig = 0;
    tab_init(s, &s->cur, slots);
}

/* Remove slot i of t and free its entry, after on_expire (when given) has seen it. */
static void drop_slot(struct shard *s, struct table *t, size_t i, shard_visit_fn *fn, void *arg)
{
    uint32_t ref = t->slots[i];
    struct kv_entry *e = ent_at(s, t, ref);
    tab_remove(t, i);
    if (fn)
        fn(arg, e);
    acct_sub(s, e);
    ent_release(s, t, ref, e);
    mem_sync(s);
}

/*
 * Move up to n old slots to cur.  With expire set, entries due by now_ms are removed (and
 * on_expire called) instead of moved.  Returns the number removed.  Frees the old table once
 * the last slot has moved.
 */
static size_t migrate(struct shard *s, size_t n, bool expire, int64_t now_ms,
                      shard_visit_fn *on_expire, void *arg)
{
    struct table *o = &s->old;
    size_t removed = 0;
    if (!resizing(s))
        return 0;
    size_t size = o->mask + 1;
    size_t end = n < size - s->mig ? s->mig + n : size;
    for (size_t i = s->mig; i < end; i++) {
        if (!(o->tags[i] & TAG_LIVE))
            continue;
        uint32_t ref = o->slots[i];
        struct kv_entry *e = ent_at(s, o, ref);
        if (expire && ent_expired(e, now_ms)) {
            drop_slot(s, o, i, on_expire, arg);
            removed++;
            continue;
        }
        /* A tombstone, not an empty slot: waiting entries' runs may pass through i. */
        set_tag(o, i, TAG_TOMB);
        o->live--;
        o->tombs++;
        if (ref & REF_HEAP) {
            /* The index is the old directory's: take one in the new table's. */
            heap_del(s, o, ref & ~REF_HEAP);
            ref = ent_adopt(s, &s->cur, e);
        }
        tab_insert(&s->cur, ent_hash(e), ref);
    }
    s->mig = end;
    if (s->mig == size) {
        rk_assert(o->live == 0);
        tab_release(s, o);
        s->mig = 0;
    }
    return removed;
}

int shard_rehash_step(struct shard *s, size_t budget)
{
    if (budget)
        migrate(s, budget, false, 0, NULL, NULL);
    return resizing(s);
}

static void maybe_shrink(struct shard *s)
{
    size_t n = s->cur.mask + 1;
    if (!resizing(s) && n > TAB_INIT && s->cur.live < n / 16)
        resize_start(s, n / 4 > TAB_INIT ? n / 4 : TAB_INIT);
}

/* ---------------------------------------------------------------------------------------- */
/* The keyed operations                                                                     */

struct shard *shard_new(void)
{
    struct shard *s = rk_calloc(1, sizeof(*s));
    slab_pool_init(&s->pool);
    tab_init(s, &s->cur, TAB_INIT);
    return s;
}

/* Free t's malloc'd entries (every one of them is in its heap directory).  Slab entries go
 * with their pool, all at once. */
static void tab_free_heap(struct shard *s, struct table *t)
{
    for (uint32_t i = 0; t->heap_live && i < t->heap_top; i++) {
        if (t->heap[i] & 1)
            continue;
        struct kv_entry *e = (struct kv_entry *)t->heap[i];
        s->own_mem -= kv_entry_mem(e);
        rk_free(e);
        t->heap_live--;
    }
    heap_init(s, t);
}

void shard_flush(struct shard *s)
{
    if (resizing(s)) {
        tab_free_heap(s, &s->old);
        tab_release(s, &s->old);
    }
    tab_free_heap(s, &s->cur);
    slab_pool_reset(&s->pool);
    s->mig = 0;
    if (s->cur.mask + 1 != TAB_INIT) {
        tab_release(s, &s->cur);
        tab_init(s, &s->cur, TAB_INIT);
    } else {
        memset(s->cur.tags, 0, TAB_INIT + TAG_PAD);
        s->cur.live = 0;
        s->cur.tombs = 0;
    }
    s->exp_cursor = 0;
    ctr_set(&s->count, 0);
    ctr_set(&s->expires, 0);
    /* Every byte counted in is counted out again. */
    rk_assert(s->own_mem == tab_bytes(TAB_INIT) + HEAP_INIT * sizeof(*s->cur.heap));
    mem_sync(s);
}

void shard_free(struct shard *s)
{
    if (!s)
        return;
    shard_flush(s);
    tab_release(s, &s->cur);
    rk_free(s);
}

struct kv_entry *shard_get(struct shard *s, uint64_t hash, const char *key, size_t klen)
{
    if (resizing(s))
        migrate(s, MIG_STEP, false, 0, NULL, NULL);
    size_t i = tab_find(s, &s->cur, hash, key, klen);
    if (i != NOT_FOUND)
        return ent_at(s, &s->cur, s->cur.slots[i]);
    if (resizing(s)) {
        i = tab_find(s, &s->old, hash, key, klen);
        if (i != NOT_FOUND)
            return ent_at(s, &s->old, s->old.slots[i]);
    }
    return NULL;
}

/* Put e, whose key was looked up: found at slot i of t (cur or old), or i == NOT_FOUND in
 * both tables. */
static void put_looked_up(struct shard *s, uint64_t hash, struct kv_entry *e, struct table *t,
                          size_t i)
{
    if (i != NOT_FOUND && t == &s->cur) {
        uint32_t oref = t->slots[i];
        struct kv_entry *old = ent_at(s, t, oref);
        acct_sub(s, old);
        ent_release(s, t, oref, old);
        t->slots[i] = ent_adopt(s, t, e);
        acct_add(s, e);
        mem_sync(s);
        return;
    }
    t = &s->cur;
    if (i != NOT_FOUND) {
        drop_slot(s, &s->old, i, NULL, NULL);
    } else if (!resizing(s) && t->live + t->tombs >= tab_max_fill(t)) {
        size_t n = t->mask + 1;
        resize_start(s, t->live >= tab_max_fill(t) / 2 ? 2 * n : n);
    }
    /* Adopted only now: a resize started just above changed which table is cur. */
    tab_insert(&s->cur, hash, ent_adopt(s, &s->cur, e));
    acct_add(s, e);
    mem_sync(s);
}

/* A write's lookup: first a step of any resize in progress, then key's slot in cur, else in
 * old; *t is the table it was found in (cur when it was not). */
static size_t look_up_for_write(struct shard *s, uint64_t hash, const char *key, size_t klen,
                                struct table **t)
{
    if (resizing(s))
        migrate(s, MIG_STEP, false, 0, NULL, NULL);
    *t = &s->cur;
    size_t i = tab_find(s, *t, hash, key, klen);
    if (i == NOT_FOUND && resizing(s)) {
        i = tab_find(s, &s->old, hash, key, klen);
        if (i != NOT_FOUND)
            *t = &s->old;
    }
    return i;
}

void shard_put(struct shard *s, uint64_t hash, struct kv_entry *e)
{
    size_t klen, vlen;
    const char *key = ent_parse(e, &klen, &vlen);
    struct table *t;
    size_t i = look_up_for_write(s, hash, key, klen, &t);
    put_looked_up(s, hash, e, t, i);
}

/* Overwrite e's value and deadline in place: same value length, same deadline presence. */
static void ent_overwrite(struct kv_entry *e, const char *val, size_t vlen, int64_t expire_ms)
{
    size_t klen, olen;
    uint8_t *p = (uint8_t *)varint_get(e->rest, &klen);
    p = (uint8_t *)varint_get(p, &olen);
    if (e->flags & ENT_DEADLINE) {
        memcpy(p, &expire_ms, sizeof(expire_ms));
        p += sizeof(expire_ms);
    }
    if (vlen)
        memmove(p + klen, val, vlen); /* val may be this very value */
}

struct kv_entry *shard_set(struct shard *s, uint64_t hash, const char *key, size_t klen,
                           const char *val, size_t vlen, int64_t expire_ms)
{
    /* The usual cache write replaces a value with one of the same length: it then keeps its
     * entry, and no memory is freed or taken (nor the accounting touched). */
    struct table *t;
    size_t i = look_up_for_write(s, hash, key, klen, &t);
    if (i != NOT_FOUND) {
        struct kv_entry *e = ent_at(s, t, t->slots[i]);
        size_t ol;
        kv_entry_val(e, &ol);
        if (ol == vlen && !(e->flags & ENT_DEADLINE) == (expire_ms == KV_NO_EXPIRE)) {
            ent_overwrite(e, val, vlen, expire_ms);
            return e;
        }
    }
    /* A new entry is filled before the old one is freed (val may point into it). */
    struct kv_entry *e = shard_entry_new(s, key, klen, val, vlen, expire_ms);
    put_looked_up(s, hash, e, t, i);
    return e;
}

int shard_del(struct shard *s, uint64_t hash, const char *key, size_t klen)
{
    if (resizing(s))
        migrate(s, MIG_STEP, false, 0, NULL, NULL);
    size_t i = tab_find(s, &s->cur, hash, key, klen);
    if (i != NOT_FOUND) {
        drop_slot(s, &s->cur, i, NULL, NULL);
        maybe_shrink(s);
        return 1;
    }
    if (resizing(s)) {
        i = tab_find(s, &s->old, hash, key, klen);
        if (i != NOT_FOUND) {
            drop_slot(s, &s->old, i, NULL, NULL);
            return 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Whole-shard walks                                                                        */

static void tab_foreach(const struct shard *s, const struct table *t, shard_visit_fn *fn, void *arg)
{
    for (size_t i = 0; t->slots && i <= t->mask; i++)
        if (t->tags[i] & TAG_LIVE)
            fn(arg, ent_at(s, t, t->slots[i]));
}

void shard_foreach(struct shard *s, shard_visit_fn *fn, void *arg)
{
    tab_foreach(s, &s->old, fn, arg);
    tab_foreach(s, &s->cur, fn, arg);
}

static inline uint64_t rev64(uint64_t v)
{
    v = ((v >> 1) & 0x5555555555555555ULL) | ((v & 0x5555555555555555ULL) << 1);
    v = ((v >> 2) & 0x3333333333333333ULL) | ((v & 0x3333333333333333ULL) << 2);
    v = ((v >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((v & 0x0F0F0F0F0F0F0F0FULL) << 4);
    return __builtin_bswap64(v);
}

struct kv_entry *shard_random(struct shard *s, uint64_t rnd)
{
    size_t total = s->cur.live + s->old.live;
    if (total == 0)
        return NULL;
    /* Pick a table in proportion to its live entries (an empty one is never picked), then a
     * slot, then the first live slot from there on. */
    const struct table *t = &s->cur;
    if (s->old.live && rnd % total < s->old.live)
        t = &s->old;
    size_t i = rev64(rnd) & t->mask; /* the top bits, to stay apart from rnd % total */
    for (size_t seen = 0; seen <= t->mask; seen += 8) {
        uint64_t live = tags_word(t, i) & B_HIGH;
        if (live)
            return ent_at(s, t, t->slots[(i + ((size_t)__builtin_ctzll(live) >> 3)) & t->mask]);
        i = (i + 8) & t->mask;
    }
    rk_assert(!"live count says a live slot exists");
    return NULL;
}

size_t shard_expire_step(struct shard *s, int64_t now_ms, size_t budget, shard_visit_fn *on_expire,
                         void *arg)
{
    size_t removed = 0;
    if (s->expires == 0 || budget == 0)
        return 0;
    /* During a resize, half the budget drains the old table, expiring as it goes: the old
     * slots that are not moved yet are the only ones the sweep of cur cannot see. */
    if (resizing(s)) {
        size_t ob = (budget + 1) / 2;
        removed += migrate(s, ob, true, now_ms, on_expire, arg);
        budget -= ob;
    }
    struct table *t = &s->cur;
    for (size_t k = 0; k < budget && s->expires; k++) {
        size_t i = s->exp_cursor & t->mask;
        s->exp_cursor = i + 1;
        if ((t->tags[i] & TAG_LIVE) && ent_expired(ent_at(s, t, t->slots[i]), now_ms)) {
            drop_slot(s, t, i, on_expire, arg);
            removed++;
        }
    }
    if (removed)
        maybe_shrink(s);
    return removed;
}

/*
 * SCAN: HOW IT WORKS
 *
 * The cursor names a HOME bucket (hash & mask), not a slot.  "Visiting home bucket b" of a
 * table means calling fn on every entry of that table whose home is b.  With linear probing
 * those entries all sit in the run that starts at slot b and ends at the first empty slot
 * (an entry's run from its home never contains an empty slot: deletes and moves leave
 * tombstones, and an empty slot is only made where no run can cross it), so we walk that
 * run and keep the entries whose recomputed hash has home b.  Seen this way the table is a
 * chained hash table whose chains are the home buckets, and entries moving around inside a
 * run (a delete, a reinsert into a tombstone) do not change their bucket.
 *
 * Buckets are visited in reverse-binary order: the cursor's bits under the mask are
 * incremented from the top bit down.  With a table of 2^k buckets, the buckets already
 * visited are exactly those whose low k bits, read reversed, are below the cursor's.  If
 * the table grows to 2^(k+1), bucket b splits into b and b + 2^k, and both of those have
 * low k bits equal to b's, so both were covered if b was: continuing from the same cursor
 * neither skips nor repeats.  If it shrinks to 2^(k-1), buckets b and b + 2^(k-1) merge;
 * cutting the cursor to k-1 bits may visit a merged bucket again (an entry may be returned
 * twice) but skips nothing.
 *
 * While a resize is in progress an entry may be in either table, and moves from the old
 * table to the new between calls.  So each step visits, for the cursor, the bucket of the
 * smaller table (cursor & small mask) and the buckets of the larger table that expand it
 * (those whose low bits equal it), then advances the cursor using the small mask.  Whichever
 * table an entry is in at that moment, its bucket is among those visited.  The expansions
 * are walked in reverse-binary order from the cursor's own high bits, not from zero and not
 * by a plain increment of those bits: when a shrink begins between two calls the cursor
 * still carries the large table's bits, and the expansions ahead of it in reverse-binary
 * order (and only those) are the ones not visited yet; a plain increment would skip some.
 * For a same-size rebuild both masks are equal and it is the same bucket in both tables.
 *
 * The walk of a run recomputes each key's hash; SCAN is not a hot path, and not storing
 * hashes is worth many bytes per key.  Work per call is bounded by count * 10 buckets.
 * fn must not modify the shard (nor call shard_get, which may move slots).
 */
static size_t visit_home(const struct shard *s, const struct table *t, size_t b, shard_visit_fn *fn,
                         void *arg)
{
    size_t n = 0;
    size_t i = b;
    for (size_t seen = 0; seen <= t->mask; seen++, i = (i + 1) & t->mask) {
        uint8_t g = t->tags[i];
        if (g == TAG_EMPTY)
            break;
        if (!(g & TAG_LIVE))
            continue;
        const struct kv_entry *e = ent_at(s, t, t->slots[i]);
        if ((ent_hash(e) & t->mask) == b) {
            fn(arg, e);
            n++;
        }
    }
    return n;
}

/* The cursor after v: a reverse-binary increment of the bits under mask (higher bits are
 * cleared). */
static inline uint64_t scan_next(uint64_t v, uint64_t mask)
{
    v |= ~mask;
    return rev64(rev64(v) + 1);
}

uint64_t shard_scan(struct shard *s, uint64_t cursor, size_t count, shard_visit_fn *fn, void *arg)
{
    uint64_t v = cursor;
    size_t visited = 0;
    size_t max_buckets = count == 0 ? 1 : count > SIZE_MAX / 10 ? SIZE_MAX : count * 10;

    for (size_t b = 0; b < max_buckets; b++) {
        if (!resizing(s)) {
            uint64_t m0 = s->cur.mask;
            visited += visit_home(s, &s->cur, v & m0, fn, arg);
            v = scan_next(v, m0);
        } else {
            const struct table *small = &s->cur, *large = &s->old;
            if (s->old.mask < s->cur.mask) {
                small = &s->old;
                large = &s->cur;
            }
            uint64_t m0 = small->mask, m1 = large->mask;
            visited += visit_home(s, small, v & m0, fn, arg);
            /* The large table's buckets that expand v & m0, from the cursor's own high bits
             * on, in reverse-binary order: those below were visited by earlier calls made
             * while the large table was the only one.  When the high bits wrap to zero the
             * carry has advanced the small-table part, which is the next cursor. */
            do {
                visited += visit_home(s, large, v & m1, fn, arg);
                v = scan_next(v, m1);
            } while (v & (m0 ^ m1));
        }
        if (v == 0 || visited >= count)
            break;
    }
    return v;
}

/*
 * THE SNAPSHOT WALK (shard_walk_*)
 *
 * A full sync walks every shard once, between requests, and SCAN's reverse-binary order is
 * slow for that: each step jumps to a distant bucket, so every bucket costs a cache miss on
 * its tag, one on its slot and one per entry of its run, and a run's entries are read again
 * for every home bucket inside it.  Measured on a 2-vCPU VM, 1,000,000 keys took about 1 s of
 * CPU that way, nearly all of it stalled on memory.  The walk instead takes home buckets in
 * plain increasing order, a range at a time, and reads the slots of the range front to back:
 * tags and slots stream in, each entry is read about once, and the entries a few slots ahead
 * are prefetched.
 *
 * The order is only safe because the walk keeps one mask, m, for its whole life: the larger
 * table's mask when it began.  Its position p means "every entry whose hash & m is below p has
 * been visited".  A step visits the entries with hash & m in [p, p + n) in every table that
 * exists at that moment (the current one and, during a resize, the old one); entries move from
 * the old table to the new one only between steps (the visit function changes nothing), and
 * inside a table an entry moves only within the run of its home bucket, so an entry present
 * for the whole walk is in one of the tables, at a place the step reads, when its range comes
 * up.  Tables may grow or shrink any number of times meanwhile:
 *   - a table with mask M >= m holds those entries in the home buckets hi + [p, p + n) for
 *     every multiple hi of m + 1 below M + 1;
 *   - a table with M < m holds them in the buckets (h & M) for h in [p, p + n), one cyclic
 *     range, where other entries sit too: they are filtered out by hash & m, so a table that
 *     shrank below m is read more than once over the walk, but nothing is visited twice.
 * Reading the home buckets [A, B) of a table: scan from slot A until the slot before B has
 * been read and an empty slot is reached.  An entry sits in the run that starts at its home
 * bucket, with no empty slot between its home and itself, so none is missed; the entries of
 * other homes met on the way (the end of a run that began before A, or one that runs past B)
 * are filtered out by their hash.
 */
#define WALK_PREFETCH 8 /* slots ahead whose entries are prefetched */

static size_t walk_homes(const struct shard *s, const struct table *t, size_t A, size_t B,
                         uint64_t fmask, uint64_t lo, uint64_t hi, shard_visit_fn *fn, void *arg)
{
    size_t M = t->mask, n = 0;
    size_t i = A;
    for (size_t seen = 0; seen <= M; seen++, i = (i + 1) & M) {
        size_t j = (i + WALK_PREFETCH) & M;
        if (t->tags[j] & TAG_LIVE)
            __builtin_prefetch(ent_at(s, t, t->slots[j]));
        uint8_t g = t->tags[i];
        if (g == TAG_EMPTY) {
            if (seen >= B - A)
                break;
            continue;
        }
        if (!(g & TAG_LIVE))
            continue;
        const struct kv_entry *e = ent_at(s, t, t->slots[i]);
        uint64_t h = ent_hash(e);
        /* Its home in [A, B) (a scan that wrapped past the end reads the start of the table,
         * whose homes another call covers), and its hash in the walk's range. */
        if ((h & M) - A < B - A && (h & fmask) - lo < hi - lo) {
            fn(arg, e);
            n++;
        }
    }
    return n;
}

/* Visit the entries of t whose hash & m is in [a, b) (b <= m + 1). */
static size_t walk_table(const struct shard *s, const struct table *t, uint64_t m, uint64_t a,
                         uint64_t b, shard_visit_fn *fn, void *arg)
{
    if (!t->slots)
        return 0;
    uint64_t M = t->mask;
    size_t n = 0;
    if (M >= m) {
        for (uint64_t base = 0; base <= M; base += m + 1)
            n += walk_homes(s, t, base + a, base + b, M, base + a, base + b, fn, arg);
        return n;
    }
    if (b - a > M) /* the range covers every bucket of t */
        return walk_homes(s, t, 0, M + 1, m, a, b, fn, arg);
    uint64_t A = a & M, B = A + (b - a);
    if (B <= M + 1)
        return walk_homes(s, t, A, B, m, a, b, fn, arg);
    n = walk_homes(s, t, A, M + 1, m, a, b, fn, arg);
    return n + walk_homes(s, t, 0, B - (M + 1), m, a, b, fn, arg);
}

void shard_walk_begin(const struct shard *s, struct shard_walk *wk)
{
    wk->next = 0;
    wk->mask = s->cur.mask;
    if (resizing(s) && s->old.mask > wk->mask)
        wk->mask = s->old.mask;
}

bool shard_walk_step(struct shard *s, struct shard_walk *wk, size_t nbuckets, shard_visit_fn *fn,
                     void *arg)
{
    uint64_t m = wk->mask, a = wk->next;
    if (a > m)
        return true;
    uint64_t b = nbuckets > m + 1 - a ? m + 1 : a + (nbuckets ? nbuckets : 1);
    walk_table(s, &s->cur, m, a, b, fn, arg);
    if (resizing(s))
        walk_table(s, &s->old, m, a, b, fn, arg);
    wk->next = b;
    return b > m;
}

/*
 * shard: one single-owner hash table of the keyspace.
 *
 * Exactly one thread (the worker that owns the shard) calls any function here, except
 * shard_count(), shard_expires() and shard_mem(), which other threads may call at any time
 * for statistics (relaxed atomic loads of counters the owner writes with relaxed stores).
 *
 * Keys hash with XXH3-64 (kv_hash).  The caller computes the hash once: its top bits pick the
 * shard (see kv_shard_of), its low bits the bucket here.  Every call that takes a key takes
 * its hash too and must be given the same hash for the same key.
 *
 * The table is open addressing with a one-byte tag per slot (7 hash bits plus "occupied"),
 * probed linearly, and resized incrementally: when it grows, a second table is allocated
 * and each later operation moves a bounded number of slots across, so no single operation
 * ever pays for a whole-table rehash.
 *
 * Entries: a key, a value and an optional absolute expiry deadline (ms since the epoch)
 * packed into one allocation.  The shard owns the entries stored in it; a pointer returned
 * by a lookup stays valid until the next call that modifies this shard.  The owner makes its
 * entries with shard_entry_new, which puts small ones in the shard's own slab memory (no
 * allocator header, 4-byte rounding, found from the table by a 4-byte reference alone): that
 * is what keeps a small key-value pair cheap.  kv_entry_new's entries are malloc blocks; they
 * work anywhere but cost about 20 bytes more each.
 *
 * Expiry is not applied here: shard_get returns an entry whatever its deadline.  Lazy expiry
 * is the commands' job (core/keyspace.h); active expiry is shard_expire_step.
 */
#ifndef RK_SHARD_H
#define RK_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv_entry; /* opaque: use the accessors */
struct shard;    /* opaque */

#define KV_NO_EXPIRE (-1)

uint64_t kv_hash(const char *key, size_t klen);
/* The shard index of a hash when there are (1 << shard_bits) shards: the top bits. */
static inline uint32_t kv_shard_of(uint64_t hash, unsigned shard_bits)
{
    return shard_bits ? (uint32_t)(hash >> (64 - shard_bits)) : 0;
}

/* A new entry holding copies of key and val.  expire_ms is an absolute deadline in ms, or
 * KV_NO_EXPIRE.  It is a malloc block; see shard_entry_new for the cheaper kind. */
struct kv_entry *kv_entry_new(const char *key, size_t klen, const char *val, size_t vlen,
                              int64_t expire_ms);
/* Free an entry that no shard holds (one never put, or made but not used).  Entries of
 * either kind; one from shard_entry_new(s, ...) only on s's owner thread. */
void kv_entry_free(struct kv_entry *e);
const char *kv_entry_key(const struct kv_entry *e, size_t *klen);
const char *kv_entry_val(const struct kv_entry *e, size_t *vlen);
int64_t kv_entry_expire(const struct kv_entry *e); /* KV_NO_EXPIRE when none */
/* Bytes this entry takes in memory, allocator overhead included: its slab chunk, or its
 * malloc chunk with glibc's chunk header. */
size_t kv_entry_mem(const struct kv_entry *e);

struct shard *shard_new(void);
void shard_free(struct shard *s); /* frees every entry */

/* As kv_entry_new, but allocated from s's own memory: an entry of up to 512 bytes (header,
 * key and value) is a slab chunk of s, a larger one a malloc block.  It must be given to
 * shard_put(s, ...) with this same s, or to kv_entry_free, before the next shard_flush or
 * shard_free of s; only s's owner thread may call this. */
struct kv_entry *shard_entry_new(struct shard *s, const char *key, size_t klen, const char *val,
                                 size_t vlen, int64_t expire_ms);

/* The entry for key, or NULL.  Ignores expiry. */
struct kv_entry *shard_get(struct shard *s, uint64_t hash, const char *key, size_t klen);
/* Hints for a batch of lookups (a replica applying its log): shard_prefetch starts loading
 * the tag group and slots where hash's probe begins; shard_prefetch_entry, called once those
 * have had time to arrive, also the entry that the first matching tag names.  Issuing both
 * for the next few keys before looking any of them up overlaps their cache misses.  Neither
 * changes anything or faults; both look at the current table only. */
void shard_prefetch(const struct shard *s, uint64_t hash);
void shard_prefetch_entry(const struct shard *s, uint64_t hash);
/* Insert e, or replace the entry with the same key (the old one is freed).  Takes ownership
 * of e, which comes from kv_entry_new or from shard_entry_new(s, ...).  hash is the hash of
 * e's key. */
void shard_put(struct shard *s, uint64_t hash, struct kv_entry *e);
/* Set key to val (with deadline expire_ms, or KV_NO_EXPIRE) and return its entry: the
 * existing entry overwritten in place when its value has the same length and it has a
 * deadline exactly when the new one does, else a new entry from the shard's slabs that
 * replaces it (shard_entry_new + shard_put).  val may point into the existing entry. */
struct kv_entry *shard_set(struct shard *s, uint64_t hash, const char *key, size_t klen,
                           const char *val, size_t vlen, int64_t expire_ms);
/* Remove and free the entry for key.  Returns 1 if there was one, 0 if not. */
int shard_del(struct shard *s, uint64_t hash, const char *key, size_t klen);
/* Remove and free every entry; the table shrinks back to its initial size and the slab
 * memory goes back to the kernel. */
void shard_flush(struct shard *s);

size_t shard_count(const struct shard *s);   /* live entries (expired but not yet removed too) */
size_t shard_expires(const struct shard *s); /* entries with a deadline */
/* Bytes the shard holds: the resident pages of its slab memory (free chunks and emptied
 * slabs kept for reuse included), its malloc'd entries, its tables and directories. */
size_t shard_mem(const struct shard *s);

typedef void shard_visit_fn(void *arg, const struct kv_entry *e);

/*
 * Incremental scan, with SCAN's guarantee: a full iteration (cursor 0 back to 0) visits every
 * entry that was present for the whole iteration at least once, even if the table grew or
 * shrank in between; entries may be visited more than once.  Visits at least one home bucket
 * and, when count > 0, keeps going until about count entries were visited.  Returns the next
 * cursor; 0 when the iteration is complete.  Cursors are below 2^48.
 */
uint64_t shard_scan(struct shard *s, uint64_t cursor, size_t count, shard_visit_fn *fn, void *arg);
/*
 * A snapshot walk (a full sync's): like a full SCAN iteration, every entry present for the
 * whole walk is visited, whatever resizes happen in between, but in table order, each entry
 * about once, and several times faster (core/shard.c says why).  Between begin and the step
 * that returns true, each step visits about nbuckets home buckets' entries (at least one
 * bucket); the shard may be changed between steps, not by fn.
 */
struct shard_walk {
    uint64_t next; /* entries whose hash & mask is below next were visited */
    uint64_t mask; /* fixed for the walk: the larger table's mask when it began */
};
void shard_walk_begin(const struct shard *s, struct shard_walk *wk);
bool shard_walk_step(struct shard *s, struct shard_walk *wk, size_t nbuckets, shard_visit_fn *fn,
                     void *arg);
/* Visit every entry (whole table; for DEBUG DIGEST and KEYS).  fn must not modify the shard,
 * nor call shard_get (which may move slots of a resize in progress); the same holds for
 * shard_scan's fn. */
void shard_foreach(struct shard *s, shard_visit_fn *fn, void *arg);
/* A random entry, or NULL when the shard is empty.  rnd is a random 64-bit number. */
struct kv_entry *shard_random(struct shard *s, uint64_t rnd);

/*
 * Active expiry: look at up to budget slots from an internal cursor, and remove and free the
 * entries whose deadline is <= now_ms, calling on_expire (may be NULL) for each just before
 * it is freed.  Returns the number removed.  Bounded work: O(budget).
 */
size_t shard_expire_step(struct shard *s, int64_t now_ms, size_t budget, shard_visit_fn *on_expire,
                         void *arg);
/* Move up to budget slots of an incremental resize in progress; returns 1 if a resize is
 * still in progress afterwards, 0 if not.  The worker calls it when idle. */
int shard_rehash_step(struct shard *s, size_t budget);

#endif

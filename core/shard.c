/*
 * shard: one single-owner hash table of the keyspace.
 *
 * Layout.  A table of 2^k slots is two parallel arrays in one allocation: an array of entry
 * pointers and an array of one-byte tags.  A tag is 0 (empty), 1 (tombstone: something was
 * here, keep probing) or 0x80 | seven bits of the key's hash (live).  The bucket is the
 * hash's LOW bits; the tag takes bits 32..38, so it is independent of the bucket for any
 * table below 2^32 slots and of the shard choice, which uses the TOP bits.  Probing is
 * linear and scans the tags eight at a time with word-wide byte tricks (SWAR): a miss
 * usually reads one or two tag words and no entry at all, a hit reads the entries whose tag
 * matches, about 1 in 128 of the others.  The tag array has 8 extra bytes at its end that
 * mirror its first 8, so an 8-byte load at any slot index never needs a wrap-around branch.
 *
 * Why this layout: the project's memory target counts every byte.  A slot costs 9 bytes
 * (pointer plus tag); the full hash is not stored anywhere (the rare paths that need it,
 * resizing and SCAN, recompute it from the key), and an entry is a single malloc block:
 *
 *     flags(1) | varint klen | varint vlen | [deadline, 8 bytes, only if flags say so] |
 *     key bytes | value bytes
 *
 * so a 16-byte key with a 32-byte value is a 51-byte block (a 64-byte malloc chunk).
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
 * Counters.  count, expires and mem are written only by the owner, with relaxed atomic
 * stores, so that a stats reader on another thread never sees a torn value; they order
 * nothing else, so relaxed is enough.  The owner reads its own counters plainly.
 */
#include "core/shard.h"

#include <malloc.h>
#include <stdbool.h>
#include <string.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

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

#define B_ONES 0x0101010101010101ULL
#define B_HIGH 0x8080808080808080ULL

#define ENT_DEADLINE 0x01 /* entry flag: an 8-byte deadline follows the lengths */

struct kv_entry {
    uint8_t flags;
    uint8_t rest[]; /* varint klen, varint vlen, [deadline], key, value */
};

struct table {
    struct kv_entry **slots; /* mask + 1 pointers; meaningful only where the tag is live */
    uint8_t *tags;           /* mask + 1 + TAG_PAD bytes, in the same allocation as slots */
    size_t mask;             /* slots - 1 */
    size_t live;
    size_t tombs;
};

struct shard {
    struct table cur;  /* where puts go; the new table during a resize */
    struct table old;  /* being drained during a resize; old.slots == NULL otherwise */
    size_t mig;        /* next old slot to move */
    size_t exp_cursor; /* the active expiry sweep's next slot in cur */
    size_t count;      /* live entries (relaxed atomic, see above) */
    size_t expires;    /* entries with a deadline (relaxed atomic) */
    size_t mem;        /* bytes of entries and tables (relaxed atomic) */
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

struct kv_entry *kv_entry_new(const char *key, size_t klen, const char *val, size_t vlen,
                              int64_t expire_ms)
{
    bool dl = expire_ms != KV_NO_EXPIRE;
    rk_assert(klen <= SIZE_MAX / 4 && vlen <= SIZE_MAX / 4);
    size_t hdr = 1 + varint_len(klen) + varint_len(vlen) + (dl ? sizeof(int64_t) : 0);
    struct kv_entry *e = rk_malloc(hdr + klen + vlen);
    uint8_t *p = e->rest;

    e->flags = dl ? ENT_DEADLINE : 0;
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

void kv_entry_free(struct kv_entry *e)
{
    rk_free(e);
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

/* glibc keeps one size_t of header per chunk on top of the usable size. */
size_t kv_entry_mem(const struct kv_entry *e)
{
    return malloc_usable_size((void *)e) + sizeof(size_t);
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

static void acct_add(struct shard *s, const struct kv_entry *e)
{
    ctr_set(&s->count, s->count + 1);
    ctr_set(&s->mem, s->mem + kv_entry_mem(e));
    if (e->flags & ENT_DEADLINE)
        ctr_set(&s->expires, s->expires + 1);
}

static void acct_sub(struct shard *s, const struct kv_entry *e)
{
    ctr_set(&s->count, s->count - 1);
    ctr_set(&s->mem, s->mem - kv_entry_mem(e));
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
/* Tables                                                                                   */

static inline uint8_t tag_of(uint64_t hash)
{
    return (uint8_t)(TAG_LIVE | ((hash >> 32) & 0x7f));
}

static size_t tab_bytes(size_t slots)
{
    return slots * sizeof(struct kv_entry *) + slots + TAG_PAD;
}

static void tab_init(struct shard *s, struct table *t, size_t slots)
{
    rk_assert(slots >= TAB_INIT && (slots & (slots - 1)) == 0);
    char *p = rk_calloc(1, tab_bytes(slots));
    t->slots = (struct kv_entry **)p;
    t->tags = (uint8_t *)(p + slots * sizeof(struct kv_entry *));
    t->mask = slots - 1;
    t->live = 0;
    t->tombs = 0;
    ctr_set(&s->mem, s->mem + tab_bytes(slots));
}

static void tab_release(struct shard *s, struct table *t)
{
    ctr_set(&s->mem, s->mem - tab_bytes(t->mask + 1));
    rk_free(t->slots);
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

/* The slot holding key in t, or NOT_FOUND. */
static size_t tab_find(const struct table *t, uint64_t hash, const char *key, size_t klen)
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
            if (t->tags[j] == tag && ent_key_eq(t->slots[j], key, klen))
                return j;
            match &= match - 1;
        }
        if (empty)
            return NOT_FOUND;
        i = (i + 8) & t->mask;
    }
    return NOT_FOUND;
}

/* Put e (whose key is not in t) into the first free slot of its probe run. */
static void tab_insert(struct table *t, uint64_t hash, struct kv_entry *e)
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
    t->slots[i] = e;
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
    struct kv_entry *e = t->slots[i];
    tab_remove(t, i);
    if (fn)
        fn(arg, e);
    acct_sub(s, e);
    kv_entry_free(e);
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
        struct kv_entry *e = o->slots[i];
        if (expire && ent_expired(e, now_ms)) {
            drop_slot(s, o, i, on_expire, arg);
            removed++;
            continue;
        }
        /* A tombstone, not an empty slot: waiting entries' runs may pass through i. */
        set_tag(o, i, TAG_TOMB);
        o->live--;
        o->tombs++;
        tab_insert(&s->cur, ent_hash(e), e);
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
    tab_init(s, &s->cur, TAB_INIT);
    return s;
}

static void tab_free_entries(struct table *t)
{
    for (size_t i = 0; t->slots && i <= t->mask; i++)
        if (t->tags[i] & TAG_LIVE)
            kv_entry_free(t->slots[i]);
}

void shard_flush(struct shard *s)
{
    tab_free_entries(&s->old);
    tab_free_entries(&s->cur);
    if (resizing(s))
        tab_release(s, &s->old);
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
    ctr_set(&s->mem, tab_bytes(TAB_INIT));
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
    size_t i = tab_find(&s->cur, hash, key, klen);
    if (i != NOT_FOUND)
        return s->cur.slots[i];
    if (resizing(s)) {
        i = tab_find(&s->old, hash, key, klen);
        if (i != NOT_FOUND)
            return s->old.slots[i];
    }
    return NULL;
}

void shard_put(struct shard *s, uint64_t hash, struct kv_entry *e)
{
    size_t klen, vlen;
    const char *key = ent_parse(e, &klen, &vlen);

    if (resizing(s))
        migrate(s, MIG_STEP, false, 0, NULL, NULL);
    struct table *t = &s->cur;
    size_t i = tab_find(t, hash, key, klen);
    if (i != NOT_FOUND) {
        acct_sub(s, t->slots[i]);
        kv_entry_free(t->slots[i]);
        t->slots[i] = e;
        acct_add(s, e);
        return;
    }
    if (resizing(s)) {
        i = tab_find(&s->old, hash, key, klen);
        if (i != NOT_FOUND)
            drop_slot(s, &s->old, i, NULL, NULL);
    } else if (t->live + t->tombs >= tab_max_fill(t)) {
        size_t n = t->mask + 1;
        resize_start(s, t->live >= tab_max_fill(t) / 2 ? 2 * n : n);
    }
    tab_insert(&s->cur, hash, e);
    acct_add(s, e);
}

int shard_del(struct shard *s, uint64_t hash, const char *key, size_t klen)
{
    if (resizing(s))
        migrate(s, MIG_STEP, false, 0, NULL, NULL);
    size_t i = tab_find(&s->cur, hash, key, klen);
    if (i != NOT_FOUND) {
        drop_slot(s, &s->cur, i, NULL, NULL);
        maybe_shrink(s);
        return 1;
    }
    if (resizing(s)) {
        i = tab_find(&s->old, hash, key, klen);
        if (i != NOT_FOUND) {
            drop_slot(s, &s->old, i, NULL, NULL);
            return 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Whole-shard walks                                                                        */

static void tab_foreach(const struct table *t, shard_visit_fn *fn, void *arg)
{
    for (size_t i = 0; t->slots && i <= t->mask; i++)
        if (t->tags[i] & TAG_LIVE)
            fn(arg, t->slots[i]);
}

void shard_foreach(struct shard *s, shard_visit_fn *fn, void *arg)
{
    tab_foreach(&s->old, fn, arg);
    tab_foreach(&s->cur, fn, arg);
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
            return t->slots[(i + ((size_t)__builtin_ctzll(live) >> 3)) & t->mask];
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
        if ((t->tags[i] & TAG_LIVE) && ent_expired(t->slots[i], now_ms)) {
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
static size_t visit_home(const struct table *t, size_t b, shard_visit_fn *fn, void *arg)
{
    size_t n = 0;
    size_t i = b;
    for (size_t seen = 0; seen <= t->mask; seen++, i = (i + 1) & t->mask) {
        uint8_t g = t->tags[i];
        if (g == TAG_EMPTY)
            break;
        if ((g & TAG_LIVE) && (ent_hash(t->slots[i]) & t->mask) == b) {
            fn(arg, t->slots[i]);
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
            visited += visit_home(&s->cur, v & m0, fn, arg);
            v = scan_next(v, m0);
        } else {
            const struct table *small = &s->cur, *large = &s->old;
            if (s->old.mask < s->cur.mask) {
                small = &s->old;
                large = &s->cur;
            }
            uint64_t m0 = small->mask, m1 = large->mask;
            visited += visit_home(small, v & m0, fn, arg);
            /* The large table's buckets that expand v & m0, from the cursor's own high bits
             * on, in reverse-binary order: those below were visited by earlier calls made
             * while the large table was the only one.  When the high bits wrap to zero the
             * carry has advanced the small-table part, which is the next cursor. */
            do {
                visited += visit_home(large, v & m1, fn, arg);
                v = scan_next(v, m1);
            } while (v & (m0 ^ m1));
        }
        if (v == 0 || visited >= count)
            break;
    }
    return v;
}
